"""An MLflow that does nothing, for user code that must not track.

FLOps repositories may `import mlflow` in `model_manager.py` and call `mlflow.autolog()`,
`mlflow.log_metric(...)`, `with mlflow.start_run(): ...` at import time or inside `fit_model`.
Learners never track (only parameters and aggregate metrics leave a node) and their
environment has no MLflow. `install()` puts a finder first on `sys.meta_path` that answers
`import mlflow` and every `import mlflow.<anything>` with an inert module, also where the
real MLflow is importable, so such code runs and nothing is logged, written or sent: this
module imports nothing beyond the standard library and opens no file or socket.

What the inert MLflow gives:

- `autolog`, `log_param` (returns the value), `log_params`, `log_metric(s)`, `log_artifact(s)`,
  `log_dict`, `log_text`, `log_figure`, `log_image`, `log_table`, `log_input`, `set_tag(s)`,
  `delete_tag`, `set_experiment` (an experiment record), `set_tracking_uri`/`get_tracking_uri`,
  `set_registry_uri`/`get_registry_uri`, `start_run` (a run record and context manager),
  `end_run`, `active_run` (the innermost started run, else None), `last_active_run`: all no-ops.
- Any other attribute of any `mlflow.*` module: a lower-case name is an inert callable
  (`mlflow.sklearn.autolog()`, `mlflow.models.infer_signature(x, y)`); a CapWords name is a
  class that takes any arguments and whose methods are inert (`mlflow.MlflowClient()`,
  `class M(mlflow.pyfunc.PythonModel)`); a name ending in `Exception` or `Error` is an
  exception class (so `except mlflow.exceptions.MlflowException` works).
- Inert values absorb attribute access, calls, indexing and `with`; they are falsy, empty and
  iterate over nothing.

Limits: nothing can be read back. `load_model`, `get_run`, `search_runs`, `MlflowClient()`
methods return inert values, not models or data; `x is None` checks on them are False;
constants (`mlflow.utils.mlflow_tags.MLFLOW_RUN_NAME`) are inert values, not strings; the
module has no distribution metadata (`importlib.metadata.version("mlflow")` still fails where
MLflow is not installed) and says `__version__ == "0.0.0+flops.inert"`. Libraries that look
for MLflow with `importlib.util.find_spec` find this one and get inert calls too.
"""

import importlib.abc
import importlib.machinery
import itertools
import sys
import threading
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

MODULE = "mlflow"
VERSION = "0.0.0+flops.inert"
# Attribute names that are modules in the real MLflow: the same names give inert modules here.
SUBMODULES = frozenset(
    {
        "artifacts", "catboost", "client", "data", "entities", "exceptions", "fastai", "genai", "h2o",
        "keras", "langchain", "lightgbm", "metrics", "models", "onnx", "openai", "paddle", "pmdarima",
        "projects", "prophet", "pyfunc", "pytorch", "sentence_transformers", "sklearn", "spacy", "spark",
        "statsmodels", "store", "system_metrics", "tensorflow", "tracking", "transformers", "types",
        "utils", "xgboost",
    }
)  # fmt: skip


def _is_mlflow(name: str) -> bool:
    return name == MODULE or name.startswith(MODULE + ".")


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


class Inert:
    """Stands for any MLflow value or function: calls, attributes and items give more of it."""

    __slots__ = ("_flops_path",)

    def __init__(self, path: str = MODULE) -> None:
        object.__setattr__(self, "_flops_path", path)

    def __getattr__(self, name: str) -> "Inert":
        if _is_dunder(name):
            raise AttributeError(name)
        return Inert(f"{self._flops_path}.{name}")

    def __setattr__(self, name: str, value: object) -> None:
        pass

    def __call__(self, *args: object, **kwargs: object) -> "Inert":
        return Inert(f"{self._flops_path}()")

    def __getitem__(self, key: object) -> "Inert":
        return Inert(f"{self._flops_path}[{key!r}]")

    def __setitem__(self, key: object, value: object) -> None:
        pass

    def __bool__(self) -> bool:
        return False

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> Iterator[Any]:
        return iter(())

    def __contains__(self, item: object) -> bool:
        return False

    def __enter__(self) -> "Inert":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __repr__(self) -> str:
        return f"<inert {self._flops_path}>"


class _InertMeta(type):
    """Class attributes nobody defined are inert (`RunStatus.FINISHED`)."""

    def __getattr__(cls, name: str) -> Inert:
        if _is_dunder(name):
            raise AttributeError(name)
        return Inert(f"{cls.__module__}.{cls.__qualname__}.{name}")


class InertClass(metaclass=_InertMeta):
    """Base of every CapWords name: takes any arguments; undefined methods are inert."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __getattr__(self, name: str) -> Inert:
        if _is_dunder(name):
            raise AttributeError(name)
        return Inert(f"{type(self).__module__}.{type(self).__qualname__}().{name}")


class MlflowException(Exception):
    """Base of every `...Exception` / `...Error` name of the inert MLflow."""

    def __init__(self, message: object = "", *args: object, **kwargs: object) -> None:
        super().__init__(message, *args)
        self.message = str(message)


class Record(types.SimpleNamespace):
    """A run's `info`/`data` or an experiment: the fields set, anything else inert."""

    def __getattr__(self, name: str) -> Inert:
        if _is_dunder(name):
            raise AttributeError(name)
        return Inert(f"{type(self).__name__}.{name}")


class InertRun:
    """What `start_run` returns: a run record usable as a context manager."""

    def __init__(self, run_id: str, experiment_id: str, run_name: str) -> None:
        self.info = Record(
            run_id=run_id, run_uuid=run_id, run_name=run_name, experiment_id=experiment_id, status="RUNNING",
            start_time=int(time.time() * 1000), end_time=None, artifact_uri="", lifecycle_stage="active", user_id="",
        )  # fmt: skip
        self.data = Record(params={}, metrics={}, tags={})
        self.inputs = Record(dataset_inputs=[])

    def __enter__(self) -> "InertRun":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        _end_run(self, "FAILED" if exc_type else "FINISHED")

    def __repr__(self) -> str:
        return f"<inert Run {self.info.run_id}>"


class _RunState:
    """The inert fluent API's state: started runs, experiment, URIs (process-wide, like MLflow's)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: list[InertRun] = []
        self.last: InertRun | None = None
        self.experiment = Record(experiment_id="0", name="Default", artifact_location="", lifecycle_stage="active")
        self.tracking_uri = "inert://flops"
        self.registry_uri = "inert://flops"
        self.ids = itertools.count(1)


_STATE = _RunState()


def _end_run(run: InertRun | None, status: str) -> None:
    with _STATE.lock:
        if run is None and _STATE.runs:
            run = _STATE.runs[-1]
        if run is None:
            return
        if run in _STATE.runs:
            _STATE.runs.remove(run)
        run.info.status, run.info.end_time = status, int(time.time() * 1000)
        _STATE.last = run


# --- the fluent API of `mlflow` ------------------------------------------------------------


def autolog(*args: object, **kwargs: object) -> None:
    return None


def log_param(key: str, value: Any, *args: object, **kwargs: object) -> Any:
    return value


def _nothing(*args: object, **kwargs: object) -> None:
    return None


def set_experiment(experiment_name: str | None = None, experiment_id: str | None = None, **kwargs: object) -> Record:
    with _STATE.lock:
        _STATE.experiment = Record(
            experiment_id=str(experiment_id or "0"), name=experiment_name or "Default",
            artifact_location="", lifecycle_stage="active", tags={},
        )  # fmt: skip
        return _STATE.experiment


def set_tracking_uri(uri: object) -> None:
    _STATE.tracking_uri = str(uri)


def get_tracking_uri() -> str:
    return _STATE.tracking_uri


def set_registry_uri(uri: object) -> None:
    _STATE.registry_uri = str(uri)


def get_registry_uri() -> str:
    return _STATE.registry_uri


def start_run(
    run_id: str | None = None,
    experiment_id: str | None = None,
    run_name: str | None = None,
    *args: object,
    **kwargs: object,
) -> InertRun:
    with _STATE.lock:
        number = next(_STATE.ids)
        run = InertRun(
            run_id or f"inert-{number}",
            str(experiment_id or _STATE.experiment.experiment_id),
            run_name or f"inert-run-{number}",
        )
        _STATE.runs.append(run)
        _STATE.last = run
        return run


def end_run(status: str = "FINISHED", *args: object, **kwargs: object) -> None:
    _end_run(None, status)


def active_run() -> InertRun | None:
    with _STATE.lock:
        return _STATE.runs[-1] if _STATE.runs else None


def last_active_run() -> InertRun | None:
    return _STATE.last


_NO_OPS = (
    "log_params", "log_metric", "log_metrics", "log_artifact", "log_artifacts", "log_dict", "log_text",
    "log_figure", "log_image", "log_table", "log_input", "log_inputs", "log_outputs", "set_tag", "set_tags",
    "delete_tag", "enable_system_metrics_logging", "disable_system_metrics_logging", "flush_async_logging",
)  # fmt: skip
_FLUENT: dict[str, Any] = {
    "autolog": autolog, "log_param": log_param, "set_experiment": set_experiment,
    "set_tracking_uri": set_tracking_uri, "get_tracking_uri": get_tracking_uri,
    "set_registry_uri": set_registry_uri, "get_registry_uri": get_registry_uri,
    "start_run": start_run, "end_run": end_run, "active_run": active_run, "last_active_run": last_active_run,
    **dict.fromkeys(_NO_OPS, _nothing),
}  # fmt: skip


# --- modules and the finder -----------------------------------------------------------------


class InertModule(types.ModuleType):
    """`mlflow` or one of its submodules: every attribute nobody defined is inert."""

    def __init__(self, name: str) -> None:
        super().__init__(name, f"Inert stand-in for {name} (FLOps: tracking is off here).")
        self.__path__: list[str] = []  # a package: `import mlflow.x.y` goes on to the finder
        self.__package__ = name
        self.__flops_inert__ = True
        self.autolog = autolog  # every flavor has one: mlflow.sklearn.autolog(), ...
        if name == MODULE:
            self.__version__ = VERSION
            self.__dict__.update(_FLUENT)

    def __getattr__(self, name: str) -> Any:
        if _is_dunder(name):
            raise AttributeError(f"inert module {self.__name__!r} has no attribute {name!r}")
        value = _attribute(self, name)
        setattr(self, name, value)  # the same object every time
        return value


_MODULES: dict[str, InertModule] = {}
_MODULES_LOCK = threading.RLock()


def _module(name: str) -> InertModule:
    """The one inert module of this process named `name` (created, and set on its parent)."""
    with _MODULES_LOCK:
        module = _MODULES.get(name)
        if module is None:
            module = _MODULES[name] = InertModule(name)
            parent, _, child = name.rpartition(".")
            if parent:
                types.ModuleType.__setattr__(_module(parent), child, module)
        return module


def _attribute(module: InertModule, name: str) -> Any:
    qualified = f"{module.__name__}.{name}"
    if name in SUBMODULES:
        return _module(qualified)
    if name[0].isupper() and name.endswith(("Exception", "Error")):
        if name == "MlflowException":
            return MlflowException
        return type(name, (MlflowException,), {"__module__": module.__name__, "__qualname__": name})
    if name[0].isupper() and any(ch.islower() for ch in name):
        return _InertMeta(name, (InertClass,), {"__module__": module.__name__, "__qualname__": name})
    return Inert(qualified)


class _Loader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _module(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        return None


class InertFinder(importlib.abc.MetaPathFinder):
    """Answers `mlflow` and `mlflow.*` imports with inert modules."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not _is_mlflow(fullname):
            return None
        return importlib.machinery.ModuleSpec(fullname, _LOADER, is_package=True)


_LOADER = _Loader()
_FINDER = InertFinder()


def installed() -> bool:
    return _FINDER in sys.meta_path


def is_inert(module: object) -> bool:
    return isinstance(module, InertModule)


def install() -> None:
    """From now on, in this process, `import mlflow` and `import mlflow.*` give the inert MLflow.

    Real MLflow modules imported before are dropped from `sys.modules` (what already holds
    them keeps them). Idempotent; the finder is moved to the front if something went before it.
    """
    with _MODULES_LOCK:
        if _FINDER in sys.meta_path:
            sys.meta_path.remove(_FINDER)
        sys.meta_path.insert(0, _FINDER)
        for name in [name for name, module in sys.modules.items() if _is_mlflow(name) and not is_inert(module)]:
            del sys.modules[name]


def uninstall() -> None:
    """Stop answering MLflow imports and drop the inert modules from `sys.modules`."""
    with _MODULES_LOCK:
        if _FINDER in sys.meta_path:
            sys.meta_path.remove(_FINDER)
        for name in [name for name, module in sys.modules.items() if _is_mlflow(name) and is_inert(module)]:
            del sys.modules[name]


@contextmanager
def inert_mlflow() -> Iterator[None]:
    """The inert MLflow inside the block only; real MLflow modules imported before come back after.

    What user code imports inside the block keeps the inert modules it bound (`import mlflow`
    at the top of `model_manager.py`). Where it was installed already (a learner), it stays.
    """
    with _MODULES_LOCK:
        was_installed = installed()
        stashed = {name: module for name, module in sys.modules.items() if _is_mlflow(name) and not is_inert(module)}
        install()
    try:
        yield
    finally:
        if not was_installed:
            with _MODULES_LOCK:
                uninstall()
                sys.modules.update(stashed)
