"""FLOps import path for the ML-repository templates."""

from flops.ml_repo.templates import DataManagerTemplate, ModelManagerTemplate

__all__ = ["DataManagerTemplate", "ModelManagerTemplate"]
