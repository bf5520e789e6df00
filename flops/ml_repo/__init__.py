"""The ML-repository contract: what user code provides and what FLOps gives it."""

from flops.ml_repo.templates import DataManagerTemplate, ModelManagerTemplate

__all__ = ["DataManagerTemplate", "ModelManagerTemplate"]
