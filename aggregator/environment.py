"""How `flops-aggregator` configures its ServerApp: environment variables, read once.

Flower starts the ServerApp in a process of its own, which inherits the aggregator's
environment; `ServerAppSettings.from_env` is the one place that process reads it. A module
of its own so that the launcher can name the variables without importing Flower.
"""

from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

from flops.mqtt import MqttSettings

STATE_DIR_ENV = "FLOPS_AGGREGATOR_STATE_DIR"
TRACKING_URI_ENV = "FLOPS_TRACKING_URI"
# MLflow's own variable: where any MLflow call of this process goes when nothing else says.
MLFLOW_TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
USER_MLRUNS_DIR = "user-mlruns"


def mlflow_fallback_uri(tracking_uri: str, state_dir: Path) -> str:
    """MLFLOW_TRACKING_URI of the ServerApp: the tracking server, else a folder of the state directory.

    MLflow's default is `sqlite:///mlflow.db` in the working directory; no call of the
    aggregator process (user code that imports MLflow inside a function included) may land there.
    """
    return tracking_uri or (state_dir / USER_MLRUNS_DIR).resolve().as_uri()


class ServerAppSettings(BaseModel):
    """Where the ServerApp keeps its state, the MLflow server it logs to, the broker it reports to."""

    state_dir: Path | None = None
    tracking_uri: str | None = None
    mqtt: MqttSettings | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "ServerAppSettings":
        state_dir = env.get(STATE_DIR_ENV)
        return cls(
            state_dir=Path(state_dir) if state_dir else None,
            tracking_uri=env.get(TRACKING_URI_ENV) or None,
            mqtt=MqttSettings.from_env(env),
        )
