"""Built-in node types."""

from .imports import install as _defer_diffusers_model_packages

_defer_diffusers_model_packages()  # import only the diffusers models a workflow uses (see imports)
