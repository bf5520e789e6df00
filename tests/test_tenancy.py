"""Tenancy, as the attacks of one customer on another: sources, data tags, disk.

Over the real API (Flask's test client), controller, embedded store and node folders; the dry
runs start the real image builder. No reconcile loop runs, so nothing trains here.
"""

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flops.build import BuildResult
from flops.data.partition import partition
from flops.mqtt import MqttSettings
from flops_manager.api import create_app
from flops_manager.auth import TokenService
from flops_manager.controller import Controller
from flops_manager.disk import sweep_builds
from flops_manager.limits import ApiLimits
from flops_manager.models import ProcessHandle, ProjectStatus
from flops_manager.orchestration.local import LocalOrchestrator
from flops_manager.settings import ManagerSettings
from flops_manager.sources import SourcePolicy, SourceRefused
from flops_manager.store import open_store
from image_builder import source as builder_source
from tests.conftest import EXAMPLES
from tests.git_repos import git, make_git_repo
from tests.manager_process import repo_root_above, sla

ADMIN = "flops_tenancy-admin-token-0123456789abcdef"


class World:
    """One manager (API, store, node folders) with customers alice and bob."""

    def __init__(self, home: Path, **limits: Any) -> None:
        self.home = home
        self.settings = ManagerSettings(
            home=home, mqtt=MqttSettings(host="127.0.0.1", port=1), tracking_uri="http://127.0.0.1:7027",
            nodes_dir=home / "nodes", limits=ApiLimits(**limits),
            sources=SourcePolicy(local_roots=[repo_root_above(home)]),  # pytest's root: holds home too
        )  # fmt: skip
        self.store = open_store(None, home / "store")
        self.tokens = TokenService(self.store)
        self.tokens.ensure_admin_token(ADMIN, None, home / "admin-token")
        controller = Controller(self.store, {"local": LocalOrchestrator(self.settings.runs_dir)}, self.settings)
        self.client = create_app(controller, self.tokens).test_client()
        self.alice = self.tokens.create_customer_token("alice")
        self.bob = self.tokens.create_customer_token("bob")

    def call(self, method: str, path: str, token: str = ADMIN, **kwargs: Any) -> Any:
        return self.client.open(path, method=method, headers={"Authorization": f"Bearer {token}"}, **kwargs)

    def mock(self, token: str, tag: str, nodes: int = 2, **extra: Any) -> Any:
        config = {"dataset_name": "digits", "number_of_partitions": nodes, "data_tag": tag, **extra}
        return self.call("POST", "/api/flops/mocks", token, json={"mock_data_configuration": config})


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    instance = World(tmp_path / "home")
    yield instance
    instance.store.close()


@pytest.fixture(scope="module")
def digits_repo(module_tmp: Callable[[str], Path]) -> Path:
    return make_git_repo(EXAMPLES / "digits-sklearn", module_tmp("repos") / "digits-sklearn")


REMOTE = "https://git.example.invalid/alice/model.git"


def project_sla(url: str, tag: str = "digits", **extra: Any) -> dict[str, Any]:
    document = sla(Path("/unused"), ml_repo_url=url, **extra)
    document["training_configuration"]["data_tags"] = [tag]
    return document


def submit(world: World, token: str, tag: str) -> int:
    """Submit a project on `tag` from a remote repository; the status code."""
    return int(world.call("POST", "/api/flops/projects", token, json=project_sla(REMOTE, tag)).status_code)


def stored(world: World) -> int:
    return len(world.store.list())


# ------------------------------------------------------------------------------------ sources
def fake_build_folder(world: World) -> Path:
    """What another customer's build leaves: FLOPS_HOME/builds/<key>/repo with their code in it."""
    folder = world.home / "builds" / "0123456789abcdef0123456789abcdef" / "repo"
    folder.mkdir(parents=True)
    (folder / "model_manager.py").write_text("SECRET = 'bob's model'\n")
    return folder


def test_another_customers_build_folder_is_refused_like_a_missing_path(world: World, digits_repo: Path) -> None:
    assert world.mock(ADMIN, "digits", shared=True).status_code == 200
    build = fake_build_folder(world)
    missing = world.home / "builds" / "ffffffffffffffffffffffffffffffff" / "repo"
    linked = world.home.parent / "innocent-link"  # inside the allowed root, pointing into FLOPS_HOME
    linked.symlink_to(build)
    for token in (world.alice, ADMIN):  # not even the admin may name the manager's own state
        answers = [
            world.call("POST", path, token, json=project_sla(url))
            for url in (str(build), str(missing), f"file://{build}", str(linked), str(build) + "/../repo")
            for path in ("/api/flops/projects", "/api/flops/projects?dry_run=1")
        ]
        assert {a.status_code for a in answers} == {422}
        assert len({a.get_json()["message"] for a in answers}) == 1, [a.get_json() for a in answers]  # no oracle
        assert all(a.get_json()["details"] == {"field": "ml_repo_url"} for a in answers)
    # A customer may name no local path at all, the admin only under the configured roots.
    as_alice = world.call("POST", "/api/flops/projects", world.alice, json=project_sla(str(digits_repo)))
    nowhere = world.call("POST", "/api/flops/projects", world.alice, json=project_sla("/nowhere/at/all"))
    assert as_alice.status_code == nowhere.status_code == 422
    assert as_alice.get_json() == nowhere.get_json()
    assert "not accepted from customer tokens" in as_alice.get_json()["message"]
    assert world.call("POST", "/api/flops/projects", json=project_sla(str(digits_repo))).status_code == 200
    assert stored(world) == 1
    assert not (world.home / "builds" / "work").exists() and not (world.home / "dry-runs").exists()


def test_remote_helper_and_other_transports_are_refused_before_anything_runs(world: World) -> None:
    assert world.mock(ADMIN, "digits", shared=True).status_code == 200
    started = time.monotonic()
    for url in (
        "ext::sh -c touch% /tmp/pwned",
        "fd::17",
        "EXT::sh",
        "git::https://x",
        "http://git.example.com/a.git",
        "ssh://git@git.example.com/a.git",
        "git@git.example.com:a/b.git",
        "git://git.example.com/a.git",
        "relative/path",
        "~/repo",
        "-uhelp",
        "https://host/a b",
        "https://\x00host/a",
    ):
        for dry in ("", "?dry_run=1"):
            answer = world.call("POST", "/api/flops/projects" + dry, world.alice, json=project_sla(url))
            assert answer.status_code in (400, 422), (url, answer.get_json())
            assert answer.get_json()["message"], url
    assert time.monotonic() - started < 10  # no builder, no git ran
    assert stored(world) == 0 and not (world.home / "builds").exists()
    assert world.call("POST", "/api/flops/projects", world.alice, json=project_sla(REMOTE)).status_code == 200


def test_source_policy_hosts_schemes_and_roots(tmp_path: Path) -> None:
    home = tmp_path / "home"
    policy = SourcePolicy.from_env(
        {"FLOPS_REPO_SCHEMES": "https,ssh", "FLOPS_REPO_HOSTS": "github.com,*.corp.example",
         "FLOPS_REPO_LOCAL_ROOTS": f"{tmp_path / 'repos'}:{home}"}
    )  # fmt: skip
    for url in ("https://github.com/a/b", "https://git.corp.example/a", "ssh://git@github.com/a", "git@github.com:a/b"):
        policy.check(url, home, admin=False)
    policy.check(str(tmp_path / "repos" / "x"), home, admin=True)
    for url, admin in (
        ("https://gitlab.com/a/b", True), ("http://github.com/a", True), ("https://corp.example.evil/a", True),
        (str(tmp_path / "repos" / "x"), False),  # customers: no local paths by default
        (str(home / "builds" / "k" / "repo"), True),  # a root that holds FLOPS_HOME does not open it
        (str(tmp_path / "elsewhere"), True),
    ):  # fmt: skip
        with pytest.raises(SourceRefused):
            policy.check(url, home, admin=admin)
    # FLOPS_HOME/sources is the default root, for the admin.
    SourcePolicy().check(str(home / "sources" / "mine"), home, admin=True)
    with pytest.raises(ValueError, match="FLOPS_REPO_SCHEMES"):
        SourcePolicy.from_env({"FLOPS_REPO_SCHEMES": "https,ext"})


# ------------------------------------------------------------------------------------ data tags
def tag_bytes(world: World, tag: str) -> dict[str, bytes]:
    return {str(p.relative_to(world.home)): p.read_bytes() for p in sorted((world.home / "nodes").glob(f"*/{tag}/*"))}


def test_a_customer_cannot_train_on_overwrite_or_list_anothers_data_tag(world: World) -> None:
    made = world.mock(world.alice, "alice-digits")
    assert made.status_code == 200, made.get_json()
    assert made.get_json()["owner"] == "alice" and set(made.get_json()["nodes"]) == {"node-1", "node-2"}
    before = tag_bytes(world, "alice-digits")
    # Train on it: refused, and the refusal names none of alice's data.
    refused = world.call("POST", "/api/flops/projects", world.bob, json=project_sla(REMOTE, "alice-digits"))
    assert refused.status_code == 422 and "none of your data" in refused.get_json()["message"]
    assert "alice" not in refused.get_json()["message"].replace("alice-digits", "")
    # Overwrite it, as bob or as bob claiming to be alice: refused, the data unchanged.
    overwrite = world.mock(world.bob, "alice-digits", nodes=3)
    assert overwrite.status_code == 409 and "another owner" in overwrite.get_json()["message"]
    claim = world.call("POST", "/api/flops/mocks", world.bob, json={
        "customerID": "alice", "mock_data_configuration": {"dataset_name": "iris", "number_of_partitions": 2,
                                                           "data_tag": "alice-digits"}})  # fmt: skip
    assert claim.status_code == 403
    # The admin may not hand alice's tag to someone else either.
    admin_for_bob = world.call("POST", "/api/flops/mocks", json={
        "customerID": "bob", "mock_data_configuration": {"dataset_name": "digits", "number_of_partitions": 2,
                                                         "data_tag": "alice-digits"}})  # fmt: skip
    assert admin_for_bob.status_code == 409
    assert tag_bytes(world, "alice-digits") == before
    # List it: bob sees nothing, alice and the admin see it.
    assert world.call("GET", "/api/flops/data", world.bob).get_json() == []
    listed = world.call("GET", "/api/flops/data", world.alice).get_json()
    assert listed == [{"data_tag": "alice-digits", "owners": ["alice"], "shared": False, "nodes": ["node-1", "node-2"]}]
    assert [t["data_tag"] for t in world.call("GET", "/api/flops/data").get_json()] == ["alice-digits"]
    # alice trains on her own tag; so may a project the admin submits for alice.
    assert submit(world, world.alice, "alice-digits") == 200
    for_alice = project_sla(REMOTE, "alice-digits", customerID="alice")
    assert world.call("POST", "/api/flops/projects", json=for_alice).status_code == 200
    assert world.call("POST", "/api/flops/projects", json=project_sla(REMOTE, "alice-digits")).status_code == 422


def test_operator_made_and_shared_tags(world: World) -> None:
    """`flops data partition` without an owner: the operator's (Admin's) only; shared: everyone's."""
    partition("iris", 2, "operator-iris", world.settings.nodes_dir)
    for token in (world.alice, world.bob):
        assert submit(world, token, "operator-iris") == 422
    assert world.call("POST", "/api/flops/projects", json=project_sla(REMOTE, "operator-iris")).status_code == 200
    assert world.mock(world.alice, "operator-iris").status_code == 409  # nor overwritten by a customer
    assert world.mock(ADMIN, "open-digits", shared=True).status_code == 200
    for token in (world.alice, world.bob):
        assert submit(world, token, "open-digits") == 200
        listing = world.call("GET", "/api/flops/data", token).get_json()
        assert listing == [{"data_tag": "open-digits", "owners": [], "shared": True, "nodes": ["node-1", "node-2"]}]
    assert world.mock(world.bob, "open-digits").status_code == 409  # shared to train on, not to overwrite


def test_mock_data_is_bounded(tmp_path: Path) -> None:
    world = World(tmp_path / "home", max_mock_nodes=4, max_tags_per_customer=2)
    try:
        too_many = world.mock(world.alice, "many", nodes=5)
        assert too_many.status_code == 422 and "at most 4 node folders" in too_many.get_json()["message"]
        assert world.mock(ADMIN, "many", nodes=1000).status_code == 422  # the admin too
        assert not (world.home / "nodes").exists()
        hub = world.call(
            "POST",
            "/api/flops/mocks",
            world.alice,
            json={"mock_data_configuration": {"dataset_name": "mnist", "number_of_partitions": 2, "data_tag": "m"}},
        )
        assert hub.status_code == 403 and "bundled" in hub.get_json()["message"]  # no downloads for customers
        assert world.mock(world.alice, "one").status_code == 200
        assert world.mock(world.alice, "two", nodes=4).status_code == 200
        assert world.mock(world.alice, "two", nodes=2).status_code == 200  # rewriting her own tag: fine
        assert sorted(p.parent.name for p in (world.home / "nodes").glob("*/two")) == ["node-1", "node-2"]
        third = world.mock(world.alice, "three")
        assert third.status_code == 429 and "FLOPS_MAX_TAGS_PER_CUSTOMER" in third.get_json()["message"]
        assert world.mock(world.bob, "three").status_code == 200  # per customer
        # Learners go only to nodes of tags the customer may use.
        assert submit(world, world.alice, "two") == 200
    finally:
        world.store.close()


def test_reserved_customer_names(world: World) -> None:
    for name in ("admin", "Admin", "ADMIN"):
        answer = world.call("POST", "/api/flops/tokens", json={"customer_id": name})
        assert answer.status_code == 422 and "reserved" in answer.get_json()["message"]


# ----------------------------------------------------------------------------- clones and disk
def test_clones_of_refused_submissions_are_removed(world: World, tmp_path: Path) -> None:
    no_contract = make_git_repo(EXAMPLES / "digits-sklearn", tmp_path / "no-contract")
    (no_contract / "model_manager.py").unlink()
    git(no_contract, "commit", "-qam", "drop the model manager")
    big = make_git_repo(EXAMPLES / "digits-sklearn", tmp_path / "big")
    (big / "weights.bin").write_bytes(os.urandom(1024) * 1024 * 201)  # past the builder's 200 MB
    git(big, "add", "-A")
    git(big, "commit", "-qm", "weights")
    assert world.mock(ADMIN, "digits").status_code == 200
    for repo, reason in ((no_contract, "model_manager.py"), (big, "larger than the limit")):
        answer = world.call("POST", "/api/flops/projects?dry_run=1", json=project_sla(str(repo)))
        assert answer.status_code == 422 and reason in answer.get_json()["message"], answer.get_json()
    builds = world.home / "builds"
    leftovers = [p for p in builds.rglob("*") if p.is_dir() and p.name not in ("work", "resolutions")]
    assert not (builds / "repos").exists() and not list((builds / "work").iterdir()), leftovers


def test_a_killed_builders_work_folder_is_removed_by_the_next(tmp_path: Path) -> None:
    work = tmp_path / "work"
    orphan, running, fresh = work / "build-orphan", work / "build-running", work / "build-fresh"
    for folder, pid in ((orphan, 2**22 + 7), (running, os.getpid()), (fresh, 2**22 + 9)):
        (folder / "repo.clone").mkdir(parents=True)
        (folder / builder_source.OWNER_FILE).write_text(str(pid))
    old = time.time() - 2 * builder_source.ORPHANED_WORK_S
    for folder in (orphan, running):
        os.utime(folder, (old, old))
    builder_source._work_dir(tmp_path)
    assert not orphan.exists() and running.exists() and fresh.exists()


def add_project(world: World, customer: str, status: ProjectStatus, key: str = "", serving: bool = False) -> str:
    token = {"alice": world.alice, "bob": world.bob}[customer]
    answer = world.call("POST", "/api/flops/projects", token, json=project_sla(REMOTE, "shared"))
    assert answer.status_code == 200, answer.get_json()
    project_id: str = answer.get_json()["project_id"]
    changes: dict[str, Any] = {}
    if key:
        folder = world.settings.builds_dir / key
        (folder / "repo").mkdir(parents=True, exist_ok=True)
        (folder / "repo" / "weights.bin").write_bytes(b"0" * 2**20 * 50)
        changes["build"] = BuildResult(commit="c" * 40, repo_dir=str(folder / "repo"), build_key=key).model_dump()
    if serving:
        handle = ProcessHandle(name="inference", backend="local", ref="1", active=True)
        changes["deployment"] = [handle.model_dump(mode="json")]
    if changes:
        world.store.update(project_id, changes)
    if status is not ProjectStatus.SUBMITTED:
        world.store.transition(project_id, status)
    return project_id


def test_disk_quota_per_customer(tmp_path: Path) -> None:
    world = World(tmp_path / "home", customer_disk_quota_mb=500, build_estimate_mb=200)
    try:
        assert world.mock(ADMIN, "shared", shared=True).status_code == 200
        add_project(world, "alice", ProjectStatus.COMPLETED, key="k-alice-serving", serving=True)  # 50 MB in use
        add_project(world, "alice", ProjectStatus.SUBMITTED)  # a build running: counted at 200 MB
        fits = world.call("POST", "/api/flops/projects", world.alice, json=project_sla(REMOTE, "shared"))
        assert fits.status_code == 200, fits.get_json()  # 50 + 200 + 200 (this one) <= 500
        over = world.call("POST", "/api/flops/projects", world.alice, json=project_sla(REMOTE, "shared"))
        assert over.status_code == 429, over.get_json()  # 50 + 2 x 200 + 200 > 500
        body = over.get_json()
        assert "disk quota of 500 MB" in body["message"] and body["details"]["quota_mb"] == 500
        assert body["details"]["running_builds"] == 2 and 49 < body["details"]["used_mb"] < 51
        assert submit(world, world.bob, "shared") == 200
    finally:
        world.store.close()


def test_builds_only_ended_projects_used_are_removed(world: World) -> None:
    assert world.mock(ADMIN, "shared", shared=True).status_code == 200
    ended = add_project(world, "alice", ProjectStatus.FAILED, key="k-ended")
    add_project(world, "bob", ProjectStatus.COMPLETED, key="k-shared")
    add_project(world, "alice", ProjectStatus.TRAINING, key="k-shared")  # the same build, still live
    add_project(world, "bob", ProjectStatus.COMPLETED, key="k-serving", serving=True)
    unrecorded = world.settings.builds_dir / "k-flops-train"  # made by `flops train`: not the manager's
    unrecorded.mkdir(parents=True)
    building = add_project(world, "bob", ProjectStatus.BUILDING)
    assert sweep_builds(world.store, world.settings) == []  # a build runs: it may reuse any folder
    world.store.transition(building, ProjectStatus.CANCELLED)
    assert sweep_builds(world.store, world.settings) == [world.settings.builds_dir / "k-ended"]
    assert {p.name for p in world.settings.builds_dir.iterdir()} == {"k-shared", "k-serving", "k-flops-train"}
    assert world.store.get(ended) is not None


def test_the_admin_lists_and_revokes_tokens_and_a_revoked_token_is_refused_at_once(world: World) -> None:
    assert world.call("GET", "/api/flops/projects", world.bob).status_code == 200
    listed = world.call("GET", "/api/flops/tokens").get_json()
    assert {record["customer_id"] for record in listed} >= {"alice", "bob"}
    assert all("token" not in record and "token_hash" not in record for record in listed)
    bobs = next(record["token_id"] for record in listed if record["customer_id"] == "bob")
    # Customers neither list nor revoke tokens, their own or another's.
    assert world.call("GET", "/api/flops/tokens", world.alice).status_code == 403
    assert world.call("DELETE", f"/api/flops/tokens/{bobs}", world.alice).status_code == 403
    # Rotation: a new token for bob, then the old one revoked.
    issued = world.call("POST", "/api/flops/tokens", json={"customer_id": "bob"})
    assert issued.status_code == 201 and issued.get_json()["token_id"] != bobs
    revoked = world.call("DELETE", f"/api/flops/tokens/{bobs}")
    assert revoked.status_code == 200 and revoked.get_json() == {"revoked": bobs, "customer_id": "bob"}
    assert world.call("GET", "/api/flops/projects", world.bob).status_code == 401
    assert world.call("GET", "/api/flops/projects", issued.get_json()["token"]).status_code == 200
    missing = world.call("DELETE", f"/api/flops/tokens/{bobs}")
    assert missing.status_code == 404 and "GET /api/flops/tokens" in missing.get_json()["message"]
    admin_id = next(record["token_id"] for record in listed if record["role"] == "admin")
    last = world.call("DELETE", f"/api/flops/tokens/{admin_id}")
    assert last.status_code == 409 and "last admin token" in last.get_json()["message"]
    assert world.call("GET", "/api/flops/tokens").status_code == 200


def test_a_customer_explains_only_its_own_registered_models(world: World) -> None:
    world.mock(world.bob, "bob-digits")

    def explain(model_uri: str) -> Any:
        document = project_sla(REMOTE, "bob-digits", job="explain", explain={"model_uri": model_uri})
        return world.call("POST", "/api/flops/projects", world.bob, json=document)

    before = stored(world)
    refused = explain("models:/alice.digits/1")
    assert refused.status_code == 403, refused.get_json()
    assert "explains only its own models" in refused.get_json()["message"]
    assert refused.get_json()["details"]["field"] == "explain.model_uri"
    assert explain("models:/alice.bob.digits@v2026-12-1").status_code == 403  # a prefix is no ownership
    assert stored(world) == before, "a refused explain job stores nothing"
    accepted = explain("models:/bob.digits@v2026-12-1")
    assert accepted.status_code == 200, accepted.get_json()
    assert stored(world) == before + 1
