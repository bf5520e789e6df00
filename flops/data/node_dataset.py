"""`NodeDataset`: the `datasets.Dataset` that `load_dataset()` hands to user code.

FLOps repositories were written against Hugging Face `datasets` 2.x, where `dataset["image"]`
is the whole column in the dataset's format: after `set_format("numpy")` one NumPy array,
stacked when every row has the same shape (digits' 8x8 images give shape `(n, 8, 8)`), so
`dataset["image"].reshape(len(dataset), -1)` works. `datasets` 4 returns a lazy `Column`
instead. `NodeDataset` differs from `datasets.Dataset` in exactly that: column access
materialises the column as `datasets` 2.x and 3.x do. Everything else is `datasets`' own.

The datasets it derives (`train_test_split`, `select`, `shuffle`, `filter`, `map`,
`with_format`, ...) are `NodeDataset`s too: `datasets` builds them as plain `Dataset`s, so
every public method's result is re-classed. The subclass holds no state of its own, which is
what makes changing the class of a fresh result sound. Plain `datasets.Dataset` objects
elsewhere in the platform are untouched. `datasets.concatenate_datasets` is a module
function and returns a plain `Dataset`; wrap its result with `NodeDataset.adopt` if needed.
"""

import functools
import inspect
from collections.abc import Callable
from typing import Any

import datasets
import datasets.arrow_dataset

# `datasets` 4 has the lazy `Column`; 3.x returns columns whole already.
_COLUMN: Any = getattr(datasets.arrow_dataset, "Column", None)


class NodeDataset(datasets.Dataset):
    """A `datasets.Dataset` whose `dataset["column"]` is the whole column, formatted."""

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        if _COLUMN is not None and isinstance(key, str) and isinstance(value, _COLUMN):
            # Column[:] is the column formatted as the dataset is (NumPy: stacked arrays).
            return value[:]
        return value

    @classmethod
    def adopt(cls, value: Any) -> Any:
        """`value` with every plain `Dataset` in it (itself, or a `DatasetDict`'s) made a `NodeDataset`."""
        if type(value) is datasets.Dataset:
            value.__class__ = cls
        elif isinstance(value, datasets.DatasetDict):
            for split in value.values():
                cls.adopt(split)
        return value


def _keeping_class(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def derived(self: NodeDataset, *args: Any, **kwargs: Any) -> Any:
        return NodeDataset.adopt(method(self, *args, **kwargs))

    return derived


def _public_methods(cls: type) -> list[str]:
    """Names of `cls`'s public instance methods (not class/static methods or properties)."""
    return [
        name for name in dir(cls) if not name.startswith("_") and inspect.isfunction(inspect.getattr_static(cls, name))
    ]


for _name in _public_methods(datasets.Dataset):
    setattr(NodeDataset, _name, _keeping_class(getattr(datasets.Dataset, _name)))
