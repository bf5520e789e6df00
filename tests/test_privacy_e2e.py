"""`flops train --dp client` end to end: learners clip, the aggregator adds noise, epsilon per round.

Real SuperLink, SuperNodes and MLflow: every update the aggregator averaged had a norm of at
most the clipping norm (the learners' mods clipped them), each round reports the epsilon the
accountant gives for that many rounds, and MLflow holds the curve.
"""

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flops.differential_privacy import DifferentialPrivacy, privacy_spent
from tests.conftest import EXAMPLES, run_flops

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_processes")]

CLIPPING_NORM = 0.5  # below the norm of a digits-sklearn update (about 1.5 to 3 in a first round)


def test_client_side_clipping_with_central_noise_reports_epsilon_per_round(
    mlflow_server: str, digits_nodes: Path, flops_home: Path
) -> None:
    result = run_flops(
        "train", str(EXAMPLES / "digits-sklearn"), "--data-dir", str(digits_nodes),
        "--learners", "2", "--rounds", "3", "--tracking-uri", mlflow_server,
        "--dp", "client", "--noise-multiplier", "0.3", "--clipping-norm", str(CLIPPING_NORM),
        "--project-id", "dp-e2e", "--model-name", "dp-e2e", "--json", timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["status"] == "completed"
    privacy = DifferentialPrivacy(mode="client", noise_multiplier=0.3, clipping_norm=CLIPPING_NORM)
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for report in rounds:
        spent = report["privacy"]
        assert spent["epsilon"] == pytest.approx(privacy_spent(privacy, report["round"]).epsilon, rel=1e-9)
        assert spent["clipping_norm"] == CLIPPING_NORM
        assert spent["max_update_norm"] <= CLIPPING_NORM * (1 + 1e-6), "every averaged update was clipped"
    assert rounds[0]["privacy"]["max_update_norm"] == pytest.approx(CLIPPING_NORM, rel=1e-6), (
        "a first-round update of digits is larger than the norm: the learner's mod clipped it to exactly the norm"
    )
    epsilons = [r["privacy"]["epsilon"] for r in rounds]
    assert epsilons == sorted(epsilons) and len(set(epsilons)) == 3
    assert summary["privacy"]["epsilon"] == pytest.approx(epsilons[-1])
    assert summary["privacy"]["mode"] == "client" and summary["privacy"]["rounds"] == 3
    assert rounds[-1]["accuracy"] is not None
    assert "differential privacy (client): epsilon" in result.stderr
    assert "privacy: epsilon" in result.stderr  # each round's line

    client = MlflowClient(mlflow_server)
    parent = client.get_run(summary["parent_run_id"])
    assert parent.data.params["dp.mode"] == "client" and parent.data.params["dp.noise_multiplier"] == "0.3"
    curve = sorted(client.get_metric_history(parent.info.run_id, "dp_epsilon"), key=lambda m: m.step)
    assert [m.step for m in curve] == [1, 2, 3]
    assert [m.value for m in curve] == pytest.approx(epsilons)
