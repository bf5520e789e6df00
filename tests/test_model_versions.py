"""Calendar versions of registered models: YEAR.MONTH.N per model name, N from 1 again each month."""

from datetime import UTC, datetime

from aggregator.tracking import next_calendar_version
from flops.training import calendar_alias


def test_the_next_version_of_a_month_follows_the_highest_of_that_month() -> None:
    now = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)
    assert next_calendar_version([], now) == "2026.12.1"
    assert next_calendar_version(["2026.12.1"], now) == "2026.12.2"
    # Gaps and order do not matter; other months, other years and foreign values are not counted.
    taken = ["2026.12.3", "2026.12.1", "2026.11.9", "2025.12.7", "2026.12.x", "v2026-12-5", "2026.1.4"]
    assert next_calendar_version(taken, now) == "2026.12.4"


def test_the_count_starts_again_at_a_month_boundary() -> None:
    taken = ["2026.12.1", "2026.12.2", "2026.12.3"]
    last_second_of_december = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    first_second_of_january = datetime(2027, 1, 1, 0, 0, 0, tzinfo=UTC)
    assert next_calendar_version(taken, last_second_of_december) == "2026.12.4"
    assert next_calendar_version(taken, first_second_of_january) == "2027.1.1"
    assert next_calendar_version([*taken, "2027.1.1"], first_second_of_january) == "2027.1.2"


def test_aliases_hold_no_dots() -> None:
    assert calendar_alias("2026.12.1") == "v2026-12-1"
    assert calendar_alias("2027.1.12") == "v2027-1-12"
