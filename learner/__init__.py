"""FLOps learner: a Flower SuperNode and the ClientApp around the user's ModelManager.

Nothing here imports MLflow: only parameters and aggregate metrics leave a node.
"""
