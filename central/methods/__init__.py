"""Consolidation methods: each is one small unit on top of a shared loop.

A method turns (previous central, incoming device model, OOD source) into the
next central model. Adding a baseline is adding one module and one line here.
"""

from central.methods import average as _average  # noqa: F401,E402
from central.methods import distill as _distill  # noqa: F401,E402
from central.methods import naive as _naive  # noqa: F401,E402
from central.methods.base import (  # noqa: E402
    Consolidated,
    ConsolidationConfig,
    Method,
    Teacher,
    get_method,
    list_methods,
    register_method,
)

__all__ = [
    "Consolidated", "ConsolidationConfig", "Method", "Teacher", "get_method", "list_methods", "register_method",
]
