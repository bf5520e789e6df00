"""FLOps image builder: turns an ML repository at a commit into what the platform runs.

The local target builds no container images: it snapshots the repository and builds (or
reuses) two cached Python environments, one for learners (no MLflow) and one for the
aggregator (with the platform's MLflow), and reports where they are as a BuildResult.
"""
