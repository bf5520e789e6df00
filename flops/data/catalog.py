"""Data sets by name, for partitioning: scikit-learn's bundled sets or Hugging Face's.

`named_dataset(name)` is what `flops data partition NAME` and the manager's mock data
(`POST /api/flops/mocks`, whose FLOps bodies name `mnist` or `cifar10`) partition:

- `digits`, `breast_cancer`, `iris`, `wine` ship inside scikit-learn, so they always work;
- any other name is a Hugging Face data set, loaded with `datasets.load_dataset` as
  flwr-datasets' `FederatedDataset` loads it (FLOps's short names such as `mnist` map to their
  hub repositories), from the hub when it answers, else from the local Hugging Face cache.

Where neither has it, `DatasetUnavailableError` says so without waiting on the network: the
hub gets one short check, and none at all under `HF_HUB_OFFLINE=1`. Image columns keep their
`Image` feature type (mnist: `image` + `label`).
"""

import os
from collections.abc import Mapping
from pathlib import Path

import datasets
import numpy as np
from pydantic import BaseModel

BUNDLED_DATASETS = ("digits", "breast_cancer", "iris", "wine")
LABEL_COLUMN = "label"
TRAIN_SPLIT = "train"
DEFAULT_HUB_ENDPOINT = "https://huggingface.co"
HUB_CHECK_TIMEOUT_S = 3.0

# The short names FLOps (and flwr-datasets' examples) use, and the hub repositories they moved to.
HUB_ALIASES: Mapping[str, str] = {
    "mnist": "ylecun/mnist",
    "fashion_mnist": "zalando-datasets/fashion_mnist",
    "cifar10": "uoft-cs/cifar10",
    "cifar100": "uoft-cs/cifar100",
}

_TRUE = {"1", "ON", "YES", "TRUE"}


class DatasetUnavailableError(ValueError):
    """A data set name that is neither bundled nor obtainable from the Hugging Face hub or cache."""


class HubSettings(BaseModel):
    """Where the Hugging Face hub and its cache are, read from the variables Hugging Face reads."""

    endpoint: str = DEFAULT_HUB_ENDPOINT
    offline: bool = False
    hub_cache: Path
    datasets_cache: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "HubSettings":
        home = Path(env.get("HF_HOME") or Path(env.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface").expanduser()
        hub_cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or str(home / "hub")
        offline = any(env.get(name, "").upper() in _TRUE for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
        return cls(
            endpoint=(env.get("HF_ENDPOINT") or DEFAULT_HUB_ENDPOINT).rstrip("/"),
            offline=offline,
            hub_cache=Path(hub_cache).expanduser(),
            datasets_cache=Path(env.get("HF_DATASETS_CACHE") or home / "datasets").expanduser(),
        )


def hub_repository(name: str) -> str:
    """The hub repository of data set `name` (FLOps's short names resolved)."""
    return HUB_ALIASES.get(name, name)


def named_dataset(
    name: str, hub: HubSettings | None = None, check_timeout: float = HUB_CHECK_TIMEOUT_S
) -> datasets.Dataset:
    """The data set called `name`, whole (a hub data set's `train` split), for partitioning.

    Raises `DatasetUnavailableError` when it is not bundled and neither the hub (one check of
    at most `check_timeout` seconds, skipped when offline) nor the local cache has it.
    """
    if name in BUNDLED_DATASETS:
        return bundled_dataset(name)
    settings = hub or HubSettings.from_env(os.environ)
    repository = hub_repository(name)
    problem = repository_name_problem(repository)
    if problem:
        raise unavailable(name, problem)
    if settings.offline:
        hub_state = "the hub is switched off (HF_HUB_OFFLINE)"
    else:
        problem = hub_problem(settings.endpoint, check_timeout)
        if problem is None:
            return _from_hub(name, repository, settings)
        hub_state = f"the hub at {settings.endpoint} cannot be reached ({problem})"
    snapshot = cached_snapshot(repository, settings.hub_cache)
    if snapshot is None:
        raise unavailable(name, f"{hub_state} and the local cache {settings.hub_cache} does not hold {repository}")
    return _train_split(name, datasets.load_dataset(str(snapshot), cache_dir=str(settings.datasets_cache)))


def unavailable(name: str, reason: str) -> DatasetUnavailableError:
    return DatasetUnavailableError(
        f"unknown data set '{name}': it is not one of the bundled data sets ({', '.join(BUNDLED_DATASETS)}) "
        f"and not available from Hugging Face: {reason}. Name a bundled set, or bring your own data: "
        "partition a .csv or .parquet file with a 'label' column into node folders with "
        "`flops data partition FILE --nodes N --tag TAG --out DIR`."
    )


def repository_name_problem(repository: str) -> str | None:
    """Why `repository` is not a hub data set name; None when it is one.

    `datasets.load_dataset` would read a local path: a name never does.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repository)
    except HFValidationError:
        return f"'{repository}' is not a Hugging Face data set name (owner/name)"
    if Path(repository).exists():
        return f"'{repository}' names a local path, not a Hugging Face data set"
    return None


def hub_problem(endpoint: str, timeout: float) -> str | None:
    """Why the hub at `endpoint` does not answer within `timeout` seconds; None when it does."""
    import requests

    try:
        requests.head(endpoint, timeout=timeout, allow_redirects=False)
    except requests.RequestException as error:
        return type(error).__name__
    return None


def cached_snapshot(repository: str, hub_cache: Path) -> Path | None:
    """The folder of `repository`'s cached snapshot in the hub cache `hub_cache`, or None."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repository, repo_type="dataset", cache_dir=hub_cache, local_files_only=True)
    except (FileNotFoundError, ValueError):  # not cached, or not a valid repository name
        return None
    return Path(folder)


def _from_hub(name: str, repository: str, settings: HubSettings) -> datasets.Dataset:
    import requests
    from datasets.exceptions import DatasetNotFoundError

    try:
        loaded = datasets.load_dataset(repository, cache_dir=str(settings.datasets_cache))
    except DatasetNotFoundError as error:
        raise unavailable(name, f"the hub at {settings.endpoint} has no data set {repository} ({error})") from error
    except (requests.RequestException, ConnectionError, TimeoutError) as error:
        raise unavailable(name, f"downloading {repository} from {settings.endpoint} failed ({error})") from error
    return _train_split(name, loaded)


def _train_split(name: str, loaded: datasets.DatasetDict) -> datasets.Dataset:
    if TRAIN_SPLIT in loaded:
        return loaded[TRAIN_SPLIT]
    if len(loaded) == 1:
        return next(iter(loaded.values()))
    raise ValueError(f"data set '{name}' has no '{TRAIN_SPLIT}' split (splits: {', '.join(loaded)})")


def bundled_dataset(name: str) -> datasets.Dataset:
    """A scikit-learn bundled data set with an integer `label` column.

    Digits keep their shape as an 8x8 `image` column; tabular sets get one column per feature.
    """
    from sklearn import datasets as sk_datasets

    loader = getattr(sk_datasets, f"load_{name}")
    bunch = loader()
    labels = np.asarray(bunch.target, dtype=np.int64)
    if name == "digits":
        images = np.asarray(bunch.images, dtype=np.float32)
        return datasets.Dataset.from_dict({"image": images.tolist(), LABEL_COLUMN: labels})
    columns: dict[str, np.ndarray] = {
        _column_name(feature): np.asarray(bunch.data[:, i], dtype=np.float64)
        for i, feature in enumerate(bunch.feature_names)
    }
    columns[LABEL_COLUMN] = labels
    return datasets.Dataset.from_dict(columns)


def _column_name(feature: str) -> str:
    return "_".join(feature.replace("(", " ").replace(")", " ").split()).lower()
