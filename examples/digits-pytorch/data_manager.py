"""Loads this node's digits as (N, 1, 8, 8) float32 images and splits train/test."""

import numpy as np

from flops.data.node_data import load_dataset
from flops.ml_repo import DataManagerTemplate

TEST_SIZE = 0.2
SEED = 42

Split = tuple[np.ndarray, np.ndarray]


class DataManager(DataManagerTemplate):
    """The node's `digits` data: one-channel 8x8 images scaled to [0, 1], integer labels."""

    def __init__(self) -> None:
        self.train, self.test = self._prepare_data()

    def _prepare_data(self) -> tuple[Split, Split]:
        dataset = load_dataset()
        split = dataset.train_test_split(test_size=TEST_SIZE, seed=SEED)
        return _tensors(split["train"]), _tensors(split["test"])

    def get_data(self) -> tuple[Split, Split]:
        """`((x_train, y_train), (x_test, y_test))` as NumPy arrays."""
        return self.train, self.test


def _tensors(part) -> Split:
    columns = part.with_format("numpy")[:]
    images = np.asarray(columns["image"], dtype=np.float32).reshape(-1, 1, 8, 8)
    # Pixel intensities run from 0 to 16: a fixed scale, the same on every node.
    x = images / np.float32(16.0)
    y = np.asarray(columns["label"], dtype=np.int64)
    return x, y
