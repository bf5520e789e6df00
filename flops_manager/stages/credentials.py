"""The MQTT environment each deployed actor gets, and its revocation: one broker user per actor.

Stages call `actor_mqtt_env` where they build an actor's `ServiceSpec` (builder, aggregator,
each learner) and `revoke_services` / `revoke_project` when actors or the project end. The
issuer lives in the controller's `ManagerContext`; a manager whose broker takes no
credentials (`FLOPS_MQTT_USERNAME` unset: an open loopback broker, as in unit tests) hands
out the broker's address only.
"""

import logging
from dataclasses import dataclass
from typing import Any

from flops.events import Component
from flops.mqtt_acl import actor_username
from flops_manager.credentials import ActorCredentials, CredentialError
from flops_manager.stages.context import StageContext
from flops_manager.stages.errors import StageError

log = logging.getLogger("flops.manager")
LEARNER_PREFIX = "learner-"


@dataclass
class ManagerContext(StageContext):
    """The stage context with the issuer of per-actor MQTT users (None: the broker takes no credentials)."""

    credentials: ActorCredentials | None = None


def issuer(ctx: StageContext) -> ActorCredentials | None:
    return ctx.credentials if isinstance(ctx, ManagerContext) else None


def actor_mqtt_env(
    ctx: StageContext, project_id: str, component: Component, name: str | None = None, *, stage: str = ""
) -> dict[str, str]:
    """The FLOPS_MQTT_* variables of one actor: the broker, and a user of its own (new password)."""
    broker = ctx.settings.mqtt
    base = {"FLOPS_MQTT_HOST": broker.host, "FLOPS_MQTT_PORT": str(broker.port)}
    if broker.ca_file:
        base["FLOPS_MQTT_CA_FILE"] = broker.ca_file
    credentials = issuer(ctx)
    if credentials is None:
        if broker.username:
            log.warning("%s %s of %s gets no MQTT user: this manager has no issuer; its events will be refused",
                        component, name or "", project_id)  # fmt: skip
        return base
    try:
        return {**base, **credentials.issue(project_id, component, name).env(same_filesystem=False)}
    except CredentialError as error:
        raise StageError(stage or str(component), f"{error}") from error


def service_username(project_id: str, service: str) -> str | None:
    """The MQTT user of the project's service called `service` (None: the service has none)."""
    if service == Component.BUILDER.value:
        return actor_username(project_id, Component.BUILDER)
    if service == Component.AGGREGATOR.value:
        return actor_username(project_id, Component.AGGREGATOR)
    if service.startswith(LEARNER_PREFIX):
        return actor_username(project_id, Component.LEARNER, service.removeprefix(LEARNER_PREFIX))
    return None


def revoke_services(ctx: StageContext, project_id: str, services: list[str]) -> None:
    """Delete the users of these services (their actors are gone); a broker away is only logged."""
    credentials = issuer(ctx)
    names = [n for n in (service_username(project_id, s) for s in services) if n]
    if credentials is None or not names:
        return
    try:
        credentials.revoke(names)
    except (CredentialError, ConnectionError) as error:
        log.warning("revoking the MQTT users of %s (%s): %s", project_id, ", ".join(names), error)


def revoke_project(ctx: StageContext, project_id: str) -> None:
    """Delete every MQTT user of the project (it ended); a broker away is only logged."""
    credentials = issuer(ctx)
    if credentials is None:
        return
    try:
        credentials.revoke_project(project_id)
    except (CredentialError, ConnectionError) as error:
        log.warning("revoking the MQTT users of %s: %s", project_id, error)


def spec_env_without_secrets(env: dict[str, str]) -> dict[str, Any]:
    """An actor's environment as it may be kept on disk: without its MQTT password (issued anew)."""
    return {key: value for key, value in env.items() if key != "FLOPS_MQTT_PASSWORD"}
