from typing import Any

from flops_utils.ml_repo_building_blocks import load_dataset
from flops_utils.ml_repo_templates import DataManagerTemplate


class DataManager(DataManagerTemplate):
    def __init__(self):
        (self.x_train, self.x_test), (self.y_train, self.y_test) = self._prepare_data()

    def _prepare_data(self) -> Any:
        """The node's digits, flattened to 64 features scaled to [0, 1]."""
        dataset = load_dataset()
        dataset.set_format("numpy")
        # Split the on-edge data: 80% train, 20% test
        splits = dataset.train_test_split(test_size=0.2, seed=42)
        train, test = splits["train"], splits["test"]
        # Pixel intensities run from 0 to 16.
        x_train = train["image"].reshape(len(train), -1) / 16.0
        x_test = test["image"].reshape(len(test), -1) / 16.0
        return (x_train, x_test), (train["label"], test["label"])

    def get_data(self) -> tuple[Any, Any]:
        return (self.x_train, self.x_test), (self.y_train, self.y_test)
