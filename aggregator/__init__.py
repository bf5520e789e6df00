"""FLOps aggregator: Flower SuperLink + ServerApp, strategies, MLflow tracking, checkpoints."""
