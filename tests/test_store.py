"""The project store on the embedded montydb/SQLite store, and on MongoDB when one is given.

Set FLOPS_TEST_MONGO_URI (e.g. mongodb://127.0.0.1:27017) to run every store test against a real
MongoDB too; each test then uses a throw-away database that is dropped afterwards.
"""

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flops.sla import ProjectSLA
from flops_manager import store as store_module
from flops_manager.models import EventRecord, Project, ProjectError, ProjectStatus
from flops_manager.store import DuplicateProjectError, ProjectStore, StoreError, open_store

MONGO_URI = os.environ.get("FLOPS_TEST_MONGO_URI")


@pytest.fixture(
    params=[
        "embedded",
        pytest.param(
            "mongodb",
            marks=pytest.mark.skipif(not MONGO_URI, reason="set FLOPS_TEST_MONGO_URI to test on MongoDB"),
        ),
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProjectStore]:
    if request.param == "embedded":
        opened = open_store(None, tmp_path / "db")
        yield opened
        opened.close()
        return
    import pymongo

    name = f"flops_test_{uuid.uuid4().hex[:12]}"
    client: Any = pymongo.MongoClient(MONGO_URI, serverSelectionTimeoutMS=5000)
    try:
        yield ProjectStore(client[name])
    finally:
        client.drop_database(name)
        client.close()


SLA = ProjectSLA.model_validate({
    "customerID": "alice", "ml_repo_url": "https://git.example.com/alice/digits.git", "ml_model_flavor": "sklearn",
    "backend": "docker", "post_training_steps": ["build_image_for_trained_model"],
    "training_configuration": {"data_tags": ["digits"], "training_rounds": 5},
})  # fmt: skip


def make_project(project_id: str = "p1", customer_id: str = "alice", created_at: float = 100.0) -> Project:
    return Project(
        project_id=project_id,
        customer_id=customer_id,
        sla=SLA,
        created_at=created_at,
        updated_at=created_at,
    )


def event(name: str = "round_done", at: float = 1.0) -> EventRecord:
    return EventRecord(time=at, component="aggregator", event=name, message=f"{name} at {at}")


def test_insert_get_roundtrip(store: ProjectStore) -> None:
    project = make_project()
    store.insert(project)
    got = store.get("p1")
    assert got is not None
    assert got.project_id == "p1" and got.customer_id == "alice" and got.sla == SLA
    assert got.status == ProjectStatus.SUBMITTED and got.desired == "running"
    # the starting stage is opened at creation so every stage has a timing
    assert got.stages["submitted"].started_at == 100.0 and got.stages["submitted"].ended_at is None
    assert project.stages == {}  # the caller's object is not changed
    assert store.get("nope") is None


def test_the_sla_is_stored_under_its_own_field_names_and_read_back_validated(store: ProjectStore) -> None:
    store.insert(make_project())
    raw = store._projects.find_one({"_id": "p1"})
    assert raw["sla"]["customerID"] == "alice" and "customer_id" not in raw["sla"]
    assert raw["sla"]["backend"] == "docker" and raw["sla"]["training_configuration"]["training_rounds"] == 5
    got = store.get("p1")
    assert got is not None and isinstance(got.sla, ProjectSLA) and got.sla == SLA
    assert got.sla.post_training_steps == SLA.post_training_steps


def test_insert_duplicate_raises(store: ProjectStore) -> None:
    store.insert(make_project())
    with pytest.raises(DuplicateProjectError, match="already exists"):
        store.insert(make_project(customer_id="mallory"))
    got = store.get("p1")
    assert got is not None and got.customer_id == "alice"


def test_list_filters_and_newest_first(store: ProjectStore) -> None:
    store.insert(make_project("old", "alice", created_at=1.0))
    store.insert(make_project("new", "alice", created_at=3.0))
    store.insert(make_project("bob", "bob", created_at=2.0))
    assert [p.project_id for p in store.list()] == ["new", "bob", "old"]
    assert [p.project_id for p in store.list(customer_id="alice")] == ["new", "old"]
    assert store.list(customer_id="carol") == []
    assert store.transition("old", ProjectStatus.BUILDING, now=5.0)
    assert store.transition("bob", ProjectStatus.FAILED, now=5.0)
    assert [p.project_id for p in store.list(statuses=[ProjectStatus.BUILDING])] == ["old"]
    assert [p.project_id for p in store.list(statuses=[ProjectStatus.SUBMITTED, ProjectStatus.FAILED])] == [
        "new",
        "bob",
    ]
    assert [p.project_id for p in store.list("alice", [ProjectStatus.FAILED])] == []
    assert [p.project_id for p in store.active()] == ["new", "old"]


def test_update_and_set_desired(store: ProjectStore) -> None:
    store.insert(make_project())
    updated = store.update("p1", {"tracking_url": "http://t", "image_refs": {"learner": "img:1"}})
    assert updated is not None
    assert updated.tracking_url == "http://t" and updated.image_refs == {"learner": "img:1"}
    assert updated.updated_at > 100.0
    got = store.get("p1")
    assert got is not None and got.tracking_url == "http://t"
    cancelled = store.set_desired("p1", "cancelled")
    assert cancelled is not None and cancelled.desired == "cancelled"
    assert store.update("nope", {"tracking_url": "x"}) is None
    for field in ("status", "events", "seen_event_ids", "_id", "stages"):
        with pytest.raises(StoreError):
            store.update("p1", {field: "x"})
    with pytest.raises(StoreError):
        store.update("p1", {"build.commit": "x"})
    with pytest.raises(StoreError):
        store.set_desired("p1", "paused")  # type: ignore[arg-type]


def test_transition_forward_with_stage_timings(store: ProjectStore) -> None:
    store.insert(make_project(created_at=100.0))
    assert store.transition("p1", ProjectStatus.BUILDING, now=110.0)
    assert store.transition("p1", ProjectStatus.DEPLOYING, now=130.0)
    assert store.transition("p1", ProjectStatus.TRAINING, now=135.0)
    assert store.transition("p1", ProjectStatus.POST_TRAINING, now=200.0)
    assert store.transition("p1", ProjectStatus.COMPLETED, now=204.0)
    got = store.get("p1")
    assert got is not None and got.status == ProjectStatus.COMPLETED and not got.active
    durations = {name: timing.duration_s for name, timing in got.stages.items()}
    assert durations == {
        "submitted": 10.0,
        "building": 20.0,
        "deploying": 5.0,
        "training": 65.0,
        "post_training": 4.0,
        "completed": 0.0,
    }
    assert got.updated_at == 204.0
    assert got.error is None


def test_transition_may_skip_forward_but_never_back(store: ProjectStore) -> None:
    store.insert(make_project())
    assert store.transition("p1", ProjectStatus.TRAINING, now=120.0)
    before = store.get("p1")
    assert not store.transition("p1", ProjectStatus.BUILDING, now=130.0)
    assert not store.transition("p1", ProjectStatus.SUBMITTED, now=130.0)
    assert not store.transition("p1", ProjectStatus.TRAINING, now=130.0)
    assert store.get("p1") == before
    assert before is not None and before.stages["submitted"].duration_s == 20.0
    assert "building" not in before.stages


def test_transition_twice_same_target_changes_nothing(store: ProjectStore) -> None:
    store.insert(make_project())
    assert store.transition("p1", ProjectStatus.BUILDING, now=110.0)
    after_first = store.get("p1")
    assert not store.transition("p1", ProjectStatus.BUILDING, now=150.0)
    assert store.get("p1") == after_first
    error = ProjectError(stage="training", message="learner crashed")
    assert store.transition("p1", ProjectStatus.FAILED, error=error, now=160.0)
    after_fail = store.get("p1")
    assert not store.transition("p1", ProjectStatus.FAILED, error=ProjectError(stage="x", message="y"), now=170.0)
    assert store.get("p1") == after_fail


def test_final_statuses_are_final(store: ProjectStore) -> None:
    store.insert(make_project())
    assert store.transition("p1", ProjectStatus.DEPLOYING, now=110.0)
    error = ProjectError(stage="deploying", message="no nodes")
    assert store.transition("p1", ProjectStatus.FAILED, error=error, now=115.0)
    got = store.get("p1")
    assert got is not None and got.status == ProjectStatus.FAILED
    assert got.error == error
    assert got.stages["deploying"].duration_s == 5.0
    assert got.stages["failed"].started_at == got.stages["failed"].ended_at == 115.0
    for target in ProjectStatus:
        assert not store.transition("p1", target, now=200.0)
    assert store.get("p1") == got
    assert store.active() == []


@pytest.mark.parametrize("start", [ProjectStatus.SUBMITTED, ProjectStatus.BUILDING, ProjectStatus.POST_TRAINING])
@pytest.mark.parametrize("final", [ProjectStatus.FAILED, ProjectStatus.CANCELLED])
def test_failed_and_cancelled_reachable_from_every_active_status(
    store: ProjectStore, start: ProjectStatus, final: ProjectStatus
) -> None:
    store.insert(make_project())
    if start != ProjectStatus.SUBMITTED:
        assert store.transition("p1", start, now=110.0)
    assert store.transition("p1", final, now=120.0)
    got = store.get("p1")
    assert got is not None and got.status == final
    # completed comes after failed/cancelled in the order but a final status is never left
    assert not store.transition("p1", ProjectStatus.COMPLETED, now=130.0)


def test_transition_unknown_project(store: ProjectStore) -> None:
    assert not store.transition("nope", ProjectStatus.BUILDING)


def test_transition_races_apply_once(store: ProjectStore) -> None:
    store.insert(make_project())
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def fail() -> None:
        barrier.wait()
        results.append(store.transition("p1", ProjectStatus.FAILED))

    threads = [threading.Thread(target=fail) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]


def test_record_event_is_idempotent(store: ProjectStore) -> None:
    store.insert(make_project())
    assert store.record_event("p1", "ev-1", event("round_done", 1.0), {"model_name": "m1"})
    assert not store.record_event("p1", "ev-1", event("round_done", 2.0), {"model_name": "m2"})
    assert store.record_event("p1", "ev-2", event("training_done", 3.0))
    got = store.get("p1")
    assert got is not None
    assert [(e.event, e.time) for e in got.events] == [("round_done", 1.0), ("training_done", 3.0)]
    assert got.seen_event_ids == ["ev-1", "ev-2"]
    assert got.model_name == "m1"
    assert not store.record_event("nope", "ev-1", event())
    with pytest.raises(StoreError):
        store.record_event("p1", "ev-3", event(), {"status": "completed"})


def test_record_event_keeps_only_recent_ids(store: ProjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MAX_SEEN_EVENT_IDS", 3)
    store.insert(make_project())
    for index in range(5):
        assert store.record_event("p1", f"ev-{index}", event(at=float(index)))
    got = store.get("p1")
    assert got is not None
    assert got.seen_event_ids == ["ev-2", "ev-3", "ev-4"]
    assert len(got.events) == 5


def test_record_event_races_apply_once(store: ProjectStore) -> None:
    store.insert(make_project())
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def deliver(index: int) -> None:
        barrier.wait()
        results.append(store.record_event("p1", "same", event(at=float(index))))
        results.append(store.record_event("p1", f"own-{index}", event(at=float(index))))

    threads = [threading.Thread(target=deliver, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 9
    got = store.get("p1")
    assert got is not None
    assert len(got.events) == 9 and sorted(got.seen_event_ids).count("same") == 1


def test_delete_all_keeps_tokens(store: ProjectStore) -> None:
    store.insert(make_project("a"))
    store.insert(make_project("b"))
    store.put_token({"token_id": "t1", "token_hash": "h1", "customer_id": "c", "role": "customer"})
    assert store.delete_all() == 2
    assert store.list() == [] and store.get("a") is None
    assert store.find_token("h1") is not None


def test_tokens_crud(store: ProjectStore) -> None:
    store.put_token({"token_id": "t1", "token_hash": "h1", "customer_id": "c1", "role": "customer", "created_at": 1})
    store.put_token({"token_id": "t2", "token_hash": "h2", "customer_id": "c2", "role": "customer", "created_at": 2})
    store.put_token({"token_id": "t1", "token_hash": "h1", "customer_id": "c1", "role": "customer", "created_at": 1})
    assert store.find_token("h1") == {
        "token_id": "t1",
        "token_hash": "h1",
        "customer_id": "c1",
        "role": "customer",
        "created_at": 1,
    }
    assert store.find_token("nope") is None
    assert [doc["token_id"] for doc in store.list_tokens()] == ["t1", "t2"]
    assert store.delete_token("t1")
    assert not store.delete_token("t1")
    assert store.find_token("h1") is None
    with pytest.raises(StoreError):
        store.put_token({"token_id": "t3"})


def test_embedded_store_persists_across_reopen(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    first = open_store(None, data_dir)
    first.insert(make_project("p1", created_at=1.0))
    first.insert(make_project("p2", created_at=2.0))
    assert first.transition("p1", ProjectStatus.BUILDING, now=5.0)
    assert first.record_event("p1", "ev-1", event(), {"tracking_url": "http://t"})
    first.put_token({"token_id": "t1", "token_hash": "h1", "customer_id": "c", "role": "customer"})
    first.close()

    with open_store(None, data_dir) as second:
        got = second.get("p1")
        assert got is not None
        assert got.status == ProjectStatus.BUILDING and got.tracking_url == "http://t"
        assert got.stages["submitted"].duration_s == 4.0
        assert [p.project_id for p in second.active()] == ["p2", "p1"]
        assert not second.record_event("p1", "ev-1", event())
        assert second.find_token("h1") is not None


def test_a_fresh_embedded_store_answers_reads_and_resets_before_its_first_project(tmp_path: Path) -> None:
    """montydb makes a collection's table with its first document: a new manager must not answer 500 before it."""
    store = open_store(None, tmp_path / "fresh")
    try:
        assert store.list() == [] and store.get("nope") is None and store.find_token("nope") is None
        assert store.delete_all() == 0
    finally:
        store.close()
