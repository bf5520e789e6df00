"""Imports the user's ModelManager and turns user-code failures into one-line summaries.

Both learners and the aggregator run user code; both report its failures the same way:
`node: file.py:LINE in function: ExceptionType: message`.
"""

import importlib
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flops.ml_repo.contract import MODEL_MANAGER_CLASS

MODEL_MANAGER_MODULE = "model_manager"
_PLATFORM_DIRS = ("site-packages", "/flops/", "/learner/", "/aggregator/", "/flwr/")


class UserCodeError(RuntimeError):
    """User code raised; the message is a one-line summary safe to send to the aggregator."""


def summarize_exception(where: str, error: BaseException) -> str:
    """`where: file.py:LINE in func: Type: message`, at the innermost frame of user code."""
    frames = traceback.extract_tb(error.__traceback__)
    user_frames = [f for f in frames if not any(d in f.filename for d in _PLATFORM_DIRS)]
    location = ""
    if user_frames:
        frame = user_frames[-1]
        location = f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}: "
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{where}: {location}{type(error).__name__}: {message}".rstrip(": ")


@contextmanager
def user_code(where: str) -> Iterator[None]:
    """Turn any exception raised inside the block into a `UserCodeError` summary."""
    try:
        yield
    except UserCodeError:
        raise
    except Exception as error:
        raise UserCodeError(summarize_exception(where, error)) from error


def load_model_manager_class(repo_dir: Path | None = None) -> type:
    """Import `model_manager.ModelManager`, from `repo_dir` or from what is on sys.path.

    Flower puts the app folder (the repository's code) on sys.path before our apps run.
    """
    if repo_dir is not None and str(repo_dir) not in sys.path:
        sys.path.insert(0, str(repo_dir))
    module = importlib.import_module(MODEL_MANAGER_MODULE)
    manager_class = getattr(module, MODEL_MANAGER_CLASS, None)
    if not isinstance(manager_class, type):
        raise UserCodeError(f"{MODEL_MANAGER_MODULE}.py defines no class {MODEL_MANAGER_CLASS}")
    return manager_class
