"""Per-learner records and the robust rule that names the learner whose figures stand out."""

import pytest

from aggregator.main import round_lines
from flops.learner_records import LearnerRound, flag_outliers, flagged, modified_z_scores
from flops.training import RoundReport


def rounds(**figures: list[float | None]) -> list[LearnerRound]:
    count = len(next(iter(figures.values())))
    return [
        LearnerRound(learner=f"node-{i + 1}", **{name: values[i] for name, values in figures.items()})
        for i in range(count)
    ]


def test_the_learner_on_shuffled_labels_is_flagged_and_no_other() -> None:
    records = flag_outliers(rounds(local_loss=[0.31, 0.28, 2.29, 0.35], update_norm=[1.9, 2.1, 6.4, 2.0]))
    assert list(flagged(records)) == ["node-3"]
    figures = {flag.figure for flag in records[2].flags}
    assert figures == {"local_loss", "update_norm"}
    flag = next(flag for flag in records[2].flags if flag.figure == "local_loss")
    assert flag.value == 2.29 and flag.median == pytest.approx(0.33) and flag.score > 3.5
    assert "local_loss 2.29 (round median 0.33" in flag.describe()


def test_learners_that_differ_as_learners_do_are_not_flagged() -> None:
    records = flag_outliers(rounds(local_loss=[0.31, 0.28, 0.40, 0.35, 0.22], update_norm=[1.9, 2.4, 2.0, 1.6, 2.2]))
    assert flagged(records) == {}


def test_a_learner_better_than_the_others_is_not_flagged() -> None:
    records = flag_outliers(rounds(local_loss=[0.31, 0.30, 0.01, 0.32]))
    assert flagged(records) == {}


def test_too_few_learners_or_missing_figures_flag_nothing() -> None:
    assert flagged(flag_outliers(rounds(local_loss=[0.3, 9.0]))) == {}
    assert flagged(flag_outliers(rounds(local_loss=[0.3, None, 9.0, None]))) == {}


def test_a_mad_of_zero_flags_a_learner_above_the_equal_others_but_not_rounding() -> None:
    assert modified_z_scores([1.0, 1.0, 1.0, 2.0]) == [0.0, 0.0, 0.0, float("inf")]
    assert list(flagged(flag_outliers(rounds(update_norm=[1.0, 1.0, 1.0, 2.0])))) == ["node-4"]
    assert flagged(flag_outliers(rounds(update_norm=[1.0, 1.0, 1.0, 1.0 + 1e-12]))) == {}


def test_the_store_keeps_the_newest_rounds_learner_records_within_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from flops.training import RoundReport
    from flops_manager.stages import training

    monkeypatch.setattr(training, "KEPT_LEARNER_RECORDS", 6)
    reports = [RoundReport(round=n, per_learner=rounds(local_loss=[0.1, 0.2, 0.3])) for n in (3, 1, 2)]
    stored = training.stored_rounds(reports)
    assert [r["round"] for r in stored] == [1, 2, 3]
    assert [len(r.get("per_learner", [])) for r in stored] == [0, 3, 3], "round 1's records are over the budget"


def test_flops_watch_names_the_flagged_learner_under_its_round() -> None:
    from rich.console import Console

    from flops.cli.projects import _project_table

    records = flag_outliers(rounds(local_loss=[0.31, 0.28, 2.29, 0.35]))
    project = {"project_id": "p", "status": "training", "rounds": [
        {"round": 1, "accuracy": 0.9, "loss": 0.3, "per_learner": [r.model_dump(mode="json") for r in records]},
    ]}  # fmt: skip
    console = Console(width=200, record=True)
    console.print(_project_table(project))
    text = console.export_text()
    assert "outlier node-3" in text and "local_loss 2.29 (round median 0.33" in text
    assert "node-1" not in text


def test_the_aggregators_log_names_each_round_and_its_flagged_learner() -> None:
    records = flag_outliers(
        [LearnerRound(learner=f"node-{n}", local_loss=loss) for n, loss in enumerate([0.3, 0.31, 2.4, 0.29], 1)]
    )
    report = RoundReport(round=2, accuracy=0.95, loss=0.2, learners=4, duration_s=1.25, per_learner=records,
                         failures=["node-5: MemoryError"])  # fmt: skip
    lines = round_lines(report)
    assert lines[0] == "round 2: accuracy 0.95, loss 0.2, 4 learners, 1.2 s"
    assert lines[1].startswith("round 2: outlier node-3: local_loss 2.4 (round median") and len(lines) == 3
    assert lines[2] == "round 2: failure: node-5: MemoryError"
