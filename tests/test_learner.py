"""The learner side: the user's ModelManager driven per message, errors, FedProx, no MLflow."""

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from flops.data.partition import partition
from flops.ml_repo.loader import UserCodeError, load_model_manager_class
from flops.training import (
    EVALUATE_RECEIVED_KEY,
    GLOBAL_ACCURACY_KEY,
    GLOBAL_EXAMPLES_KEY,
    SPEC_RUN_CONFIG_KEY,
    TrainingSpec,
)
from learner.main import CONNECTION_ERROR_LINE, relay_output
from learner.user_code import ModelRunner, NodeContext, proximal_step
from tests.conftest import EXAMPLES, ROOT

RECORDING_REPO = """
import numpy as np
from flops.data.node_data import load_dataset

class ModelManager:
    seen_configs = []

    def __init__(self):
        self.w = np.zeros(3)

    def set_model_data(self):
        self.rows = len(load_dataset())

    def get_model(self):
        return self

    def get_model_parameters(self):
        return [self.w]

    def set_model_parameters(self, parameters):
        self.w = np.array(parameters[0], dtype=float)

    def fit_model(self, config):
        ModelManager.seen_configs.append(dict(config))
        if config.get("explode"):
            raise ValueError("bad learning rate")
        self.w = self.w + 1.0
        return self.rows

    def evaluate_model(self):
        return float(self.w.sum()), 0.5, 7
"""


@pytest.fixture
def recording_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[type, NodeContext]:
    repo = tmp_path / f"repo{abs(hash(tmp_path)) % 10**8}"
    repo.mkdir()
    (repo / "model_manager.py").write_text(RECORDING_REPO)
    partition("iris", 2, "flowers", tmp_path / "data")
    monkeypatch.syspath_prepend(str(repo))
    monkeypatch.delitem(sys.modules, "model_manager", raising=False)
    manager_class = load_model_manager_class()
    return manager_class, NodeContext("node-1", tmp_path / "data" / "node-1", ["flowers"])


def test_train_passes_config_and_reports_local_evaluation(
    recording_repo: tuple[type, NodeContext],
) -> None:
    manager_class, node = recording_repo
    outcome = ModelRunner(node, manager_class).train([np.ones(3)], {"lr": 0.1, "server_round": 2})
    assert manager_class.seen_configs[-1] == {"lr": 0.1, "server_round": 2}
    np.testing.assert_allclose(outcome.parameters[0], [2.0, 2.0, 2.0])
    assert outcome.num_examples == 75
    assert outcome.local_loss == pytest.approx(6.0) and outcome.local_eval_examples == 7


def test_fedprox_pulls_local_parameters_towards_global(
    recording_repo: tuple[type, NodeContext],
) -> None:
    manager_class, node = recording_repo
    outcome = ModelRunner(node, manager_class).train([np.zeros(3)], {"proximal_mu": 1.0})
    np.testing.assert_allclose(outcome.parameters[0], [0.5, 0.5, 0.5])  # (1 + 1*0) / 2
    np.testing.assert_allclose(proximal_step([np.array([4.0])], [np.array([0.0])], 3.0)[0], [1.0])


def test_user_exception_is_summarised_with_file_and_line(
    recording_repo: tuple[type, NodeContext],
) -> None:
    manager_class, node = recording_repo
    with pytest.raises(UserCodeError) as caught:
        ModelRunner(node, manager_class).train([np.zeros(3)], {"explode": True})
    message = str(caught.value)
    assert message.startswith("node-1: model_manager.py:")
    assert "in fit_model: ValueError: bad learning rate" in message


def test_missing_tag_fails_before_user_code(recording_repo: tuple[type, NodeContext]) -> None:
    manager_class, node = recording_repo
    runner = ModelRunner(NodeContext("node-9", node.data_dir, ["absent"]), manager_class)
    with pytest.raises(UserCodeError, match="node-9: no data for tag"):
        runner.evaluate([np.zeros(3)])


def test_learner_code_path_never_imports_mlflow(tmp_path: Path) -> None:
    """Import the ClientApp and train a real example with MLflow made unimportable."""
    partition("digits", 1, "digits", tmp_path)
    script = textwrap.dedent(
        f"""
        import sys

        class NoMlflow:
            def find_spec(self, name, path=None, target=None):
                if name == "mlflow" or name.startswith("mlflow."):
                    raise ImportError("learners must not import " + name)
                return None

        sys.meta_path.insert(0, NoMlflow())
        import learner.client_app, learner.main
        from flops.ml_repo.loader import load_model_manager_class
        from learner.user_code import ModelRunner, NodeContext
        from pathlib import Path
        cls = load_model_manager_class(Path({str(EXAMPLES / "digits-sklearn")!r}))
        runner = ModelRunner(NodeContext("n", Path({str(tmp_path / "node-1")!r}), ["digits"]), cls)
        params = cls().get_model_parameters()
        out = runner.train(params, {{}})
        runner.evaluate(out.parameters)
        assert not [m for m in sys.modules if m.split(".")[0] == "mlflow"]
        print("ok", out.num_examples)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok ")


TRACKING_REPO = """
import mlflow
import mlflow.sklearn
import numpy as np
from mlflow.models import infer_signature
from sklearn.linear_model import LogisticRegression

from flops.data.node_data import load_dataset

mlflow.autolog()  # FLOps repositories do this at import time
mlflow.sklearn.autolog(log_models=False)


class ModelManager:
    def __init__(self):
        self.model = LogisticRegression(max_iter=50)

    def set_model_data(self):
        data = load_dataset().with_format("numpy")[:]
        self.x = np.asarray(data["image"], dtype=float).reshape(len(data["label"]), -1) / 16.0
        self.y = np.asarray(data["label"])

    def get_model(self):
        return self.model

    def get_model_parameters(self):
        return [np.zeros((10, 64)), np.zeros(10)]

    def set_model_parameters(self, parameters):
        self.model.classes_ = np.arange(10)
        self.model.coef_, self.model.intercept_ = (np.array(p, dtype=float) for p in parameters)

    def fit_model(self):
        mlflow.set_tracking_uri("http://127.0.0.1:9")
        mlflow.set_experiment("learner")
        with mlflow.start_run(run_name="local-fit"):
            mlflow.log_params({"max_iter": 50})
            self.model.fit(self.x, self.y)  # autolog would create a run and log here
            mlflow.log_metric("train_accuracy", self.model.score(self.x, self.y))
            mlflow.set_tag("node", "learner")
            infer_signature(self.x[:2], self.model.predict(self.x[:2]))
        return len(self.y)

    def evaluate_model(self):
        return 0.0, float(self.model.score(self.x, self.y)), len(self.y)
"""


def test_client_app_trains_user_code_that_tracks_with_inert_mlflow(tmp_path: Path) -> None:
    """The real ClientApp on a real train message: `import mlflow; mlflow.autolog()` and logging in fit.

    The platform venv has the real MLflow; a finder that refuses it proves it is never looked up.
    """
    repo, work = tmp_path / "repo", tmp_path / "work"
    repo.mkdir()
    work.mkdir()
    (repo / "model_manager.py").write_text(TRACKING_REPO)
    partition("digits", 1, "digits", tmp_path / "data")
    spec = TrainingSpec(project_id="inert", model_name="inert", rounds=1, data_tags=["digits"])
    script = textwrap.dedent(
        f"""
        import socket, sys

        class NoRealMlflow:
            def find_spec(self, name, path=None, target=None):
                if name == "mlflow" or name.startswith("mlflow."):
                    raise ImportError("the real " + name + " was looked up")
                return None

        sys.meta_path.insert(0, NoRealMlflow())
        sys.path.insert(0, {str(repo)!r})
        import numpy as np
        from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
        import learner.client_app as client_app
        from flops.ml_repo.inert_mlflow import is_inert

        def refuse(*a, **k):
            raise AssertionError("a socket was used")
        for method in ("connect", "connect_ex", "bind", "sendto"):
            setattr(socket.socket, method, refuse)
        socket.create_connection = refuse
        from flwr.supercore.task_identity import TaskIdentity  # what Flower sets in its app processes

        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        node_config = {{"node-name": "node-1", "data-dir": {str(tmp_path / "data" / "node-1")!r}}}
        run_config = {{{SPEC_RUN_CONFIG_KEY!r}: {spec.model_dump_json()!r}}}
        context = Context(run_id=1, node_id=1, state=RecordDict(), node_config=node_config, run_config=run_config)
        arrays = ArrayRecord([np.zeros((10, 64)), np.zeros(10)])
        content = RecordDict({{"arrays": arrays, "config": ConfigRecord({{}})}})
        reply = client_app.train(Message(content=content, dst_node_id=1, message_type="train"), context)
        metrics = reply.content.metric_records["metrics"]
        assert is_inert(sys.modules["mlflow"]) and is_inert(sys.modules["model_manager"].mlflow)

        # The next round of the run in this process: its manager and data are kept, and it evaluates
        # the model it receives before training (one message per round).
        manager_class = sys.modules["model_manager"].ModelManager
        received_model = [np.random.default_rng(7).normal(size=(10, 64)), np.zeros(10)]
        reference = manager_class()
        reference.set_model_data()
        reference.set_model_parameters(received_model)
        expected_accuracy = reference.evaluate_model()[1]
        loads = []
        original = manager_class.set_model_data
        manager_class.set_model_data = lambda self: (loads.append(1), original(self))[1]
        config = ConfigRecord({{{EVALUATE_RECEIVED_KEY!r}: True}})
        again = RecordDict({{"arrays": ArrayRecord(received_model), "config": config}})
        second = client_app.train(Message(content=again, dst_node_id=1, message_type="train"), context)
        received = second.content.metric_records["metrics"]
        assert loads == [], "the run's data stays loaded"
        assert received[{GLOBAL_EXAMPLES_KEY!r}] == metrics["num-examples"]
        assert abs(received[{GLOBAL_ACCURACY_KEY!r}] - expected_accuracy) < 1e-9, "it evaluated what it got"
        other = Context(run_id=2, node_id=1, state=RecordDict(), node_config=node_config, run_config=run_config)
        client_app.train(Message(content=content, dst_node_id=1, message_type="train"), other)
        assert loads == [1], "another run gets a manager of its own"
        print("ok", metrics["num-examples"], metrics["local-accuracy"])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    word, examples, accuracy = result.stdout.split()
    assert word == "ok" and int(examples) > 1000 and float(accuracy) > 0.9
    assert list(work.iterdir()) == []  # no mlruns/, no mlflow.db


def test_the_supernode_relay_tells_a_taken_port_from_a_refusal() -> None:
    """Many learners starting at once: one's API port can be taken between its pick and Flower's bind;
    the learner then starts again on another port (a refusal by the SuperLink is another matter)."""
    lines = [
        "ERROR:    [Errno 98] error while attempting to bind on address ('127.0.0.1', 36973): address already in use",
        "RuntimeError: SuperNode Runtime HTTP API failed to start.",
    ]
    script = "; ".join(f"print({line!r})" for line in lines)
    taken, refused = threading.Event(), threading.Event()
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    relay_output(process, refused, taken)
    process.wait(10)
    assert taken.is_set() and not refused.is_set()
    refusal = subprocess.Popen(
        [sys.executable, "-c", f"print({CONNECTION_ERROR_LINE.decode()!r})"], stdout=subprocess.PIPE
    )
    taken, refused = threading.Event(), threading.Event()
    relay_output(refusal, refused, taken)
    refusal.wait(10)
    assert refused.is_set() and not taken.is_set()
