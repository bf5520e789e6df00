"""Per-actor MQTT users: the manager makes one for each actor it deploys and deletes it at the end.

The broker is told over its dynamic-security API (`$CONTROL/dynamic-security/v1`, see
`flops.mqtt_acl`), which Mosquitto's plugin and the embedded broker both answer; the manager's
own user is the only one whose role may publish there. An actor's password is random, made
here for each deployment (a restarted learner gets a new one), handed to that actor alone
through its service's environment and never stored by the manager: the broker keeps only its
hash. Deleting a user disconnects its clients at once.
"""

import json
import logging
import secrets
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt

from flops.events import Component
from flops.mqtt import MqttSettings, make_client
from flops.mqtt_acl import (
    CONTROL_RESPONSE_TOPIC,
    CONTROL_TOPIC,
    actor_role,
    actor_username,
    project_prefix,
)

log = logging.getLogger("flops.manager")
ADMIN_CLIENT_ID = "flops-manager-admin"
CONTROL_TIMEOUT_S = 10.0
ENABLE_HINT = (
    "the broker must run Mosquitto's dynamic-security plugin (or be the embedded broker `flops up` starts) "
    "and FLOPS_MQTT_USERNAME must be its admin user; see docs/security.md"
)


class CredentialError(RuntimeError):
    """The broker refused a user command: the message says which and why."""


class BrokerUnavailable(ConnectionError):
    """The broker did not answer the control API in time (transient: retried with backoff)."""


class BrokerAdmin:
    """The manager's control connection: dynamic-security commands, answered in order, one batch at a time."""

    def __init__(self, settings: MqttSettings, timeout_s: float = CONTROL_TIMEOUT_S) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._responses: dict[str, dict[str, Any]] = {}
        self._answered = threading.Condition()
        self._client = make_client(settings, client_id=ADMIN_CLIENT_ID)
        self._client.on_connect = self._handle_connect
        self._client.on_subscribe = lambda *_args: self._ready.set()
        self._client.on_disconnect = lambda *_args: self._ready.clear()
        self._client.on_message = self._handle_message
        self._client.connect_async(settings.host, settings.port, keepalive=30)
        self._client.loop_start()

    def _handle_connect(self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object = None) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("the broker refused the manager's control connection: %s", reason)
            return
        client.subscribe(CONTROL_RESPONSE_TOPIC, qos=1)

    def _handle_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        try:
            responses = json.loads(message.payload)["responses"]
        except (ValueError, KeyError, TypeError):
            return
        with self._answered:
            for response in responses:
                if isinstance(response, dict) and isinstance(response.get("correlationData"), str):
                    self._responses[response["correlationData"]] = response
            self._answered.notify_all()

    def run(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send `commands` as one batch; their responses in the same order (`error` where one failed)."""
        with self._lock:
            if not self._ready.wait(self.timeout_s):
                raise BrokerUnavailable(
                    f"no answer from the MQTT broker at {self.settings.host}:{self.settings.port} to the "
                    f"manager's control connection within {self.timeout_s:.0f} s: {ENABLE_HINT}"
                )
            ids = [uuid.uuid4().hex for _ in commands]
            batch = [{**command, "correlationData": id_} for command, id_ in zip(commands, ids, strict=True)]
            self._client.publish(CONTROL_TOPIC, json.dumps({"commands": batch}), qos=1)
            deadline = time.monotonic() + self.timeout_s
            with self._answered:
                while not all(id_ in self._responses for id_ in ids):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise BrokerUnavailable(
                            f"the MQTT broker did not answer {', '.join(c['command'] for c in commands)} "
                            f"within {self.timeout_s:.0f} s: {ENABLE_HINT}"
                        )
                    self._answered.wait(left)
                return [self._responses.pop(id_) for id_ in ids]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class ActorCredentials:
    """Issues and revokes the MQTT users of a project's actors (connects on first use)."""

    def __init__(self, settings: MqttSettings) -> None:
        self.settings = settings
        self._admin: BrokerAdmin | None = None
        self._lock = threading.Lock()

    @property
    def admin(self) -> BrokerAdmin:
        with self._lock:
            if self._admin is None:
                self._admin = BrokerAdmin(self.settings)
            return self._admin

    def issue(self, project_id: str, component: Component | str, name: str | None = None) -> MqttSettings:
        """A new user (new password) for one actor; the settings to hand that actor alone.

        An older user of the same name (a restarted actor's) is deleted first, which
        disconnects whatever still used it.
        """
        username = actor_username(project_id, component, name)
        password = secrets.token_urlsafe(24)
        role = actor_role(username, project_id, component)
        responses = self.admin.run(
            [
                {"command": "deleteClient", "username": username},
                {"command": "deleteRole", "rolename": username},
                {"command": "createRole", **role},
                {
                    "command": "createClient",
                    "username": username,
                    "password": password,
                    "clientid": username,
                    "roles": [{"rolename": username}],
                },
            ]
        )
        for response in responses[2:]:
            if response.get("error"):
                command = response.get("command")
                raise CredentialError(f"the broker refused {command} for {username}: {response['error']}")
        log.info("MQTT user %s issued (publishes %s only)", username, role["acls"][0]["topic"])
        return MqttSettings(
            host=self.settings.host,
            port=self.settings.port,
            username=username,
            password=password,
            client_id=username,
            ca_file=self.settings.ca_file,
        )

    def revoke(self, usernames: list[str]) -> list[str]:
        """Delete these users and their roles; the ones that existed."""
        if not usernames:
            return []
        commands: list[dict[str, Any]] = []
        for username in usernames:
            commands += [
                {"command": "deleteClient", "username": username},
                {"command": "deleteRole", "rolename": username},
            ]
        responses = self.admin.run(commands)
        deleted = [u for u, r in zip(usernames, responses[::2], strict=True) if not r.get("error")]
        if deleted:
            log.info("MQTT users revoked: %s", ", ".join(deleted))
        return deleted

    def project_users(self, project_id: str) -> list[str]:
        """Every actor user of the project the broker knows."""
        (response,) = self.admin.run([{"command": "listClients", "verbose": False, "count": -1, "offset": 0}])
        if response.get("error"):
            raise CredentialError(f"the broker refused listClients: {response['error']}")
        names = response.get("data", {}).get("clients", [])
        prefix = project_prefix(project_id)
        return [n for n in names if isinstance(n, str) and n.startswith(prefix)]

    def revoke_project(self, project_id: str) -> list[str]:
        """Delete every actor user of the project (when it ends)."""
        return self.revoke(self.project_users(project_id))

    def close(self) -> None:
        with self._lock:
            if self._admin is not None:
                self._admin.close()
                self._admin = None
