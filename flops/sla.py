"""The project SLA: one document that says what to train, where, and what to do after.

Field names follow FLOps so its SLAs work unchanged; our additions are optional. Anything
unknown, mistyped or impossible is refused with the field's path and a reason.
"""

import json
import re
from enum import StrEnum
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from flops.differential_privacy import DifferentialPrivacy, combination_error
from flops.explain import ExplainRequest
from flops.statistics import StatisticsRequest
from flops.training import DEFAULT_STRAGGLER_GRACE_S, ModelFlavor, StrategyConfig, check_client_minimums

Platform = Literal["linux/amd64", "linux/arm64"]


class SLAError(ValueError):
    """The SLA is invalid; `details` lists each problem with its field path."""

    def __init__(self, message: str, details: list[dict[str, str]]) -> None:
        super().__init__(message)
        self.details = details


class TrainingMode(StrEnum):
    CLASSIC = "classic"
    HIERARCHICAL = "hierarchical"


# FLOps's required fields: what a job that runs the repository's code cannot do without (a
# training, an explain job; a statistics job runs no code).
TRAINING_FIELDS = ("ml_repo_url", "ml_model_flavor")
TRAINING_NEEDS = "a training needs"
EXPLAIN_NEEDS = "an explain job needs the model's repository:"


class Job(StrEnum):
    """What a project runs: a training (FLOps's only job), a statistics job (`flops.statistics`), or
    an explain job: the learners explain a registered model on their data (`flops.explain`)."""

    TRAINING = "training"
    STATISTICS = "statistics"
    EXPLAIN = "explain"

    @property
    def runs_code(self) -> bool:
        """Whether the job builds and runs the ML repository's code (a statistics job does not)."""
        return self is not Job.STATISTICS


class PostTrainingStep(StrEnum):
    BUILD_IMAGE = "build_image_for_trained_model"
    DEPLOY_IMAGE = "deploy_trained_model_image"
    # Ours: the learners explain the best model on their data (flops.explain), before the actors go.
    EXPLAIN = "explain_model"


class Backend(StrEnum):
    LOCAL = "local"
    DOCKER = "docker"
    OAKESTRA = "oakestra"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TrainingConfiguration(Strict):
    mode: TrainingMode = TrainingMode.CLASSIC
    data_tags: list[str] = Field(default_factory=list)
    training_rounds: int = Field(default=3, ge=1, le=10_000)
    training_cycles: int = Field(default=1, ge=1, le=1_000)
    min_available_clients: int = Field(default=1, ge=1)
    min_fit_clients: int = Field(default=1, ge=1)
    min_evaluate_clients: int = Field(default=1, ge=1)
    # Ours: hierarchical mode goes on while this many clusters reply (0: every cluster must).
    min_clusters: int = Field(
        default=0,
        ge=0,
        description="hierarchical mode: clusters whose replies a cycle needs; 0 (the default): all of them",
    )

    root_cluster: str = Field(
        default="",
        max_length=63,
        description=(
            "hierarchical mode: the orchestrator cluster the root aggregator is placed in (Oakestra); "
            "empty (the default): no constraint"
        ),
    )

    @field_validator("data_tags", mode="before")
    @classmethod
    def _one_tag_as_a_string(cls, value: object) -> object:
        """FLOps's own SLAs give one tag as a string (`"data_tags": "mnist"`), or several with commas."""
        if isinstance(value, str):
            return [tag.strip() for tag in value.split(",") if tag.strip()]
        return value

    @field_validator("data_tags")
    @classmethod
    def _plain_tags(cls, tags: list[str]) -> list[str]:
        for tag in tags:
            if not tag or "/" in tag or tag.startswith(".") or len(tag) > 64:
                raise ValueError(f"data tag '{tag}' must be a plain folder name")
        return tags

    @model_validator(mode="after")
    def _minimums_fit(self) -> "TrainingConfiguration":
        check_client_minimums(self)
        if (self.min_clusters or self.root_cluster) and self.mode is not TrainingMode.HIERARCHICAL:
            raise ValueError(
                "min_clusters and root_cluster are for mode 'hierarchical' only: remove them or set the mode"
            )
        return self


class PrivacySettings(Strict):
    """The SLA's `privacy` section: what the training does so its model does not give records away."""

    differential_privacy: DifferentialPrivacy | None = Field(
        default=None, description="clip the learners' updates and add noise (server, client or local mode)"
    )


class ResourceConstraints(Strict):
    memory: int = Field(default=100, ge=1, description="MB per FL actor")
    vcpus: float = Field(default=1, gt=0)
    storage: int = Field(default=0, ge=0)


class ProjectSLA(Strict):
    """What a user POSTs to start a project."""

    customer_id: str = Field(
        default="Admin",
        validation_alias=AliasChoices("customerID", "customer_id"),
        serialization_alias="customerID",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
    )
    verbose: bool = False
    use_devel_base_images: bool = False
    supported_platforms: list[Platform] = Field(default_factory=lambda: ["linux/amd64"], min_length=1)  # type: ignore[arg-type]
    ml_model_flavor: ModelFlavor = Field(default=ModelFlavor.SKLEARN, description="required for a training")
    ml_repo_url: str = Field(default="", description="required for a training; a statistics job runs no code")
    training_configuration: TrainingConfiguration = Field(default_factory=TrainingConfiguration)
    resource_constraints: ResourceConstraints = Field(default_factory=ResourceConstraints)
    post_training_steps: list[PostTrainingStep] = Field(default_factory=list)
    # Ours, all optional:
    job: Job = Job.TRAINING
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    explain: ExplainRequest | None = Field(
        default=None, description="job 'explain': the registered model (model_uri), method, records per node"
    )
    statistics: StatisticsRequest | None = Field(
        default=None, description="job 'statistics': features, statistics, bins, quantiles, privacy tightening"
    )
    ml_repo_ref: str | None = Field(default=None, description="branch, tag or commit")
    project_name: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    hyperparameters: dict[str, float | int | bool | str] = Field(default_factory=dict)
    backend: Backend = Backend.LOCAL
    best_model_metric: Literal["accuracy", "loss"] = "accuracy"
    learner_wait_timeout: float = Field(default=300.0, gt=0, le=24 * 3600)
    straggler_grace_s: float = Field(
        default=DEFAULT_STRAGGLER_GRACE_S,
        ge=0,
        le=24 * 3600,
        description="seconds a round waits for late learners once it has the replies it needs",
    )

    @model_validator(mode="after")
    def _job_has_what_it_needs(self) -> "ProjectSLA":
        if self.job.runs_code:
            missing = [name for name in TRAINING_FIELDS if name not in self.model_fields_set]
            if missing or not self.ml_repo_url:
                what = TRAINING_NEEDS if self.job is Job.TRAINING else EXPLAIN_NEEDS
                raise ValueError(f"{what} {' and '.join(missing or ['ml_repo_url'])}")
        if self.statistics is not None and self.job is not Job.STATISTICS:
            raise ValueError("statistics is for job 'statistics': remove it or set the job")
        if self.explain is not None and self.job is not Job.EXPLAIN:
            raise ValueError("explain is for job 'explain' (after a training: post_training_steps explain_model)")
        if self.job is Job.TRAINING:
            return self
        if self.job is Job.EXPLAIN and (self.explain is None or self.explain.model_uri is None):
            raise ValueError("an explain job needs explain.model_uri: the registered model, models:/NAME/VERSION")
        if self.backend is not Backend.LOCAL:
            raise ValueError(f"{self.job.value} jobs run on the local backend (the nodes of this manager) for now")
        if self.post_training_steps:
            raise ValueError(f"a {self.job.value} job registers no model: remove post_training_steps")
        if self.training_configuration.mode is TrainingMode.HIERARCHICAL:
            raise ValueError(f"{self.job.value} jobs are not hierarchical: use mode 'classic'")
        return self

    @model_validator(mode="after")
    def _privacy_fits(self) -> "ProjectSLA":
        privacy = self.privacy.differential_privacy
        if privacy is None:
            return self
        if self.job is not Job.TRAINING:
            raise ValueError("privacy.differential_privacy is for trainings: a statistics job's nodes set their noise")
        hierarchical = self.training_configuration.mode is TrainingMode.HIERARCHICAL
        error = combination_error(privacy, self.strategy.name.value, hierarchical)
        if error:
            raise ValueError(f"privacy.differential_privacy: {error}")
        return self

    @model_validator(mode="after")
    def _explain_is_classic(self) -> "ProjectSLA":
        hierarchical = self.training_configuration.mode is TrainingMode.HIERARCHICAL
        if PostTrainingStep.EXPLAIN in self.post_training_steps and hierarchical:
            raise ValueError("explain_model is not available in hierarchical mode yet: train classic to explain")
        return self

    def statistics_request(self) -> StatisticsRequest:
        """The statistics job's request, over the SLA's data tags unless it names its own."""
        request = self.statistics or StatisticsRequest()
        tags = request.data_tags or self.training_configuration.data_tags
        return request.model_copy(update={"data_tags": tags, "min_nodes": self.training_configuration.min_fit_clients})

    @model_validator(mode="after")
    def _deploy_needs_image(self) -> "ProjectSLA":
        steps = self.post_training_steps
        needs_image = PostTrainingStep.DEPLOY_IMAGE in steps and self.backend is not Backend.LOCAL
        if needs_image and PostTrainingStep.BUILD_IMAGE not in steps:
            raise ValueError("deploy_trained_model_image needs build_image_for_trained_model too")
        return self


# How deep a JSON or YAML document may nest (an SLA needs 4 levels); deeper is refused before
# it is parsed, so a 100k-deep document costs one scan, not a recursion error.
MAX_DOCUMENT_DEPTH = 32
# Brackets and quoted strings, to measure flow nesting without parsing.
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')
_YAML_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\']|\'\')*\'|#[^\n]*|[\[\]{}]')


class DocumentError(SLAError):
    """A body that is no document at all (not UTF-8, a NUL character, a lone surrogate: `status` 400)
    or one nested deeper than the limit or with field names the store cannot keep (422)."""

    def __init__(self, message: str, status: int, field: str = "") -> None:
        super().__init__(message, [{"field": field, "reason": message}])
        self.status = status


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors and aliases: an SLA needs none, and they are how YAML bombs grow."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"YAML aliases (*name) are not accepted{event.start_mark}")
        return super().compose_node(parent, index)


def _flow_depth(text: str, tokens: re.Pattern[str]) -> int:
    depth = deepest = 0
    for match in tokens.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth = max(0, depth - 1)
    return deepest


def _check_tree(value: Any, limit: int, path: str = "", depth: int = 1) -> None:
    """Refuse nesting deeper than `limit`, NUL characters, text that is not Unicode (a lone surrogate,
    which JSON's escapes allow), and field names the project store cannot keep ('.' in them, or a
    leading '$'), naming the field."""
    if depth > limit:
        raise DocumentError(f"the document nests deeper than {limit} levels (at {path or 'the top'})", 422, path)
    if isinstance(value, str):
        if "\x00" in value:
            raise DocumentError(f"field {path or '(root)'} contains a NUL character", 400, path)
        if not _is_unicode(value):
            raise DocumentError(f"field {path or '(root)'} holds a lone surrogate: not text", 400, path)
    elif isinstance(value, dict):
        where = path or "the document"
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            if isinstance(key, str):
                if "\x00" in key:
                    raise DocumentError(f"a field name in {where} contains a NUL character", 400, path)
                if not _is_unicode(key):
                    raise DocumentError(f"a field name in {where} holds a lone surrogate: not text", 400, path)
                if "." in key or key.startswith("$"):
                    raise DocumentError(
                        f"field name {key!r} in {where} holds a '.' or starts with '$', which the project store "
                        "cannot keep: rename it (letters, digits, '_' and '-')",
                        422,
                        path,
                    )
            _check_tree(item, limit, name, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_tree(item, limit, f"{path}.{index}" if path else str(index), depth + 1)


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def load_document(document: str | bytes, *, yaml_allowed: bool = True, max_depth: int = MAX_DOCUMENT_DEPTH) -> Any:
    """A JSON (or YAML) document, decoded; `DocumentError` for a body that is not UTF-8, holds a
    NUL, or nests deeper than `max_depth`; `SLAError` when it parses as neither."""
    if isinstance(document, bytes):
        try:
            text = document.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DocumentError(f"the body is not UTF-8 text (byte {error.start} is not): send UTF-8", 400) from None
    else:
        text = document
    if "\x00" in text:
        raise DocumentError("the body contains a NUL character", 400)
    if _flow_depth(text, _YAML_TOKENS if yaml_allowed else _JSON_TOKENS) > max_depth:
        raise DocumentError(f"the document nests deeper than {max_depth} levels", 422)
    try:
        data = json.loads(text)
    except RecursionError:
        raise DocumentError(f"the document nests deeper than {max_depth} levels", 422) from None
    except json.JSONDecodeError as json_error:
        if not yaml_allowed:
            raise SLAError("the body is not valid JSON", [{"field": "", "reason": str(json_error)}]) from json_error
        try:
            data = yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader without aliases
        except RecursionError:
            raise DocumentError(f"the document nests deeper than {max_depth} levels", 422) from None
        except yaml.YAMLError as error:
            raise SLAError("the SLA is neither valid JSON nor YAML", [{"field": "", "reason": str(error)}]) from error
    _check_tree(data, max_depth)
    return data


def parse_sla(document: Any) -> ProjectSLA:
    """Parse a JSON or YAML SLA (text, or an already decoded document), naming every problem."""
    data = load_document(document) if isinstance(document, str | bytes) else document
    if not isinstance(data, dict):
        raise SLAError("the SLA must be a JSON object", [{"field": "", "reason": "not an object"}])
    # A code-running job's own required fields, named as fields (the model's check can only name the document).
    missing = []
    if str(data.get("job", Job.TRAINING.value)) != Job.STATISTICS.value:  # a job that runs the repository's code
        missing = [
            {"field": name, "reason": "required field is missing"} for name in TRAINING_FIELDS if name not in data
        ]
    try:
        return ProjectSLA.model_validate(data)
    except ValidationError as error:
        details = missing + [
            {"field": ".".join(str(p) for p in problem["loc"]) or "(root)", "reason": _reason(problem)}
            for problem in error.errors(include_url=False)
            if not (missing and _reason(problem).startswith((TRAINING_NEEDS, EXPLAIN_NEEDS)))
        ]
        listing = "; ".join(f"{d['field']}: {d['reason']}" for d in details)
        raise SLAError(f"invalid SLA: {listing}", details) from error


def _reason(problem: Any) -> str:
    if problem["type"] == "extra_forbidden":
        return "unknown field (check its spelling against the SLA reference in docs/sla.md)"
    if problem["type"] == "missing":
        return "required field is missing"
    return str(problem["msg"]).removeprefix("Value error, ")
