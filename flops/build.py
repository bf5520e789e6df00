"""What the image builder makes and what the manager runs from it.

The builder writes a `BuildResult` (to its result file and as the payload of
builder/succeeded) or a `BuildFailure` (result file and builder/failed); the manager reads
only these models. The image layout names where code, environment and model lie inside
the FL and inference images, for the Containerfiles and for the command lines alike.
"""

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Inside the learner and aggregator images.
IMAGE_APP_DIR = "/app"
IMAGE_VENV_DIR = "/opt/flops"
IMAGE_PYTHON = f"{IMAGE_VENV_DIR}/bin/python"
# Inside the inference image: the MLflow model the server loads.
IMAGE_MODEL_DIR = "/model"


class OciBuildInfo(BaseModel):
    """How the OCI target made its images: tag, configuration digest, and layer-cache use per role."""

    tag: str
    config_digest: str
    platforms: list[str]
    base_image: str
    engine: str
    cache: dict[str, dict[str, int]] = Field(default_factory=dict)


class BuildResult(BaseModel):
    """Where the code and environments of one build are (local target), or its image refs (OCI)."""

    model_config = ConfigDict(extra="ignore")

    commit: str
    repo_dir: str
    learner_python: str | None = None
    aggregator_python: str | None = None
    images: dict[str, str] = Field(default_factory=dict)
    build_key: str = ""
    reused: bool = False
    stage_durations: dict[str, float] = Field(default_factory=dict)
    oci: OciBuildInfo | None = None  # OCI target only
    # What the builder changed in the repository's dependencies, one line each: a pin relaxed
    # (naming the pin, what it conflicted with and what is used instead), Python or MLflow
    # ignored. For the project's status and `flops watch`.
    dependency_warnings: list[str] = Field(default_factory=list)


class BuildFailure(BaseModel):
    """A build that stopped: the stage it stopped in and the whole reason (git's, the checker's).

    `transient`: the build stopped because something it needs was away for now (the registry
    unreachable, answering 5xx, or too slow); the manager runs the builder again with backoff.
    """

    stage: str
    error: str
    transient: bool = False


class BuildOutcome(BaseModel):
    """The builder's result file: exactly one of `result` and `failure`."""

    result: BuildResult | None = None
    failure: BuildFailure | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "BuildOutcome":
        if (self.result is None) == (self.failure is None):
            raise ValueError("a build outcome holds exactly one of result and failure")
        return self


class InferenceBuildOutcome(BaseModel):
    """The inference-image builder's result file: the pushed image, or why there is none."""

    image: str | None = None
    error: str | None = None
