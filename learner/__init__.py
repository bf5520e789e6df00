"""FLOps learner: a Flower SuperNode and the ClientApp around the user's ModelManager.

Nothing here imports MLflow: only parameters and aggregate metrics leave a node. User code
that does (`import mlflow; mlflow.autolog()`) gets an inert stand-in that logs nothing.
"""
