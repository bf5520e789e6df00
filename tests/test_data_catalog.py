"""Data sets by name: bundled, from a local Hugging Face cache, or a clear refusal; never a hang."""

import socket
import time
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from flops.cli.main import app
from flops.data.catalog import BUNDLED_DATASETS, DatasetUnavailableError, HubSettings, named_dataset
from flops.data.node_data import load_dataset
from flops.data.partition import partition
from flops.net import free_port
from tests.data_images import digit_images

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hf_home(module_tmp: Callable[[str], Path]) -> Path:
    """A Hugging Face home whose hub cache holds 'ylecun/mnist' (FLOps's `mnist`), made of digits."""
    home = module_tmp("hf-home")
    repo = home / "hub" / "datasets--ylecun--mnist"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)
    files = repo / "snapshots" / SNAPSHOT / "mnist"
    files.mkdir(parents=True)
    images = digit_images(400)
    images.select(range(300)).to_parquet(str(files / "train-00000-of-00001.parquet"))
    images.select(range(300, 400)).to_parquet(str(files / "test-00000-of-00001.parquet"))
    return home


def use_hf_home(monkeypatch: pytest.MonkeyPatch, home: Path, offline: bool, endpoint: str | None = None) -> None:
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # a port nothing listens on: the hub check is refused at once
    monkeypatch.setenv("HF_ENDPOINT", endpoint or f"http://127.0.0.1:{free_port()}")


def test_cached_hub_data_set_is_partitioned_offline_and_keeps_images(
    hf_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_hf_home(monkeypatch, hf_home, offline=True)
    histogram = partition("mnist", 2, "mnist", tmp_path)
    assert sum(sum(counts.values()) for counts in histogram.values()) == 300  # the train split
    node = load_dataset(["mnist"], tmp_path / "node-2")
    assert isinstance(node.features["image"], datasets.Image) and isinstance(node[0]["image"], PILImage.Image)
    node.set_format("numpy")
    assert node["image"].reshape(len(node), -1).shape == (150, 64)
    assert set(np.unique(node["label"])) <= set(range(10))


def test_unreachable_hub_falls_back_to_the_cache(hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_hf_home(monkeypatch, hf_home, offline=False)
    started = time.monotonic()
    dataset = named_dataset("mnist")
    assert len(dataset) == 300 and isinstance(dataset.features["image"], datasets.Image)
    assert time.monotonic() - started < 20


def test_cli_partitions_a_cached_name(hf_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_hf_home(monkeypatch, hf_home, offline=True)
    result = CliRunner().invoke(app, ["data", "partition", "mnist", "-n", "3", "-t", "m", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert all((tmp_path / f"node-{i}" / "m" / "part-0.parquet").is_file() for i in (1, 2, 3))


def test_missing_offline_names_bundled_sets_and_own_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_hf_home(monkeypatch, tmp_path, offline=True)
    started = time.monotonic()
    with pytest.raises(DatasetUnavailableError) as caught:
        named_dataset("cifar10")
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert all(name in message for name in BUNDLED_DATASETS)
    assert "flops data partition FILE" in message and "uoft-cs/cifar10" in message and "HF_HUB_OFFLINE" in message


def test_silent_hub_is_given_up_on_quickly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub that accepts connections and never answers (a filtering proxy) costs one short check."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        settings = HubSettings.from_env({"HF_HOME": str(tmp_path), "HF_ENDPOINT": endpoint})
        assert not settings.offline and settings.hub_cache == tmp_path / "hub"
        started = time.monotonic()
        with pytest.raises(DatasetUnavailableError, match="cannot be reached"):
            named_dataset("ylecun/mnist", settings, check_timeout=0.5)
        assert time.monotonic() - started < 5


def test_bundled_names_need_no_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_hf_home(monkeypatch, tmp_path, offline=False)
    assert len(named_dataset("iris")) == 150
    assert not (tmp_path / "hub").exists()


def test_cli_refuses_an_unknown_name_with_the_way_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_hf_home(monkeypatch, tmp_path, offline=True)
    result = CliRunner().invoke(app, ["data", "partition", "nope", "-n", "2", "-t", "t", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "unknown data set 'nope'" in result.output and "flops data partition" in result.output
    missing = CliRunner().invoke(app, ["data", "partition", "gone.csv", "-n", "2", "-t", "t", "-o", str(tmp_path)])
    assert missing.exit_code == 2 and "no such file" in missing.output


def test_names_from_the_network_are_never_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_hf_home(monkeypatch, tmp_path, offline=True)
    secret = tmp_path / "secret.csv"
    secret.write_text("x,label\n1,0\n2,1\n")
    assert partition(str(secret), 1, "t", tmp_path / "ok")  # the CLI may read the user's files
    monkeypatch.delenv("HF_HUB_OFFLINE")  # even were the hub to answer
    monkeypatch.chdir(tmp_path)
    for name in (str(secret), "secret.csv"):
        with pytest.raises(DatasetUnavailableError, match=r"not a Hugging Face data set|local path"):
            partition(name, 1, "t", tmp_path / "out", allow_files=False)
    assert not (tmp_path / "out").exists()
