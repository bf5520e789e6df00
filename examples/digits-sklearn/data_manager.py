"""Loads this node's digits and splits them into train and test sets."""

import numpy as np

from flops.data.node_data import load_dataset
from flops.ml_repo import DataManagerTemplate

TEST_SIZE = 0.2
SEED = 42


class DataManager(DataManagerTemplate):
    """The node's `digits` data as flat float features scaled to [0, 1]."""

    def __init__(self) -> None:
        self.train, self.test = self._prepare_data()

    def _prepare_data(self) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        dataset = load_dataset()
        split = dataset.train_test_split(test_size=TEST_SIZE, seed=SEED)
        return _features(split["train"]), _features(split["test"])

    def get_data(self) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """`((x_train, y_train), (x_test, y_test))`."""
        return self.train, self.test


def _features(part) -> tuple[np.ndarray, np.ndarray]:
    columns = part.with_format("numpy")[:]
    images = np.asarray(columns["image"], dtype=np.float32)
    # Pixel intensities run from 0 to 16: a fixed scale, the same on every node.
    x = images.reshape(len(images), -1) / 16.0
    y = np.asarray(columns["label"], dtype=np.int64)
    return x, y
