"""Node-local data: loading a node's data for user code, and partitioning data sets."""
