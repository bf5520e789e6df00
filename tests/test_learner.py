"""The learner side: the user's ModelManager driven per message, errors, FedProx, no MLflow."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from flops.data.partition import partition
from flops.ml_repo.loader import UserCodeError, load_model_manager_class
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
