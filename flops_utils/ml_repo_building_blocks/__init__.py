"""FLOps import path for the building blocks user code calls."""

from flops.data.node_data import load_dataset

__all__ = ["load_dataset"]
