"""Adaptive polling for Flower 1.41's deployment engine: waits that follow the work.

Flower's loops poll at fixed intervals: an idle SuperNode pulls every 3 s
(`flwr.supernode.start_client_internal`) and checks for its ClientApp's reply every 0.5 s, a
SuperExec looks for tasks every 1 s (`flwr.supercore.superexec.run_superexec`), and the ServerApp's
grid pulls replies every 3 s (`flwr.superlink.grid.http_grid`). A round whose training takes
0.1 s thus takes about 16 s. Flower has no setting for them (FLWR_SUPEREXEC_TASK_POLL_INTERVAL is a
constant, and the others are literals), and FLOps does not fork Flower, so this module hooks them.

Contract: each hooked loop waits `fraction` of the time since its last activity (a message pulled
or pushed, a task launched, messages sent to the grid), never less than a floor of milliseconds and
never more than Flower's own interval. Right after activity a loop answers within milliseconds; an
idle one backs off to Flower's interval, so a thousand idle learners poll as Flower's own do.

How: the hooked module's `time` name is replaced by a proxy whose `sleep` maps Flower's literal
intervals to a `Backoff` (every other call passes through), and the functions that mark activity
are wrapped. The hooks apply to the pinned Flower version only; on another version `install`
leaves Flower's polling alone and logs a warning, and `tests/test_flower_polling.py` fails until
the hooks are checked against the new version's loops.

    python -m flops.flower_polling flower-supernode ARGS...   # a SuperNode with adaptive polling
    python -m flops.flower_polling flower-superexec ARGS...   # a SuperExec likewise
"""

import functools
import importlib
import inspect
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import flwr

FLOWER_VERSION = "1.41.0"
"""The Flower version whose loops the hooks were written against (pyproject pins it)."""

SUPERNODE_MODULE = "flwr.supernode.start_client_internal"
SUPEREXEC_MODULE = "flwr.supercore.superexec.run_superexec"
GRID_MODULE = "flwr.superlink.grid.http_grid"
OBJECTS_MODULE = "flwr.supercore.inflatable.inflatable_utils"
RETRY_MODULE = "flwr.supercore.retry.retry_invoker"
TASK_STATE_MODULES = ("flwr.supercore.corestate.in_memory_corestate", "flwr.supercore.corestate.sql_corestate")
NODE_STATE_MODULES = (
    "flwr.server.superlink.linkstate.in_memory_linkstate",
    "flwr.server.superlink.linkstate.sql_linkstate",
)
NODE_ERRORS_MODULE = "flwr.server.superlink.linkstate.utils"
NODE_PATIENCE = 4
"""Heartbeat intervals a SuperLink waits before it takes a silent SuperNode for gone (Flower: 2)."""
LINKED_SUPEREXEC_IDLE_S = 10.0
"""How long an idle SuperExec beside its SuperNode waits between looks for tasks (see `hook_learner`)."""
TASK_START_S = 120.0
"""A launched app process has this long to send its first heartbeat (Flower: 30 s)..."""
TASK_SILENCE_S = 240.0
"""... and a running one may be silent this long before its task fails (Flower: 2 x 30 s)."""
FIRST_OBJECT_RETRY_S = 0.01
"""An object that is not there yet is asked for again after this, then twice as long each time..."""
OBJECT_RETRY_CAP_S = 0.25
"""... up to this (Flower: 1 s, then doubling up to 10 s, at most 500 tries)."""

log = logging.getLogger(__name__)


class Backoff:
    """A wait of `fraction` of the time since the last `reset`, within [floor, ceiling] seconds."""

    def __init__(
        self,
        floor: float,
        ceiling: float,
        fraction: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 0 < floor <= ceiling:
            raise ValueError(f"need 0 < floor <= ceiling, got floor={floor}, ceiling={ceiling}")
        self.floor, self.ceiling, self.fraction = floor, ceiling, fraction
        self._clock, self._sleep = clock, sleep
        self._last_activity = clock()

    def reset(self) -> None:
        """Something happened: the next waits are short again."""
        self._last_activity = self._clock()

    def interval(self) -> float:
        idle = self._clock() - self._last_activity
        return min(self.ceiling, max(self.floor, idle * self.fraction))

    def wait(self) -> None:
        self._sleep(self.interval())


class SleepProxy:
    """Stands in for the `time` module inside one Flower module: `sleep(x)` for a hooked literal
    interval `x` waits its Backoff instead; everything else is the real `time`."""

    def __init__(self, backoffs: dict[float, Backoff]) -> None:
        self.backoffs = backoffs

    def sleep(self, seconds: float) -> None:
        backoff = self.backoffs.get(seconds)
        if backoff is None:
            time.sleep(seconds)
        else:
            backoff.wait()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def hooked_module(name: str, attributes: tuple[str, ...]) -> Any:
    """The Flower module `name`, checked to still have the (dotted) `attributes` the hooks replace."""
    module = importlib.import_module(name)

    def present(dotted: str) -> bool:
        target: object = module
        for part in dotted.split("."):
            if not hasattr(target, part):
                return False
            target = getattr(target, part)
        return True

    missing = [attribute for attribute in attributes if not present(attribute)]
    if missing:
        raise RuntimeError(
            f"Flower {flwr.__version__}: {name} has no {', '.join(missing)}; the adaptive polling "
            f"hooks of flops.flower_polling were written for Flower {FLOWER_VERSION}: update them"
        )
    return module


def _mark_activity(
    function: Callable[..., Any], *backoffs: Backoff, when: Callable[[Any], bool] | None = None
) -> Callable[..., Any]:
    """`function`, resetting `backoffs` after each call (whose result passes `when`, if given)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = function(*args, **kwargs)
        if when is None or when(result):
            for backoff in backoffs:
                backoff.reset()
        return result

    return wrapper


def _mark_activity_before(function: Callable[..., Any], backoff: Backoff) -> Callable[..., Any]:
    """`function`, resetting `backoff` as each call starts (its waits are inside the call)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        backoff.reset()
        return function(*args, **kwargs)

    return wrapper


def hook_supernode(woken: tuple[Backoff, ...] = ()) -> SleepProxy:
    """The SuperNode's pull loop (3 s when idle) and its wait for the ClientApp's reply (0.5 s);
    a pulled message also resets the `woken` back-offs (a SuperExec in the same process)."""
    module = hooked_module(SUPERNODE_MODULE, ("time", "_pull_and_store_message", "_push_messages"))
    pull = Backoff(floor=0.02, ceiling=3.0)  # towards the SuperLink: its load matters
    reply = Backoff(floor=0.005, ceiling=0.5)  # the node's own in-memory state
    module._pull_and_store_message = _mark_activity(
        module._pull_and_store_message, pull, reply, *woken, when=lambda run_id: run_id is not None
    )
    module._push_messages = _mark_activity(module._push_messages, pull)
    proxy = SleepProxy({3: pull, 0.5: reply})
    module.time = proxy
    hook_task_patience()  # the SuperNode's runtime API holds its ClientApp tasks' tokens
    return proxy


def hook_superexec(idle_ceiling: float | None = None) -> SleepProxy:
    """The SuperExec's task loop (1 s by default, FLWR_SUPEREXEC_TASK_POLL_INTERVAL); with
    `idle_ceiling`, an idle loop backs off to that instead (see `hook_learner`).

    Also shows the output of the ServerApp processes it starts, which Flower's plugin sends to
    /dev/null (`AutoExecPlugin.visible_output_task_types`): a ServerApp that dies before it writes
    its summary would otherwise leave no trace of why.
    """
    module = hooked_module(
        SUPEREXEC_MODULE,
        ("time", "_handle_launch_result", "_get_task_poll_interval", "AutoExecPlugin.visible_output_task_types"),
    )
    from flwr.supercore.constant import TaskType

    plugin = module.AutoExecPlugin
    plugin.visible_output_task_types = frozenset({*plugin.visible_output_task_types, TaskType.SERVER_APP})
    interval = module._get_task_poll_interval()
    tasks = Backoff(floor=min(0.01, interval), ceiling=max(interval, idle_ceiling or interval))
    module._handle_launch_result = _mark_activity(module._handle_launch_result, tasks)
    proxy = SleepProxy({interval: tasks})
    module.time = proxy
    return proxy


def hook_learner() -> None:
    """A SuperNode with its SuperExec in the same process (`learner.warm_clientapp`).

    A SuperNode's ClientApp tasks appear only when it has pulled a message, so its SuperExec, which
    looks for tasks over the SuperNode's own Runtime API (a TLS request each time), need not look
    every second while nothing was pulled: a pulled message wakes it (polls after 10 ms again), and
    idle it waits up to LINKED_SUPEREXEC_IDLE_S. 50 idle learners on 2 cores spent about a core on
    those once-a-second looks, and the SuperLink then answered their heartbeats too late.
    """
    superexec = hook_superexec(idle_ceiling=LINKED_SUPEREXEC_IDLE_S)
    hook_supernode(woken=tuple(superexec.backoffs.values()))
    _installed.update({"flower-supernode", "flower-superexec"})


def hook_grid() -> SleepProxy:
    """The ServerApp grid's wait for replies (3 s between pulls)."""
    module = hooked_module(GRID_MODULE, ("time", "HttpGrid.send_and_receive"))
    replies = Backoff(floor=0.01, ceiling=3.0)
    module.HttpGrid.send_and_receive = _mark_activity_before(module.HttpGrid.send_and_receive, replies)
    proxy = SleepProxy({3: replies})
    module.time = proxy
    return proxy


def hook_object_pulls() -> None:
    """Message objects not there yet are asked for again after 10 ms, not Flower's 1 s.

    A SuperNode makes a message's task visible before it has pulled the message's objects from the
    SuperLink, and a reply's message reaches the SuperLink before its objects: a fast SuperExec or
    ServerApp asks too early, and Flower's retry of an object (`pull_objects`, exponential from
    PULL_INITIAL_BACKOFF = 1 s, doubling up to 10 s) then costs a second or more, and three such
    waits follow each other on a message's way (ServerApp -> SuperLink -> SuperNode -> ClientApp).
    Retries now start after 10 ms and double up to 250 ms; the number of tries is no longer bounded
    (500 tries of 250 ms would give up on a large model's slow upload), the time still is: Flower's
    PULL_MAX_TIME, 2 hours.
    """
    module = hooked_module(OBJECTS_MODULE, ("pull_objects", "pull_and_inflate_object_from_tree"))
    for function in (module.pull_objects, module.pull_and_inflate_object_from_tree):
        defaults = function.__kwdefaults__ or {}
        if not {"initial_backoff", "backoff_cap", "max_tries_per_object", "max_time"} <= defaults.keys():
            raise RuntimeError(
                f"Flower {flwr.__version__}: {OBJECTS_MODULE}.{function.__name__} has other retry settings; "
                f"the hooks of flops.flower_polling were written for Flower {FLOWER_VERSION}: update them"
            )
        defaults.update(initial_backoff=FIRST_OBJECT_RETRY_S, backoff_cap=OBJECT_RETRY_CAP_S, max_tries_per_object=None)


def hook_timeouts_retried() -> None:
    """A request that timed out is tried again, as a refused connection is.

    Flower's HTTP retry (`make_simple_http_retry_invoker`) gives up on every error whose text
    names SSL or TLS, to stop at once on a wrong certificate; but an overloaded SuperLink's TLS
    handshake that times out ("_ssl.c: The handshake operation timed out") is transient, and giving
    up on it failed a whole training of 50 learners on one machine. Every `RetryInvoker` made in
    this process now treats a timeout (httpx.TimeoutException) as recoverable.
    """
    module = hooked_module(RETRY_MODULE, ("RetryInvoker.__init__",))
    original_init = module.RetryInvoker.__init__
    if "should_giveup" not in inspect.signature(original_init).parameters:
        raise RuntimeError(
            f"Flower {flwr.__version__}: RetryInvoker takes no should_giveup; the hooks of "
            f"flops.flower_polling were written for Flower {FLOWER_VERSION}: update them"
        )

    @functools.wraps(original_init)
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        retry_timeouts(self)

    module.RetryInvoker.__init__ = init


def hook_task_patience() -> None:
    """An app process of a loaded machine is not taken for dead: more time for its heartbeats.

    A SuperLink (for its ServerApp) and a SuperNode (for its ClientApp) hold each app process's
    task token in their corestate: a task not heard from within 30 s of its launch goes back to
    pending (another process is launched), and a running one silent for 60 s fails with "No
    heartbeat received from the task". Both waits come from two constants the corestate modules
    import (`HEARTBEAT_DEFAULT_INTERVAL`, `HEARTBEAT_PATIENCE`; the apps' own heartbeat interval is
    elsewhere and stays). 50 learners starting on 2 cores (load 90) made a ServerApp miss both: it
    took 65 s from launch to its first request, and its successor's heartbeat came too late in
    round 1, which failed the training. The waits are now TASK_START_S and TASK_SILENCE_S. An app
    that fails still reports so at once (Flower's handlers push the failed task's output); only a
    process killed outright is noticed later than before, after TASK_SILENCE_S.
    """
    for name in TASK_STATE_MODULES:
        module = hooked_module(name, ("HEARTBEAT_DEFAULT_INTERVAL", "HEARTBEAT_PATIENCE"))
        module.HEARTBEAT_DEFAULT_INTERVAL = TASK_START_S
        module.HEARTBEAT_PATIENCE = TASK_SILENCE_S / TASK_START_S


def hook_node_patience() -> None:
    """A SuperNode of a loaded machine is not taken for gone: NODE_PATIENCE heartbeat intervals.

    A SuperNode tells the SuperLink its heartbeat interval (30 s) and sends one about every 20 s,
    each call with a 5 s time-out; after 2 intervals without one the SuperLink answers every
    message for that node with "Node Unavailable", which failed rounds of 50 learners on 2 cores
    whose SuperLink answered late. Now the SuperLink waits NODE_PATIENCE intervals (2 min); a
    learner that really died is noticed that much later, and a round with enough replies closes
    after its straggler grace anyway.
    """
    for name in NODE_STATE_MODULES:
        hooked_module(name, ("HEARTBEAT_PATIENCE",)).HEARTBEAT_PATIENCE = NODE_PATIENCE
    errors = hooked_module(NODE_ERRORS_MODULE, ("NODE_UNAVAILABLE_ERROR_REASON",))
    # Flower's reason names its patience ("within 2 x its expected interval"): name ours.
    errors.NODE_UNAVAILABLE_ERROR_REASON = re.sub(
        r"within \d+ ", f"within {NODE_PATIENCE} ", errors.NODE_UNAVAILABLE_ERROR_REASON
    )


def hook_superlink() -> None:
    """The SuperLink's patience with its app tasks (the ServerApp) and its SuperNodes."""
    hook_task_patience()
    hook_node_patience()


def retry_timeouts(invoker: Any) -> None:
    """Make one (existing) RetryInvoker try a timed-out request again (see `hook_timeouts_retried`)."""
    import httpx

    gives_up = getattr(invoker, "should_giveup", None)
    if gives_up is not None and not getattr(gives_up, "retries_timeouts", False):

        def should_giveup(error: Exception) -> bool:
            return not isinstance(error, httpx.TimeoutException) and bool(gives_up(error))

        should_giveup.retries_timeouts = True  # type: ignore[attr-defined]
        invoker.should_giveup = should_giveup


HOOKS: dict[str, Callable[[], object]] = {
    "flower-supernode": hook_supernode,
    "flower-superexec": hook_superexec,
    "grid": hook_grid,
    "object-pulls": hook_object_pulls,
    "timeouts-retried": hook_timeouts_retried,
    "task-patience": hook_task_patience,
    "learner": hook_learner,
    "superlink": hook_superlink,
}
# Installed with every component: each hooked process pulls message objects and retries requests.
TRANSPORT_HOOKS = ("object-pulls", "timeouts-retried")
# Flower's console scripts this module runs with their hook: (module, function).
ENTRY_POINTS = {
    "flower-supernode": ("flwr.supernode.cli", "flower_supernode"),
    "flower-superexec": ("flwr.supercore.cli", "flower_superexec"),
}
_installed: set[str] = set()


def pinned_flower(what: str) -> bool:
    """Whether this is the Flower version the hooks were written for; if not, warn that `what` stays Flower's."""
    if flwr.__version__ == FLOWER_VERSION:
        return True
    log.warning("Flower %s is not %s: %s stays as Flower has it", flwr.__version__, FLOWER_VERSION, what)
    return False


def install(component: str) -> bool:
    """Hook `component` (a key of HOOKS) and the TRANSPORT_HOOKS in this process, once; False
    (Flower's polling) on another Flower version than the pinned one."""
    if not pinned_flower(f"the polling of {component}"):
        return False
    for name in (component, *TRANSPORT_HOOKS):
        if name not in _installed:
            HOOKS[name]()
            _installed.add(name)
    return True


def main(argv: list[str]) -> None:
    """Run Flower's console script argv[0] (a key of ENTRY_POINTS) with its hook."""
    if not argv or argv[0] not in ENTRY_POINTS:
        raise SystemExit(f"usage: python -m flops.flower_polling {{{'|'.join(ENTRY_POINTS)}}} ARGS...")
    install(argv[0])
    module, function = ENTRY_POINTS[argv[0]]
    sys.argv = argv
    getattr(importlib.import_module(module), function)()


if __name__ == "__main__":
    main(sys.argv[1:])
