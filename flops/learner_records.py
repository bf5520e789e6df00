"""What each learner did in a round, and the learners whose figures stand out.

Contract: the aggregator keeps, per round and learner, aggregate figures only: the examples it
trained on, the global model's loss and accuracy on its data (in one-message rounds: the model
of the round before, evaluated as the round starts), its local model's, its training time, the
L2 norm of its update (its parameters minus the round's global ones) and that update's distance
to the averaged update, or the failure that left it out. Nothing here reveals a record.

Outliers: per round and figure (`FLAGGED_FIGURES`), a learner whose modified z-score (Iglewicz
and Hoaglin: 0.6745 * (x - median) / MAD, the median absolute deviation over the round's
learners) exceeds `MAD_THRESHOLD` on the bad side (a larger update or loss) is flagged with the
figure, its value, the round's median and the score. It needs at least `MIN_LEARNERS_TO_FLAG`
learners with the figure; with a MAD of 0 (most learners exactly equal) any learner above them
is flagged, unless it differs by rounding only.
"""

import statistics

from pydantic import BaseModel, Field

MAD_THRESHOLD = 3.5
MIN_LEARNERS_TO_FLAG = 3
FLAGGED_FIGURES = ("update_norm", "local_loss", "global_loss")
"""Figures where a learner far above the round's median is suspicious (bad data, a bad update)."""


class OutlierFlag(BaseModel):
    figure: str
    value: float
    median: float
    score: float = Field(description="modified z-score (0.6745 * (value - median) / MAD); inf where MAD is 0")

    def describe(self) -> str:
        return f"{self.figure} {self.value:.4g} (round median {self.median:.4g}, score {self.score:.1f})"


class LearnerRound(BaseModel):
    """One learner's part of one round (aggregate figures only)."""

    learner: str
    examples: int = 0
    global_loss: float | None = None
    global_accuracy: float | None = None
    local_loss: float | None = None
    local_accuracy: float | None = None
    train_s: float | None = None
    update_norm: float | None = None
    distance_to_aggregate: float | None = None
    failure: str | None = None
    flags: list[OutlierFlag] = Field(default_factory=list)


def modified_z_scores(values: list[float]) -> list[float]:
    """0.6745 * (x - median) / MAD for each value; where MAD is 0, 0 for the values at the median
    and +-inf for the others."""
    median = statistics.median(values)
    mad = statistics.median(abs(value - median) for value in values)
    if mad == 0:
        return [0.0 if value == median else float("inf") if value > median else float("-inf") for value in values]
    return [0.6745 * (value - median) / mad for value in values]


def flag_outliers(records: list[LearnerRound], threshold: float = MAD_THRESHOLD) -> list[LearnerRound]:
    """`records` with `flags` set: each figure of FLAGGED_FIGURES on which a learner stands out above
    the others (see the module's contract). Records are changed in place and returned."""
    for figure in FLAGGED_FIGURES:
        present = [record for record in records if getattr(record, figure) is not None]
        if len(present) < MIN_LEARNERS_TO_FLAG:
            continue
        values = [float(getattr(record, figure)) for record in present]
        median = statistics.median(values)
        for record, value, score in zip(present, values, modified_z_scores(values), strict=True):
            if score > threshold and not _close(value, median):
                record.flags.append(OutlierFlag(figure=figure, value=value, median=median, score=score))
    return records


def _close(value: float, median: float) -> bool:
    """Differences below rounding noise never flag (a MAD of 0 would make any of them infinite)."""
    return abs(value - median) <= 1e-9 * max(1.0, abs(median))


def flagged(records: list[LearnerRound]) -> dict[str, list[str]]:
    """learner -> what flagged it, for the learners with flags."""
    return {record.learner: [flag.describe() for flag in record.flags] for record in records if record.flags}


class LearnersView(BaseModel):
    """`GET /api/flops/projects/ID/learners`: each learner's rounds, and every flag with its round."""

    learners: dict[str, list[dict[str, object]]] = Field(
        default_factory=dict, description="learner -> its records, each with its round"
    )
    flagged: list[dict[str, object]] = Field(
        default_factory=list, description="round, learner and what flagged it, in round order"
    )


def learners_view(rounds: list[tuple[int, list[LearnerRound]]]) -> LearnersView:
    """The per-learner view of `(round, records)` pairs."""
    view = LearnersView()
    for number, records in sorted(rounds, key=lambda pair: pair[0]):
        for record in records:
            view.learners.setdefault(record.learner, []).append({"round": number, **record.model_dump(mode="json")})
            if record.flags:
                view.flagged.append(
                    {"round": number, "learner": record.learner, "flags": [flag.describe() for flag in record.flags]}
                )
    return view
