"""Manager configuration, from the environment: nothing hard-coded, no default secrets."""

import os
from pathlib import Path

from pydantic import BaseModel

from flops.config import flops_home, tracking_uri
from flops.mqtt import MqttSettings


class ManagerSettings(BaseModel):
    home: Path
    host: str = "127.0.0.1"
    port: int = 5072
    mongo_uri: str | None = None
    mqtt: MqttSettings
    tracking_uri: str
    nodes_dir: Path
    reconcile_interval_s: float = 1.0
    admin_token: str | None = None
    admin_token_file: Path | None = None
    # Where node data lies on remote workers (`<root>/<node name>`); None: the local folders.
    remote_data_root: str | None = None
    # Name images when a build made none: only for stand-ins that run commands locally.
    placeholder_images: bool = False

    @property
    def runs_dir(self) -> Path:
        return self.home / "projects"

    @property
    def builds_dir(self) -> Path:
        return self.home / "builds"

    @classmethod
    def from_env(cls) -> "ManagerSettings":
        home = flops_home()
        mqtt = MqttSettings.from_env()
        if mqtt is None:
            raise SystemExit(
                "flops-manager: set FLOPS_MQTT_HOST (and FLOPS_MQTT_PORT, credentials) to the broker, "
                "or start the embedded stack with `flops up`"
            )
        token_file = os.environ.get("FLOPS_ADMIN_TOKEN_FILE")
        return cls(
            home=home,
            host=os.environ.get("FLOPS_MANAGER_HOST", "127.0.0.1"),
            port=int(os.environ.get("FLOPS_MANAGER_PORT", "5072")),
            mongo_uri=os.environ.get("FLOPS_MONGO_URI") or None,
            mqtt=mqtt,
            tracking_uri=tracking_uri(),
            nodes_dir=Path(os.environ.get("FLOPS_NODES_DIR") or home / "nodes"),
            reconcile_interval_s=float(os.environ.get("FLOPS_RECONCILE_INTERVAL", "1.0")),
            admin_token=os.environ.get("FLOPS_ADMIN_TOKEN") or None,
            admin_token_file=Path(token_file) if token_file else None,
            remote_data_root=os.environ.get("FLOPS_REMOTE_DATA_ROOT") or None,
            placeholder_images=os.environ.get("FLOPS_PLACEHOLDER_IMAGES") == "1",
        )
