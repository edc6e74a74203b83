"""Model zoo: one registry, one interface for every architecture.

Every model answers the same questions (timm style), so consolidation never
special-cases an architecture:

- ``forward_features(x)``: the feature map;
- ``forward_head(f, pre_logits=True)``: the pooled latent vector ``[B, latent_dim]``;
- ``forward_head(f)`` / ``forward(x)``: the logits ``[B, num_classes]``;
- ``latent_and_logits(x)``: both at once (what distillation needs).

The classifier is always ``model.head`` (an ``nn.Linear``).
"""

# Importing the modules fills the registry.
from edge_agent.models import cnn as _cnn  # noqa: F401,E402
from edge_agent.models import dscnn as _dscnn  # noqa: F401,E402
from edge_agent.models import resnet as _resnet  # noqa: F401,E402
from edge_agent.models.registry import (
    EdgeModel,
    UnknownArchitectureError,
    create_model,
    default_input_spec,
    list_models,
    register_model,
    remap_head,
)

__all__ = [
    "EdgeModel",
    "UnknownArchitectureError",
    "create_model",
    "default_input_spec",
    "list_models",
    "register_model",
    "remap_head",
]
