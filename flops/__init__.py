"""FLOps: federated learning from a git repository and one SLA.

This package holds what every component and the user share: the ML-repository API for user
code, configuration and result models, data tools and the `flops` CLI. It never imports
MLflow, so learners can depend on it.
"""

__version__ = "0.1.0"
