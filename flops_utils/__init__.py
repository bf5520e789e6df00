"""FLOps's import paths for user code, so repositories written for FLOps run unmodified."""
