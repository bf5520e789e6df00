"""What a cluster aggregator's ClientApp needs to reach its own SuperLink: one file, named by the environment.

`flops-aggregator --cluster NAME` writes the file (`CONTEXT_FILE` in its state folder) and starts its
SuperNode at the root with CLUSTER_CONTEXT_ENV naming it; Flower passes the environment down to the
ClientApp process, which reads the file once per message (`ClusterContext.from_env`). The file names
the control token's file, never the token itself. A module of its own so that the launcher can name
the variable without importing Flower.
"""

from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

CLUSTER_CONTEXT_ENV = "FLOPS_CLUSTER_CONTEXT_FILE"
CONTEXT_FILE = "cluster.json"


class ClusterContextError(RuntimeError):
    """The ClientApp runs where no cluster aggregator started it."""


class ClusterContext(BaseModel):
    """One cluster aggregator: its name, its SuperLink's Control API and where its runs keep state."""

    cluster: str
    superlink: str
    ca_file: Path | None
    control_token_file: Path
    repo: Path
    state_dir: Path
    flwr_home: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "ClusterContext":
        path = env.get(CLUSTER_CONTEXT_ENV)
        if not path:
            raise ClusterContextError(
                f"{CLUSTER_CONTEXT_ENV} is not set: the root of a hierarchical training sends its messages to "
                "cluster aggregators (flops-aggregator --cluster), not to learners"
            )
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))
