"""FLOps observatory: the MLflow tracking server (port 7027) every project reports to."""
