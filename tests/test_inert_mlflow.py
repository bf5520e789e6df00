"""The inert MLflow user code gets where tracking is off: every common call works and does nothing."""

import builtins
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flops.ml_repo import inert_mlflow
from flops.ml_repo.inert_mlflow import inert_mlflow as inert_window
from tests.conftest import ROOT


class Touched(AssertionError):
    """Inert code opened a file or a socket."""


@pytest.fixture
def sealed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cwd in which opening any file or socket fails the test."""
    monkeypatch.chdir(tmp_path)

    def refuse(*args: object, **kwargs: object) -> None:
        raise Touched(f"opened {args[:2]!r}")

    for method in ("connect", "connect_ex", "bind", "sendto"):
        monkeypatch.setattr(socket.socket, method, refuse)
    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(builtins, "open", refuse)
    monkeypatch.setattr(os, "open", refuse)
    return tmp_path


def test_every_common_call_works_and_does_nothing(sealed: Path) -> None:
    real = sys.modules.get("mlflow")
    with inert_window():
        import mlflow
        import mlflow.sklearn
        from mlflow.models import infer_signature
        from mlflow.tracking import MlflowClient

        assert inert_mlflow.is_inert(mlflow) and inert_mlflow.is_inert(mlflow.sklearn)
        assert mlflow.__version__ == inert_mlflow.VERSION
        assert mlflow.autolog() is None and mlflow.autolog(disable=False, log_models=True) is None
        assert mlflow.sklearn.autolog(log_models=False) is None
        assert mlflow.pytorch.autolog() is None  # a flavor reached by attribute, never imported
        mlflow.set_tracking_uri("http://tracking.invalid:5000")
        assert mlflow.get_tracking_uri() == "http://tracking.invalid:5000"
        experiment = mlflow.set_experiment("mnist")
        assert experiment.name == "mnist" and experiment.experiment_id == "0"
        assert mlflow.active_run() is None
        with mlflow.start_run(run_name="local") as run:
            assert mlflow.active_run() is run and run.info.run_name == "local" and run.info.run_id
            assert mlflow.log_param("lr", 0.1) == 0.1
            assert mlflow.log_params({"epochs": 2}) is None
            assert mlflow.log_metric("loss", 0.5, step=1) is None
            assert mlflow.log_metrics({"accuracy": 0.9}, step=1) is None
            assert mlflow.log_artifact("no/such/file.png") is None
            assert mlflow.log_artifacts("no/such/dir") is None
            assert mlflow.set_tag("node", "1") is None and mlflow.set_tags({"a": "b"}) is None
            with mlflow.start_run(nested=True) as child:
                assert mlflow.active_run() is child
            assert mlflow.active_run() is run
        assert mlflow.active_run() is None and run.info.status == "FINISHED"
        assert mlflow.last_active_run() is run
        mlflow.start_run()
        assert mlflow.active_run() is not None
        mlflow.end_run()
        assert mlflow.active_run() is None
        with pytest.raises(ValueError), mlflow.start_run() as failing:
            raise ValueError("user code failed")
        assert failing.info.status == "FAILED" and mlflow.active_run() is None

        # Anything else: inert callables, classes and exceptions, never AttributeError.
        signature = infer_signature([[1.0]], [1])
        assert not signature and repr(signature) == "<inert mlflow.models.infer_signature()>"
        client = MlflowClient("http://tracking.invalid")
        assert not client.log_metric("run", "loss", 1.0) and list(client.search_runs(["0"])) == []
        assert not mlflow.sklearn.log_model(object(), name="model")
        with mlflow.utils.some.deep.helper() as value:
            assert not value
        assert mlflow.entities.RunStatus.FINISHED is not None

        class Wrapper(mlflow.pyfunc.PythonModel):
            def predict(self, context: object, model_input: int) -> int:
                return model_input * 2

        assert Wrapper().predict(None, 21) == 42
        with pytest.raises(mlflow.exceptions.MlflowException, match="boom"):
            raise mlflow.exceptions.RestException("boom")
        with pytest.raises(AttributeError):
            _ = mlflow.__file__  # dunders stay honest: inspect and pickle are not fooled
    assert list(sealed.iterdir()) == []
    assert sys.modules.get("mlflow") is real  # the window gives back what it found


def test_install_wins_over_an_imported_real_mlflow(tmp_path: Path) -> None:
    """Where the real MLflow is importable and imported (a learner in the platform venv), it is not used."""
    script = textwrap.dedent(
        """
        import importlib.util, socket, sys
        import mlflow as real
        from flops.ml_repo import inert_mlflow
        inert_mlflow.install()
        inert_mlflow.install()  # idempotent
        assert sys.meta_path.count(inert_mlflow._FINDER) == 1
        def refuse(*a, **k):
            raise AssertionError("a socket was used")
        for method in ("connect", "connect_ex", "bind", "sendto"):
            setattr(socket.socket, method, refuse)
        socket.create_connection = refuse
        import mlflow, mlflow.sklearn
        assert mlflow is not real and inert_mlflow.is_inert(mlflow), mlflow
        assert isinstance(importlib.util.find_spec("mlflow").loader, inert_mlflow._Loader)
        mlflow.autolog()
        mlflow.sklearn.autolog()
        import numpy as np
        from sklearn.linear_model import LogisticRegression
        LogisticRegression().fit(np.random.rand(20, 3), np.arange(20) % 2)  # autolog would log a run here
        with mlflow.start_run():
            mlflow.log_metric("x", 1.0)
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"
    assert list(tmp_path.iterdir()) == []  # no mlruns/, no mlflow.db


def test_window_keeps_user_bindings_inert_and_real_mlflow_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The aggregator's use: user modules imported in the window keep the inert MLflow afterwards."""
    import mlflow as real

    (tmp_path / "tracked_user_module.py").write_text("import mlflow\nmlflow.autolog()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tracked_user_module", raising=False)
    with inert_window():
        import tracked_user_module
    assert inert_mlflow.is_inert(tracked_user_module.mlflow)
    assert not inert_mlflow.installed() and sys.modules["mlflow"] is real
    import mlflow

    assert mlflow is real and not [name for name, m in sys.modules.items() if inert_mlflow.is_inert(m)]


def test_aggregator_points_mlflow_at_the_server_or_its_state_dir(tmp_path: Path) -> None:
    from aggregator.environment import mlflow_fallback_uri

    assert mlflow_fallback_uri("http://127.0.0.1:7027", tmp_path) == "http://127.0.0.1:7027"
    assert mlflow_fallback_uri("", tmp_path) == (tmp_path / "user-mlruns").resolve().as_uri()
