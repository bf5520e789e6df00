"""Timed build stages, their failures and the builder's progress lines.

A target runs its work as named stages (`fetch`, `validate`, `dependencies`, then its own)
inside `Stages.timed`; any exception inside a stage becomes a `StageFailed` naming the
stage and the whole reason as one readable paragraph (`describe_error`): git's own words
for a fetch, every contract problem for a repository that breaks the contract. Nothing is
cut short: the manager shows the message to the user as it is.
"""

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from flops.build import BuildFailure
from flops.ml_repo.contract import ContractError

CONTRACT_DOCS = "docs/ml-repository.md"


class StageFailed(Exception):
    """A build stage failed; `message` is the whole reason on one line, `transient` if retrying may help."""

    def __init__(self, stage: str, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.stage = stage
        self.message = message
        self.transient = transient

    def failure(self) -> BuildFailure:
        return BuildFailure(stage=self.stage, error=self.message, transient=self.transient)


def is_transient(error: BaseException) -> bool:
    """Whether `error` says something the build needs is away for now (see `RegistryUnavailable`)."""
    return bool(getattr(error, "transient", False)) or isinstance(error, TimeoutError | subprocess.TimeoutExpired)


def progress(message: str) -> None:
    print(f"[builder] {message}", flush=True)


def log_line(message: str) -> None:
    print(message, flush=True)


def describe_error(error: BaseException) -> str:
    """The whole reason `error` gives, as one paragraph (line breaks and runs of spaces folded)."""
    if isinstance(error, ContractError):
        return (
            "the repository is not a valid FLOps ML repository: "
            + "; ".join(" ".join(problem.split()) for problem in error.problems)
            + f" (see {CONTRACT_DOCS} for what a repository must provide)"
        )
    text = " ".join(str(error).split())
    if text and isinstance(error, ValueError | RuntimeError | OSError):
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class Stages:
    """The current stage and how long each one took (seconds, for the BuildResult)."""

    def __init__(self) -> None:
        self.current = "fetch"
        self.durations: dict[str, float] = {}

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        self.current = stage
        started = time.monotonic()
        progress(f"{stage}: started")
        try:
            yield
        except StageFailed:
            raise
        except Exception as error:
            raise StageFailed(stage, describe_error(error), is_transient(error)) from error
        finally:
            self.durations[stage] = round(time.monotonic() - started, 3)
        progress(f"{stage}: done in {self.durations[stage]:.1f} s")

    def failed(self, error: BaseException) -> StageFailed:
        """`error` as the failure of the stage it happened in."""
        if isinstance(error, StageFailed):
            return error
        return StageFailed(self.current, describe_error(error), is_transient(error))
