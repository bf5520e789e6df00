"""The project store: projects and API tokens in MongoDB, or in an embedded MongoDB on disk.

One repository class, `ProjectStore`, speaks the pymongo API to a `Database`. `open_store` hands it
either a real MongoDB database (`FLOPS_MONGO_URI`, for several managers or a hosted deployment) or a
montydb database kept in SQLite under the manager's data directory (one manager on one machine,
nothing to install or run). Both run exactly the same queries, so what the tests prove on the
embedded store holds for MongoDB too; only operators both implement are used ($set, $push with
$each/$slice, $ne, $in, find_one_and_update).

Concurrency: on MongoDB every write that must not be lost or doubled is a single conditional
update (compare-and-set on `status`, or "event id not yet seen"), which the server applies
atomically. montydb applies an update as read-modify-write in Python and shares one SQLite
connection slot per storage object, so for the embedded store every call is also serialised by a
process-wide lock; the embedded store is meant for one manager process per data directory.
"""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Literal

from flops_manager.models import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    STATUS_ORDER,
    EventRecord,
    Project,
    ProjectError,
    ProjectStatus,
)

DATABASE_NAME = "flops"
PROJECTS = "projects"
TOKENS = "tokens"
# How many processed event ids a project remembers for de-duplication. Events are redelivered
# shortly after they were first sent, so the most recent ones are all that is needed.
MAX_SEEN_EVENT_IDS = 500
# Fields only `transition` and `record_event` may write: a plain update would skip the
# compare-and-set that keeps the lifecycle moving forward and events counted once.
_GUARDED_FIELDS = frozenset({"_id", "project_id", "status", "stages", "events", "seen_event_ids"})
# Statuses reachable from every active status, whatever the order says.
_ALWAYS_REACHABLE = (ProjectStatus.FAILED, ProjectStatus.CANCELLED)


class StoreError(Exception):
    """A request the store refuses, e.g. a project id that is already taken."""


class DuplicateProjectError(StoreError):
    """`insert` was given a project id that already exists."""

    def __init__(self, project_id: str) -> None:
        super().__init__(f"project {project_id!r} already exists")
        self.project_id = project_id


def _is_duplicate_key(error: Exception) -> bool:
    """pymongo and montydb each raise their own DuplicateKeyError; recognise both."""
    return type(error).__name__ == "DuplicateKeyError"


def _to_project(doc: dict[str, Any] | None) -> Project | None:
    if doc is None:
        return None
    doc = dict(doc)
    doc.pop("_id", None)
    return Project.model_validate(doc)


def transition_allowed(current: ProjectStatus, to: ProjectStatus) -> bool:
    """Whether the lifecycle may move from `current` to `to`.

    Only forward, only out of an active status, and failing or cancelling from any active status:
    events arrive late and twice, and none of them may move a project backwards or revive it.
    """
    if current not in ACTIVE_STATUSES or to == current:
        return False
    return to in _ALWAYS_REACHABLE or STATUS_ORDER[to] > STATUS_ORDER[current]


class ProjectStore:
    """Projects and tokens over a pymongo-compatible `Database` (pymongo or montydb).

    `database` is typed `Any` because pymongo's and montydb's database classes share an API but
    no base class.
    """

    def __init__(self, database: Any, client: Any = None, *, serialize: bool = False) -> None:
        """Wrap `database`; `client` is closed by `close()`; `serialize` locks every call (montydb)."""
        self._db = database
        self._client = client
        self._projects = database[PROJECTS]
        self._tokens = database[TOKENS]
        self._lock: AbstractContextManager[Any] = threading.RLock() if serialize else nullcontext()

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the client connection (and, for montydb, the SQLite files) if the store owns it."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> ProjectStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- projects --------------------------------------------------------------------------------

    def insert(self, project: Project) -> None:
        """Store a new project; raise `DuplicateProjectError` if its id is taken.

        The stage the project starts in is opened at `created_at` when the caller did not open it,
        so every status the project passes through has a timing.
        """
        doc = project.model_dump(mode="json")
        doc["stages"].setdefault(project.status.value, {"started_at": project.created_at, "ended_at": None})
        doc["_id"] = project.project_id
        with self._lock:
            try:
                self._projects.insert_one(doc)
            except Exception as error:
                if _is_duplicate_key(error):
                    raise DuplicateProjectError(project.project_id) from error
                raise

    def get(self, project_id: str) -> Project | None:
        """The project with this id, or None."""
        with self._lock:
            return _to_project(self._projects.find_one({"_id": project_id}))

    def list(
        self, customer_id: str | None = None, statuses: Sequence[ProjectStatus] | None = None
    ) -> builtins.list[Project]:
        """Projects, newest first, optionally only one customer's and/or only some statuses."""
        query: dict[str, Any] = {}
        if customer_id is not None:
            query["customer_id"] = customer_id
        if statuses is not None:
            query["status"] = {"$in": [ProjectStatus(status).value for status in statuses]}
        with self._lock:
            docs = builtins.list(self._projects.find(query).sort("created_at", -1))
        return [project for project in map(_to_project, docs) if project is not None]

    def active(self) -> builtins.list[Project]:
        """Projects still in flight: what the reconcile loop and a restarted manager pick up."""
        return self.list(statuses=ACTIVE_STATUSES)

    def update(self, project_id: str, changes: dict[str, Any]) -> Project | None:
        """$set top-level fields (values already JSON-able) and `updated_at`; the project after, or None.

        Status, stages, events and ids are refused here: they change only through `transition` and
        `record_event`, which carry the guards that keep them consistent.
        """
        guarded = _GUARDED_FIELDS.intersection(changes)
        if guarded:
            raise StoreError(f"update() cannot change {sorted(guarded)}; use transition()/record_event()")
        if any("." in key or key.startswith("$") for key in changes):
            raise StoreError("update() takes top-level field names only")
        fields = {"updated_at": time.time(), **changes}
        with self._lock:
            doc = self._projects.find_one_and_update({"_id": project_id}, {"$set": fields}, return_document=True)
        return _to_project(doc)

    def set_desired(self, project_id: str, desired: Literal["running", "cancelled"]) -> Project | None:
        """Record what the user wants (run or cancel); the reconcile loop acts on it."""
        if desired not in ("running", "cancelled"):
            raise StoreError(f"desired must be 'running' or 'cancelled', not {desired!r}")
        return self.update(project_id, {"desired": desired})

    def transition(
        self,
        project_id: str,
        to: ProjectStatus,
        *,
        error: ProjectError | None = None,
        now: float | None = None,
    ) -> bool:
        """Move the project's status forward; False (and nothing changed) if not allowed.

        A compare-and-set on the status read just before: if someone else moved the project in
        between, the update matches nothing and the move is re-judged against the new status.
        Each lost race means the status moved forward, so this ends after a few rounds at most.
        Closes the current stage's timing, opens the new one (closed at once for final statuses)
        and records `error` if given. Calling it twice with the same target changes nothing the
        second time, because the project is no longer in a status the target can be reached from.
        """
        to = ProjectStatus(to)
        for _ in range(len(ProjectStatus) + 1):
            with self._lock:
                doc = self._projects.find_one({"_id": project_id})
                if doc is None:
                    return False
                current = ProjectStatus(doc["status"])
                if not transition_allowed(current, to):
                    return False
                at = time.time() if now is None else now
                fields: dict[str, Any] = {
                    "status": to.value,
                    "updated_at": at,
                    f"stages.{to.value}": {
                        "started_at": at,
                        "ended_at": at if to in FINAL_STATUSES else None,
                    },
                }
                if current.value in (doc.get("stages") or {}):
                    fields[f"stages.{current.value}.ended_at"] = at
                else:  # a stage nobody opened: give it a start so its timing stays valid
                    started = min(float(doc.get("updated_at", at)), at)
                    fields[f"stages.{current.value}"] = {"started_at": started, "ended_at": at}
                if error is not None:
                    fields["error"] = error.model_dump(mode="json")
                result = self._projects.update_one({"_id": project_id, "status": current.value}, {"$set": fields})
                if result.matched_count == 1:
                    return True
        return False

    def record_event(
        self,
        project_id: str,
        event_id: str,
        record: EventRecord,
        changes: dict[str, Any] | None = None,
    ) -> bool:
        """Apply an event exactly once: append `record`, remember `event_id`, $set `changes`.

        Returns False and changes nothing if `event_id` was already seen (a redelivery) or the
        project does not exist. The "not yet seen" test is part of the update's filter, so on
        MongoDB two deliveries racing each other cannot both apply. Only the last
        MAX_SEEN_EVENT_IDS ids are kept ($push with $each/$slice, which montydb implements too).
        """
        changes = dict(changes or {})
        guarded = _GUARDED_FIELDS.intersection(changes)
        if guarded:
            raise StoreError(f"record_event() cannot $set {sorted(guarded)}; use transition()")
        fields = {"updated_at": time.time(), **changes}
        update = {
            "$push": {
                "events": record.model_dump(mode="json"),
                "seen_event_ids": {"$each": [event_id], "$slice": -MAX_SEEN_EVENT_IDS},
            },
            "$set": fields,
        }
        with self._lock:
            result = self._projects.update_one({"_id": project_id, "seen_event_ids": {"$ne": event_id}}, update)
        return bool(result.matched_count == 1)

    def delete_all(self) -> int:
        """Admin reset: forget every project (tokens stay, so the admin keeps access). Returns how many."""
        with self._lock:
            return int(self._projects.delete_many({}).deleted_count)

    # -- tokens ----------------------------------------------------------------------------------

    def put_token(self, doc: dict[str, Any]) -> None:
        """Store (or replace) a token record, keyed by its `token_hash` so a hash is stored once."""
        if not doc.get("token_hash") or not doc.get("token_id"):
            raise StoreError("a token record needs token_hash and token_id")
        # _id goes in the replacement too: on an upsert MongoDB takes it from the filter, but
        # montydb would otherwise insert the record under a fresh ObjectId.
        record = {**doc, "_id": doc["token_hash"]}
        with self._lock:
            self._tokens.replace_one({"_id": record["_id"]}, record, upsert=True)

    def find_token(self, token_hash: str) -> dict[str, Any] | None:
        """The token record with this hash, or None."""
        with self._lock:
            doc = self._tokens.find_one({"_id": token_hash})
        if doc is None:
            return None
        doc = dict(doc)
        doc.pop("_id", None)
        return doc

    def list_tokens(self) -> builtins.list[dict[str, Any]]:
        """Every token record, oldest first (hashes included; callers decide what to show)."""
        with self._lock:
            docs = builtins.list(self._tokens.find({}).sort("created_at", 1))
        for doc in docs:
            doc.pop("_id", None)
        return docs

    def delete_token(self, token_id: str) -> bool:
        """Revoke a token by its public id; False if there was none."""
        with self._lock:
            return bool(self._tokens.delete_many({"token_id": token_id}).deleted_count > 0)


STORE_PLACEHOLDER = "flops-store-placeholder"


def open_store(mongo_uri: str | None, data_dir: Path, *, database_name: str = DATABASE_NAME) -> ProjectStore:
    """The store FLOps runs on: MongoDB at `mongo_uri` if given, else montydb/SQLite in `data_dir`.

    The embedded store needs no server, so `flops up` works on a bare machine; MongoDB is for
    deployments that want a shared, managed database.
    """
    if mongo_uri:
        import pymongo

        client: Any = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=10_000)
        return ProjectStore(client[database_name], client)

    import montydb

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    montydb.set_storage(str(data_dir), storage="sqlite")
    client = montydb.MontyClient(str(data_dir))
    database = client[database_name]
    for name in (PROJECTS, TOKENS):
        # montydb's SQLite table appears with a collection's first document: before it, every
        # read or delete fails ("no such table"). One placeholder, written and removed, makes it.
        database[name].replace_one({"_id": STORE_PLACEHOLDER}, {"_id": STORE_PLACEHOLDER}, upsert=True)
        database[name].delete_one({"_id": STORE_PLACEHOLDER})
    return ProjectStore(database, client, serialize=True)
