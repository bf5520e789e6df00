"""Environment variables through which `flops-aggregator` configures its ServerApp.

A module of its own so that the launcher can name them without importing Flower.
"""

STATE_DIR_ENV = "FLOPS_AGGREGATOR_STATE_DIR"
TRACKING_URI_ENV = "FLOPS_TRACKING_URI"
