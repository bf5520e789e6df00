"""The request bodies of the API besides the SLA (`flops.sla.ProjectSLA`): mock data and tokens."""

from pydantic import BaseModel, ConfigDict, Field, model_validator

from flops.data.partition import Scheme


class MockDataConfiguration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_name: str = Field(min_length=1, max_length=200)
    # The manager's FLOPS_MAX_MOCK_NODES (64 by default) bounds this further.
    number_of_partitions: int = Field(ge=1, le=1000)
    data_tag: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    scheme: Scheme = Scheme.IID
    alpha: float = Field(default=0.5, gt=0, le=1e6)
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    # FLOps started one mock data service per partition on request; here every partition is a
    # node folder on this machine either way, so the flag is accepted and changes nothing.
    one_mock_service_per_partition: bool = False
    # Ours: every customer may train on the tag (its owner and the admin may overwrite it).
    shared: bool = False
    # Ours: the nodes' clusters for hierarchical training (node.yaml, `flops.data.node_meta`);
    # 0 (the default): the nodes keep theirs. The clusters are the operator's topology: admin only.
    number_of_clusters: int = Field(default=0, ge=0, le=1000)

    @model_validator(mode="after")
    def _clusters_have_nodes(self) -> "MockDataConfiguration":
        if self.number_of_clusters > self.number_of_partitions:
            raise ValueError(
                f"number_of_clusters ({self.number_of_clusters}) is more than number_of_partitions "
                f"({self.number_of_partitions}): every cluster needs a node"
            )
        return self


class MockRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    customer_id: str = Field(
        default="Admin", alias="customerID", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
    )
    mock_data_configuration: MockDataConfiguration


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
