"""Manager configuration, read once from the environment in `main()`: nothing hard-coded, no default secrets.

`ManagerSettings.from_env(os.environ)` is the only place the manager reads its environment;
everything else gets the settings object (Flask's one-config-object habit).
"""

from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, Field

from flops.config import flops_home, tracking_uri
from flops.mqtt import MqttSettings
from flops_manager.limits import ApiLimits
from flops_manager.orchestration.settings import OrchestrationSettings
from flops_manager.sources import SourcePolicy

DEFAULT_RETRY_GIVE_UP_S = 600.0


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
    def from_env(cls, env: Mapping[str, str]) -> "ImageSettings | None":
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
    # The tracking server's admin credentials (the observatory's admin-credentials.json), read at
    # each use; None: a tracking server without authentication (projects get no identities).
    tracking_credentials_file: Path | None = None
    # How long the aggregator waits for an unreachable tracking server before the training fails.
    tracking_outage_limit_s: float = Field(default=120.0, gt=0)
    nodes_dir: Path
    reconcile_interval_s: float = 1.0
    # How long a dry run (`POST /api/flops/projects?dry_run=1`) may fetch and check a repository.
    dry_run_timeout_s: float = 60.0
    # Transient failures (a backend unreachable, a 5xx, a timeout): the first retry after
    # retry_initial_s, doubling up to retry_max_s; after retry_give_up_s the stage fails.
    retry_initial_s: float = 1.0
    retry_max_s: float = 60.0
    retry_give_up_s: float = DEFAULT_RETRY_GIVE_UP_S
    admin_token: str | None = None
    admin_token_file: Path | None = None
    # Where node data lies on remote workers (`<root>/<node name>`); None: the local folders.
    remote_data_root: str | None = None
    # Name images when a build made none: only for stand-ins that run commands locally.
    placeholder_images: bool = False
    # Registry and build options for container backends; None: no OCI images are built.
    images: ImageSettings | None = None
    # Which backends besides `local` are enabled (DOCKER_HOST, FLOPS_OAKESTRA_*).
    orchestration: OrchestrationSettings = Field(default_factory=OrchestrationSettings)
    # Which ml_repo_url a project may name (FLOPS_REPO_*), and the API's limits and timeouts.
    sources: SourcePolicy = Field(default_factory=SourcePolicy)
    limits: ApiLimits = Field(default_factory=ApiLimits)

    @property
    def runs_dir(self) -> Path:
        return self.home / "projects"

    @property
    def builds_dir(self) -> Path:
        return self.home / "builds"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "ManagerSettings":
        """Every manager setting from `env` (the process environment, in `main()`).

        Raises `OrchestratorError` when a backend is configured incompletely.
        """
        home = flops_home(env)
        mqtt = MqttSettings.from_env(env)
        if mqtt is None:
            raise SystemExit(
                "flops-manager: set FLOPS_MQTT_HOST (and FLOPS_MQTT_PORT, credentials) to the broker, "
                "or start the embedded stack with `flops up`"
            )
        token_file = env.get("FLOPS_ADMIN_TOKEN_FILE")
        return cls(
            home=home,
            host=env.get("FLOPS_MANAGER_HOST", "127.0.0.1"),
            port=int(env.get("FLOPS_MANAGER_PORT", "5072")),
            mongo_uri=env.get("FLOPS_MONGO_URI") or None,
            mqtt=mqtt,
            tracking_uri=tracking_uri(env),
            tracking_credentials_file=Path(env["FLOPS_TRACKING_CREDENTIALS_FILE"])
            if env.get("FLOPS_TRACKING_CREDENTIALS_FILE")
            else None,
            tracking_outage_limit_s=float(env.get("FLOPS_TRACKING_OUTAGE_LIMIT") or 120),
            nodes_dir=Path(env.get("FLOPS_NODES_DIR") or home / "nodes"),
            reconcile_interval_s=float(env.get("FLOPS_RECONCILE_INTERVAL", "1.0")),
            dry_run_timeout_s=float(env.get("FLOPS_DRY_RUN_TIMEOUT", "60")),
            retry_give_up_s=float(env.get("FLOPS_RETRY_GIVE_UP", str(DEFAULT_RETRY_GIVE_UP_S))),
            admin_token=env.get("FLOPS_ADMIN_TOKEN") or None,
            admin_token_file=Path(token_file) if token_file else None,
            remote_data_root=env.get("FLOPS_REMOTE_DATA_ROOT") or None,
            placeholder_images=env.get("FLOPS_PLACEHOLDER_IMAGES") == "1",
            images=ImageSettings.from_env(env),
            orchestration=OrchestrationSettings.from_env(env),
            sources=SourcePolicy.from_env(env),
            limits=ApiLimits.from_env(env),
        )
