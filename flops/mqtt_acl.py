"""Who may publish and read what on the broker: the manager, and one MQTT user per actor.

- The manager is `MANAGER_USER`, its password in the stack's 0600 file. It reads every
  project's events (subscribe `flops/projects/#`), administers the broker's users over
  `$CONTROL/dynamic-security/v1`, and publishes nothing under `flops/projects`.
- Each actor (builder, aggregator, each learner) is `<project_id>.<component>[.<name>]`, e.g.
  `3f2a9c1b0d4e.learner.node-1`, with a random password, bound to the client id equal to its
  username. It may only PUBLISH `flops/projects/<project_id>/<component>/+`: nothing of
  another project, nothing of another component, no subscription, no delivery.

Both brokers `flops up` starts enforce this the same way: Mosquitto through its
dynamic-security plugin, the embedded amqtt broker (`flops.embedded_broker`) through the
subset of the same `$CONTROL/dynamic-security/v1` commands FLOps uses, reading and writing
the same JSON file format (PBKDF2-SHA512 hashes, never a plain password). The manager creates
and deletes actor users with those commands (`flops_manager.credentials`).
"""

import base64
import hashlib
import hmac
import re
import secrets
from typing import Any

from flops.events import TOPIC_ROOT, Component

MANAGER_USER = "flops"
MANAGER_ROLE = "flops-manager"
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
CONTROL_RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
# Mosquitto hashes users made over $CONTROL with 101 iterations; the hashes FLOps writes use more.
HASH_ITERATIONS = 20_000
SALT_BYTES = 12
_SEGMENT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
ACTOR_COMPONENTS = tuple(component.value for component in Component)


class IdentityError(ValueError):
    """A project id, component or actor name that cannot be part of an MQTT identity."""


def _segment(kind: str, value: str, pattern: re.Pattern[str] = _SEGMENT) -> str:
    if not pattern.match(value):
        raise IdentityError(f"{kind} {value!r} cannot name an MQTT identity: use letters, digits, '-' and '_'")
    return value


def actor_username(project_id: str, component: Component | str, name: str | None = None) -> str:
    """The MQTT user of one actor of one project: `<project_id>.<component>[.<name>]`."""
    component = str(component)
    if component not in ACTOR_COMPONENTS:
        raise IdentityError(f"{component!r} is not a FLOps component ({', '.join(ACTOR_COMPONENTS)})")
    parts = [_segment("project id", project_id), component]
    if name:
        parts.append(_segment("actor name", name, _NAME))
    return ".".join(parts)


def project_prefix(project_id: str) -> str:
    """What every actor user of the project starts with."""
    return f"{_segment('project id', project_id)}."


def actor_publish_topic(project_id: str, component: Component | str) -> str:
    """The one topic filter an actor may publish to: its project's, its component's events."""
    return f"{TOPIC_ROOT}/{_segment('project id', project_id)}/{component}/+"


def acl(acltype: str, topic: str, allow: bool = True) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "priority": 0, "allow": allow}


def actor_role(username: str, project_id: str, component: Component | str) -> dict[str, Any]:
    """The dynamic-security role of one actor (one role per actor user, of the same name)."""
    return {"rolename": username, "acls": [acl("publishClientSend", actor_publish_topic(project_id, component))]}


def manager_role() -> dict[str, Any]:
    events = f"{TOPIC_ROOT}/#"
    return {
        "rolename": MANAGER_ROLE,
        "acls": [
            acl("subscribePattern", events),
            acl("publishClientReceive", events),
            acl("publishClientSend", CONTROL_TOPIC),
            acl("subscribePattern", CONTROL_RESPONSE_TOPIC),
            acl("publishClientReceive", CONTROL_RESPONSE_TOPIC),
            acl("unsubscribePattern", "#"),
        ],
    }


# Nothing is allowed that a role does not allow (Mosquitto's default lets everyone receive).
DEFAULT_ACL_ACCESS = {
    "publishClientSend": False,
    "publishClientReceive": False,
    "subscribe": False,
    "unsubscribe": True,
}


def hash_password(password: str, iterations: int = HASH_ITERATIONS, salt: bytes | None = None) -> dict[str, Any]:
    """A dynamic-security client's password fields: PBKDF2-HMAC-SHA512, base64 hash and salt."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return {
        "password": base64.b64encode(digest).decode("ascii"),
        "salt": base64.b64encode(salt).decode("ascii"),
        "iterations": iterations,
    }


def password_matches(client: dict[str, Any], password: str) -> bool:
    """Whether `password` is the one a dynamic-security client entry holds the hash of (constant time)."""
    try:
        salt = base64.b64decode(client["salt"])
        expected = base64.b64decode(client["password"])
        iterations = int(client["iterations"])
    except (KeyError, ValueError, TypeError):
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return hmac.compare_digest(digest, expected)


def manager_client(password: str) -> dict[str, Any]:
    return {
        "username": MANAGER_USER,
        "textName": "FLOps manager",
        **hash_password(password),
        "roles": [{"rolename": MANAGER_ROLE}],
    }


def with_manager(config: dict[str, Any] | None, password: str) -> dict[str, Any]:
    """A dynamic-security configuration whose manager user has `password` and the manager's role.

    Actor users and roles already in `config` stay (a restarted broker keeps them); the
    manager's entries and the default access are rewritten, so a changed password file wins.
    """
    config = dict(config or {})
    clients = [c for c in config.get("clients", []) if c.get("username") != MANAGER_USER]
    roles = [r for r in config.get("roles", []) if r.get("rolename") != MANAGER_ROLE]
    config["clients"] = [manager_client(password), *clients]
    config["roles"] = [manager_role(), *roles]
    config.setdefault("groups", [])
    config["defaultACLAccess"] = dict(DEFAULT_ACL_ACCESS)
    return config


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic matching: whether `topic` (no wildcards) matches `topic_filter` (+ and #)."""
    if topic.startswith("$") != topic_filter.startswith("$"):
        return False  # [MQTT-4.7.2-1]: wildcards at the start never match $-topics
    filter_levels, levels = topic_filter.split("/"), topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return index == len(filter_levels) - 1
        if index >= len(levels) or (level != "+" and level != levels[index]):
            return False
    return len(filter_levels) == len(levels)


def filter_covered(acl_filter: str, subscription: str) -> bool:
    """Whether every topic `subscription` (a filter) can match is matched by `acl_filter`."""
    if subscription.startswith("$") != acl_filter.startswith("$"):
        return False
    acl_levels, levels = acl_filter.split("/"), subscription.split("/")
    for index, level in enumerate(acl_levels):
        if level == "#":
            return index == len(acl_levels) - 1
        if index >= len(levels):
            return False
        if level == "+":
            if levels[index] == "#":
                return False
            continue
        if level != levels[index]:
            return False
    return len(acl_levels) == len(levels)
