"""Manager configuration, from the environment: nothing hard-coded, no default secrets."""

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

from flops.config import flops_home, tracking_uri
from flops.mqtt import MqttSettings


class ImageSettings(BaseModel):
    """Where container backends get their images and how the builder makes them.

    From FLOPS_REGISTRY (HOST[:PORT][/PATH]), FLOPS_REGISTRY_TLS_VERIFY (default on),
    FLOPS_REGISTRY_AUTH_FILE (a containers auth.json), FLOPS_BASE_IMAGE and
    FLOPS_BUILD_ENGINE (buildah or docker). Without a registry only the local backend and
    stand-ins that run commands locally can train.
    """

    registry: str
    tls_verify: bool = True
    auth_file: Path | None = None
    base_image: str | None = None
    engine: str = "buildah"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "ImageSettings | None":
        env = os.environ if environ is None else environ
        registry = env.get("FLOPS_REGISTRY")
        if not registry:
            return None
        auth_file = env.get("FLOPS_REGISTRY_AUTH_FILE")
        return cls(
            registry=registry,
            tls_verify=env.get("FLOPS_REGISTRY_TLS_VERIFY", "1").lower() not in ("0", "false", "no"),
            auth_file=Path(auth_file) if auth_file else None,
            base_image=env.get("FLOPS_BASE_IMAGE") or None,
            engine=env.get("FLOPS_BUILD_ENGINE") or "buildah",
        )

    def builder_args(self) -> list[str]:
        """The image-builder options these settings stand for (shared by FL and inference images)."""
        args = ["--registry", self.registry, "--tls-verify" if self.tls_verify else "--no-tls-verify"]
        args += ["--engine", self.engine]
        if self.auth_file:
            args += ["--registry-auth-file", str(self.auth_file)]
        if self.base_image:
            args += ["--base-image", self.base_image]
        return args


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
    # Registry and build options for container backends; None: no OCI images are built.
    images: ImageSettings | None = None

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
            images=ImageSettings.from_env(),
        )
