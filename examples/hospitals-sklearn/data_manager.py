"""Loads this hospital's breast-cancer records and splits them into train and test sets."""

import numpy as np

from flops.data.node_data import load_dataset
from flops.ml_repo import DataManagerTemplate

LABEL = "label"
# The 30 features of the Wisconsin breast-cancer data, in this order (the model's input).
FEATURES = [
    # mean values
    "mean_radius",
    "mean_texture",
    "mean_perimeter",
    "mean_area",
    "mean_smoothness",
    "mean_compactness",
    "mean_concavity",
    "mean_concave_points",
    "mean_symmetry",
    "mean_fractal_dimension",
    # standard errors
    "radius_error",
    "texture_error",
    "perimeter_error",
    "area_error",
    "smoothness_error",
    "compactness_error",
    "concavity_error",
    "concave_points_error",
    "symmetry_error",
    "fractal_dimension_error",
    # worst (largest) values
    "worst_radius",
    "worst_texture",
    "worst_perimeter",
    "worst_area",
    "worst_smoothness",
    "worst_compactness",
    "worst_concavity",
    "worst_concave_points",
    "worst_symmetry",
    "worst_fractal_dimension",
]
TEST_SIZE = 0.2
SEED = 42

Split = tuple[np.ndarray, np.ndarray]


class DataManager(DataManagerTemplate):
    """The node's `hospitals` data: the 30 raw float features and the diagnosis."""

    def __init__(self) -> None:
        self.train, self.test = self._prepare_data()

    def _prepare_data(self) -> tuple[Split, Split]:
        dataset = load_dataset()
        split = dataset.train_test_split(test_size=TEST_SIZE, seed=SEED)
        # Standardisation is part of the model (see model_manager.py), not done here.
        return _columns(split["train"]), _columns(split["test"])

    def get_data(self) -> tuple[Split, Split]:
        """`((x_train, y_train), (x_test, y_test))`."""
        return self.train, self.test


def _columns(part) -> Split:
    columns = part.with_format("numpy")[:]
    missing = [name for name in FEATURES if name not in columns]
    if missing:
        raise ValueError(f"the hospitals data lacks columns {missing}")
    x = np.column_stack([np.asarray(columns[name], dtype=np.float64) for name in FEATURES])
    y = np.asarray(columns[LABEL], dtype=np.int64)
    return x, y
