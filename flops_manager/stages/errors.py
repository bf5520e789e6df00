"""How a stage fails: for good (`StageError`, a refused spec) or for now (retried with backoff)."""

import pymongo.errors
import requests

from flops_manager.models import RetryState
from flops_manager.orchestration.base import OrchestratorError


class StageError(Exception):
    """The stage cannot go on: the project fails at `stage` with `message` (what failed, what to do)."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.message = message


class TransientStageError(Exception):
    """The stage failed for now (e.g. the build found the registry away): retried with backoff, like a backend's."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


def is_transient(error: BaseException) -> bool:
    """Whether trying again later may help: a backend or the store unreachable, a timeout, a 5xx answer."""
    if isinstance(error, TransientStageError):
        return True
    if isinstance(error, OrchestratorError):
        return error.transient
    if isinstance(error, (TimeoutError, ConnectionError, requests.Timeout, requests.ConnectionError)):
        return True
    if isinstance(error, pymongo.errors.ConnectionFailure):  # the store's server away for a moment
        return True
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return error.response.status_code >= 500
    return False


def next_retry(
    previous: RetryState | None, stage: str, reason: str, now: float, *, initial_s: float, max_s: float
) -> RetryState:
    """The retry after one more transient failure of `stage`: the delay doubles from `initial_s` up to `max_s`.

    A `previous` retry of another stage does not count: each stage's attempts start at one.
    """
    same_stage = previous is not None and previous.stage == stage
    attempts = previous.attempts + 1 if previous is not None and same_stage else 1
    first_failed_at = previous.first_failed_at if previous is not None and same_stage else now
    delay = min(initial_s * 2 ** (attempts - 1), max_s)
    return RetryState(
        stage=stage, attempts=attempts, first_failed_at=first_failed_at, next_attempt_at=now + delay, reason=reason
    )
