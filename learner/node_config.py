"""The keys of the node config `flops-learner` gives its SuperNode, which the ClientApp reads.

A module of its own so that `flops-learner`, which only starts and watches Flower, does not
import Flower, NumPy or the ClientApp to name them.
"""

NODE_NAME_KEY = "node-name"
DATA_DIR_KEY = "data-dir"
DATA_TAGS_KEY = "data-tags"
