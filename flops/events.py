"""Events between FLOps components: MQTT topics and validated payloads.

Topic: `flops/projects/<project_id>/<component>/<event>`, QoS 1. Every body is an `Event`
envelope with a schema version and a unique id, so a consumer can drop a duplicate delivery
(QoS 1 is at-least-once) and refuse a body from a future schema it cannot read.

Each (component, event) pair has one payload model, listed in `PAYLOADS`: publishers build
events with `make_event(project_id, component, event, payload)`, consumers read
`event.typed_payload()`. `decode_event` refuses a body whose payload does not fit its model,
and a body whose project, component or event is not its topic's (`EventSenderMismatch`): the
broker lets each actor publish only its own project's, its own component's topic
(`flops.mqtt_acl`), so an envelope that claims another is forged.
"""

import time
import uuid
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flops.build import BuildResult
from flops.training import RoundReport, TrainingSummary

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


class BuilderStarted(BaseModel):
    """builder/started: which repository and reference the build fetches."""

    repo_url: str
    ref: str | None = None


class BuilderFailed(BaseModel):
    """builder/failed: the stage that failed; the envelope's `error` holds the whole reason.

    `transient` as in `flops.build.BuildFailure`: worth building again later.
    """

    stage: str
    transient: bool = False


class AggregatorStarted(BaseModel):
    """aggregator/started: training began with this many learners joined."""

    learners: int = 0


class AggregatorFinished(BaseModel):
    """aggregator/succeeded and aggregator/failed: the training's summary (its `status` says which)."""

    summary: TrainingSummary


class LearnerReport(BaseModel):
    """learner/joined and learner/failed: which node; a failure's reason is the envelope's `error`."""

    node: str


PAYLOADS: dict[tuple["Component", "EventName"], type[BaseModel]] = {
    (Component.BUILDER, EventName.STARTED): BuilderStarted,
    (Component.BUILDER, EventName.SUCCEEDED): BuildResult,
    (Component.BUILDER, EventName.FAILED): BuilderFailed,
    (Component.AGGREGATOR, EventName.STARTED): AggregatorStarted,
    (Component.AGGREGATOR, EventName.ROUND): RoundReport,
    (Component.AGGREGATOR, EventName.SUCCEEDED): AggregatorFinished,
    (Component.AGGREGATOR, EventName.FAILED): AggregatorFinished,
    (Component.LEARNER, EventName.JOINED): LearnerReport,
    (Component.LEARNER, EventName.FAILED): LearnerReport,
}


def payload_model(component: "Component", event: "EventName") -> type[BaseModel]:
    """The payload model of (component, event); KeyError names a pair no component publishes."""
    try:
        return PAYLOADS[(component, event)]
    except KeyError:
        raise KeyError(f"no event {component}/{event} is defined") from None


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

    def typed_payload(self) -> Any:
        """The payload as its (component, event) model; raises ValidationError if it does not fit."""
        return payload_model(self.component, self.event).model_validate(self.payload)


def make_event(
    project_id: str, component: Component, event: EventName, payload: BaseModel, error: str | None = None
) -> Event:
    """An event whose payload is the model `PAYLOADS` names for (component, event)."""
    expected = payload_model(component, event)
    if not isinstance(payload, expected):
        raise TypeError(f"{component}/{event} carries a {expected.__name__}, not a {type(payload).__name__}")
    return Event(
        project_id=project_id,
        component=component,
        event=event,
        error=error,
        payload=payload.model_dump(mode="json"),
    )


def topic(project_id: str, component: Component | str, event: EventName | str) -> str:
    return f"{TOPIC_ROOT}/{project_id}/{component}/{event}"


def all_projects_filter() -> str:
    """Subscription filter matching every project's events."""
    return f"{TOPIC_ROOT}/+/+/+"


class EventSchemaError(ValueError):
    """A body that is not a readable FLOps event."""


class EventSenderMismatch(EventSchemaError):
    """A body that claims another project, component or event than the topic it came on (forged)."""


def decode_event(topic_name: str, body: bytes) -> Event:
    """Validate a received body against its topic; raise `EventSchemaError` if it does not fit."""
    try:
        event = Event.model_validate_json(body)
    except ValueError as error:
        raise EventSchemaError(f"{topic_name}: invalid event body: {error}") from error
    if event.schema_version > SCHEMA_VERSION:
        raise EventSchemaError(f"{topic_name}: schema version {event.schema_version} is newer than ours")
    if event.topic != topic_name:
        raise EventSenderMismatch(
            f"refused a forged event on {topic_name}: its body says {event.topic} (project {event.project_id}, "
            f"{event.component.value}); only that topic's actor may send it"
        )
    try:
        event.typed_payload()
    except KeyError as error:
        raise EventSchemaError(f"{topic_name}: {error.args[0]}") from error
    except ValidationError as error:
        raise EventSchemaError(f"{topic_name}: invalid payload: {error}") from error
    return event
