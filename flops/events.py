"""Events between FLOps components: MQTT topics and validated payloads.

Topic: `flops/projects/<project_id>/<component>/<event>`, QoS 1. Every body is an `Event`
envelope with a schema version and a unique id, so a consumer can drop a duplicate delivery
(QoS 1 is at-least-once) and refuse a body from a future schema it cannot read.
"""

import time
import uuid
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
TOPIC_ROOT = "flops/projects"


class Component(StrEnum):
    BUILDER = "builder"
    AGGREGATOR = "aggregator"
    LEARNER = "learner"
    POST_TRAINING = "post_training"


class EventName(StrEnum):
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROUND = "round"
    JOINED = "joined"


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    project_id: str
    component: Component
    event: EventName
    time: float = Field(default_factory=time.time)
    error: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)

    @property
    def topic(self) -> str:
        return topic(self.project_id, self.component, self.event)


def topic(project_id: str, component: Component | str, event: EventName | str) -> str:
    return f"{TOPIC_ROOT}/{project_id}/{component}/{event}"


def all_projects_filter() -> str:
    """Subscription filter matching every project's events."""
    return f"{TOPIC_ROOT}/+/+/+"


class EventSchemaError(ValueError):
    """A body that is not a readable FLOps event."""


def decode_event(topic_name: str, body: bytes) -> Event:
    """Validate a received body against its topic; raise `EventSchemaError` if it does not fit."""
    try:
        event = Event.model_validate_json(body)
    except ValueError as error:
        raise EventSchemaError(f"{topic_name}: invalid event body: {error}") from error
    if event.schema_version > SCHEMA_VERSION:
        raise EventSchemaError(f"{topic_name}: schema version {event.schema_version} is newer than ours")
    if event.topic != topic_name:
        raise EventSchemaError(f"{topic_name}: body belongs to {event.topic}")
    return event
