"""An FL project through the Oakestra API: the manager, the backend, and the stand-in running services."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES
from tests.manager_process import FINAL, Manager, make_git_repo, sla
from tests.oakestra_standin import OakestraStandin

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def standin(module_tmp: Callable[[str], Path]) -> Iterator[OakestraStandin]:
    server = OakestraStandin(run_locally=True, work_dir=module_tmp("standin"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def oakestra_manager(
    mlflow_server: str, standin: OakestraStandin, module_tmp: Callable[[str], Path]
) -> Iterator[Manager]:
    home = module_tmp("oakestra-home")
    secret = home / "oakestra-password"
    secret.write_text("stand-in-secret")
    extra = {
        "FLOPS_OAKESTRA_URL": standin.url,
        "FLOPS_OAKESTRA_USERNAME": "flops",
        "FLOPS_OAKESTRA_PASSWORD_FILE": str(secret),
        "FLOPS_OAKESTRA_INSECURE": "1",
        "FLOPS_PLACEHOLDER_IMAGES": "1",
        # The actors' certificates and keys reach Oakestra services as CSI volumes; the stand-in runs
        # services on this machine, where each volume's source is its mount path.
        "FLOPS_OAKESTRA_VOLUME_CSI_DRIVER": "standin.csi.flops",
    }
    instance = Manager(home, mlflow_server, extra_env=extra)
    try:
        instance.add_mock_nodes()
        yield instance
    finally:
        instance.stop()


def test_project_completes_through_oakestra(
    oakestra_manager: Manager, standin: OakestraStandin, tmp_path: Path
) -> None:
    repo = make_git_repo(EXAMPLES / "digits-sklearn", tmp_path / "digits")
    answer = oakestra_manager.call("POST", "/api/flops/projects", json=sla(repo, rounds=2, backend="oakestra"))
    assert answer.status_code == 200, answer.text
    project = oakestra_manager.wait_for(answer.json()["project_id"], FINAL)
    assert project["status"] == "completed", (project["error"], oakestra_manager.log())
    assert [r["round"] for r in project["rounds"]] == [1, 2]
    created = [r for r in standin.requests if r.method == "POST" and r.path == "/api/service/"]
    names = sorted(r.body["applications"][0]["microservices"][0]["cmd"][0] for r in created)
    assert names == ["flops-aggregator", "flops-learner", "flops-learner"]
    addresses = {r.body["applications"][0]["microservices"][0]["addresses"]["rr_ip"] for r in created}
    assert len(addresses) == 3 and all(a.startswith("10.30.") for a in addresses)
    # TLS and node identity through Oakestra: one volume per actor, its own folder, nothing in variables.
    services = [r.body["applications"][0]["microservices"][0] for r in created]
    for service in services:
        [volume] = service["volumes"]
        assert volume["csi_driver"] == "standin.csi.flops" and volume["config"]["source"] == volume["mount_path"]
        assert "--insecure" not in service["cmd"]
        assert not any("PRIVATE KEY" in item or "BEGIN CERTIFICATE" in item for item in service["environment"])
    aggregator = next(s for s in services if s["cmd"][0] == "flops-aggregator")
    assert aggregator["volumes"][0]["mount_path"].endswith("/pki/superlink")
    learner_folders = {s["volumes"][0]["mount_path"] for s in services if s["cmd"][0] == "flops-learner"}
    assert len(learner_folders) == 2 and all("/pki/supernodes/" in folder for folder in learner_folders)
    assert not standin.apps, "the application is deleted when the project ends"


def test_failed_scheduling_fails_the_project_and_removes_everything(
    oakestra_manager: Manager, standin: OakestraStandin, tmp_path: Path
) -> None:
    repo = make_git_repo(EXAMPLES / "digits-sklearn", tmp_path / "digits")
    standin.default_outcome = ("NO_WORKER_CAPACITY", "no worker has 100 MB free")
    try:
        answer = oakestra_manager.call("POST", "/api/flops/projects", json=sla(repo, rounds=1, backend="oakestra"))
        project = oakestra_manager.wait_for(answer.json()["project_id"], FINAL)
    finally:
        standin.default_outcome = None
    assert project["status"] == "failed"
    assert "NO_WORKER_CAPACITY" in project["error"]["message"]
    assert not standin.apps and standin.running_processes() == 0
