"""Progress of one training as a stream of small JSON events.

The aggregator appends them to a JSON-lines file beside its state; `flops train` follows
that file to draw live progress, and the manager turns them into its own events.
"""

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from flops.training import RoundReport, TrainingSummary

PROGRESS_FILE = "progress.jsonl"
SUMMARY_FILE = "summary.json"


class ProgressEvent(BaseModel):
    kind: Literal["waiting", "started", "round", "model", "finished"]
    time: float = Field(default_factory=time.time)
    message: str = ""
    round: RoundReport | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class ProgressLog:
    """Appends events to `state_dir/progress.jsonl`, passes them on, writes the summary.

    `forward` (e.g. an MQTT publisher) sees every event after it is on disk; a failure
    there is logged, never fatal: the file stays the record of truth.
    """

    def __init__(self, state_dir: Path, forward: Callable[[ProgressEvent], None] | None = None) -> None:
        self.state_dir = state_dir
        self.forward = forward
        state_dir.mkdir(parents=True, exist_ok=True)

    @property
    def path(self) -> Path:
        return self.state_dir / PROGRESS_FILE

    def emit(self, event: ProgressEvent) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(event.model_dump_json() + "\n")
        if self.forward is not None:
            try:
                self.forward(event)
            except Exception as error:
                print(f"flops: could not forward {event.kind} event: {error}", flush=True)

    def write_summary(self, summary: TrainingSummary) -> None:
        target = self.state_dir / SUMMARY_FILE
        partial = target.with_suffix(".tmp")
        partial.write_text(summary.model_dump_json(indent=2), encoding="utf-8")
        partial.replace(target)


def read_summary(state_dir: Path) -> TrainingSummary | None:
    path = state_dir / SUMMARY_FILE
    if not path.is_file():
        return None
    return TrainingSummary.model_validate_json(path.read_text(encoding="utf-8"))


class ProgressFollower:
    """Reads events appended to a progress file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def new_events(self) -> list[ProgressEvent]:
        if not self.path.is_file():
            return []
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
        complete, _, _ = chunk.rpartition(b"\n")
        if not complete:
            return []
        self._offset += len(complete) + 1
        return [
            ProgressEvent.model_validate(json.loads(line)) for line in complete.decode("utf-8").splitlines() if line
        ]
