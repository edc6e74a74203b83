"""The one error type the registry and its stores raise for a request they refuse."""

from __future__ import annotations


class RegistryError(ValueError):
    """A request the registry refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status
