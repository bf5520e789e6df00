"""Adaptive polling hooks on Flower's loops: the back-off, the version guard, and the hooks in place."""

import importlib
import inspect
import subprocess
import sys
import tomllib
from pathlib import Path

import flwr
import pytest

from flops import flower_polling
from flops.flower_polling import FLOWER_VERSION, Backoff, SleepProxy

ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_waits_short_after_activity_and_back_off_to_the_ceiling_when_idle() -> None:
    clock = FakeClock()
    backoff = Backoff(floor=0.02, ceiling=3.0, fraction=0.2, clock=clock, sleep=clock.sleep)
    for _ in range(40):
        backoff.wait()
    assert clock.slept[0] == pytest.approx(0.02)
    assert clock.slept == sorted(clock.slept), "an idle loop never waits less than before"
    assert clock.slept[-1] == pytest.approx(3.0), "idle long enough, it polls at Flower's interval"
    idle = clock.now - 100.0
    assert len(clock.slept) > 20 and idle < 60, "40 polls: a fixed 3 s would take 120 s"
    backoff.reset()
    backoff.wait()
    assert clock.slept[-1] == pytest.approx(0.02), "activity makes the next wait short again"
    backoff.reset()
    clock.now += 5.0
    assert backoff.interval() == pytest.approx(1.0), "a wait is a fifth of the time since the activity"


def test_a_floor_above_the_ceiling_is_refused() -> None:
    with pytest.raises(ValueError, match="floor"):
        Backoff(floor=2.0, ceiling=1.0)


def test_the_proxy_replaces_only_the_hooked_intervals() -> None:
    clock = FakeClock()
    proxy = SleepProxy({3: Backoff(0.01, 3.0, clock=clock, sleep=clock.sleep)})
    proxy.sleep(3)
    proxy.sleep(0.001)  # not hooked: the real time.sleep
    assert clock.slept == [pytest.approx(0.01)]
    assert proxy.monotonic is __import__("time").monotonic


def test_flower_is_the_version_the_hooks_were_written_for() -> None:
    """Fails on a Flower upgrade: check the hooked loops below against the new version, then bump."""
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"flwr=={FLOWER_VERSION}" in [pin.replace(" ", "") for pin in pins]
    assert flwr.__version__ == FLOWER_VERSION


@pytest.mark.parametrize(
    ("module", "function", "literal"),
    [
        (flower_polling.SUPERNODE_MODULE, "start_client_internal", "time.sleep(3)"),
        (flower_polling.SUPERNODE_MODULE, "_push_messages", "time.sleep(0.5)"),
        (flower_polling.SUPEREXEC_MODULE, "run_superexec", "time.sleep(task_poll_interval)"),
        (flower_polling.GRID_MODULE, "HttpGrid.send_and_receive", "time.sleep(3)"),
    ],
)
def test_the_hooked_loops_still_sleep_as_the_hooks_expect(module: str, function: str, literal: str) -> None:
    """A loop whose interval changed would silently keep Flower's polling: fail loudly instead."""
    target: object = importlib.import_module(module)
    for part in function.split("."):
        target = getattr(target, part)
    assert literal in inspect.getsource(target), f"{module}.{function} no longer calls {literal}"


LINKED_PROCESS = """
import importlib, time
from flops import flower_polling
supernode = importlib.import_module(flower_polling.SUPERNODE_MODULE)
supernode._pull_and_store_message = lambda **_: 7  # a pulled message of run 7, without a SuperLink
assert flower_polling.install("learner")
assert flower_polling.install("flower-superexec")  # already hooked with the learner: not twice
superexec = importlib.import_module(flower_polling.SUPEREXEC_MODULE)
(tasks,) = superexec.time.backoffs.values()
time.sleep(0.3)
before = tasks.interval()
supernode._pull_and_store_message()
print(tasks.ceiling, before, tasks.interval())
"""


def test_a_learners_superexec_waits_long_when_idle_and_wakes_with_a_pulled_message() -> None:
    done = subprocess.run([sys.executable, "-c", LINKED_PROCESS], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ceiling, idle, woken = (float(value) for value in done.stdout.split())
    assert ceiling == flower_polling.LINKED_SUPEREXEC_IDLE_S > 1.0, "idle: longer than Flower's 1 s"
    assert idle >= 0.05, "idle for 0.3 s, the task loop already waits longer than its floor"
    assert woken == pytest.approx(0.01, abs=0.005), "the SuperNode's pulled message wakes the task loop"


TASK_PATIENCE = """
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState
from flops import flower_polling
assert flower_polling.install("task-patience")
state = InMemoryNodeState(ObjectStoreFactory().store())  # a SuperNode's; a SuperLink's shares the code
task_id = state.create_task(task_type="serverapp", run_id=1)
assert state.claim_task(task_id) and state.activate_task(task_id)
record = state.task_token_store[task_id]
print((record.active_until - record.active_until.now(record.active_until.tzinfo)).total_seconds())
"""


NODE_PATIENCE = """
import time, types
from flwr.server.superlink.linkstate import utils
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.supercore.object_store import ObjectStoreFactory
from flops import flower_polling
assert flower_polling.install("superlink")
state = InMemoryLinkState(types.SimpleNamespace(), ObjectStoreFactory().store())  # the SuperLink's own state
node = state.create_node("owner", "owner", b"public key", 30.0)
assert state.activate_node(node, 30.0)  # a SuperNode's heartbeat interval: 30 s
print(state.nodes[node].online_until - time.time(), utils.NODE_UNAVAILABLE_ERROR_REASON)
"""


def test_the_superlink_waits_longer_for_a_silent_supernode_and_says_so() -> None:
    done = subprocess.run([sys.executable, "-c", NODE_PATIENCE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    online_for, reason = done.stdout.split(" ", 1)
    assert float(online_for) == pytest.approx(flower_polling.NODE_PATIENCE * 30.0, abs=5), "Flower's own: 60 s"
    assert f"within {flower_polling.NODE_PATIENCE} " in reason and "Node Unavailable" in reason


def test_a_silent_app_task_keeps_its_token_for_the_longer_patience() -> None:
    """A running task's token outlives Flower's 60 s by the hooked patience (the corestate's own code)."""
    done = subprocess.run([sys.executable, "-c", TASK_PATIENCE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) == pytest.approx(flower_polling.TASK_SILENCE_S, abs=5)


def test_a_missing_hooked_function_fails_loudly() -> None:
    with pytest.raises(RuntimeError, match="update them"):
        flower_polling.hooked_module(flower_polling.GRID_MODULE, ("no_such_function",))


def test_another_flower_version_keeps_flowers_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flwr, "__version__", "9.9.9")
    assert flower_polling.install("flower-supernode") is False
    assert not isinstance(importlib.import_module(flower_polling.SUPERNODE_MODULE).time, SleepProxy)


HOOKED_PROCESS = """
import importlib, time
from flops import flower_polling
supernode = importlib.import_module(flower_polling.SUPERNODE_MODULE)
supernode._pull_and_store_message = lambda **_: 7  # a pulled message of run 7, without a SuperLink
objects = importlib.import_module(flower_polling.OBJECTS_MODULE)
pulls = (objects.pull_objects, objects.pull_and_inflate_object_from_tree)
assert all(f.__kwdefaults__["initial_backoff"] == 1 for f in pulls), "Flower's first retry of an object: 1 s"
for component in ("flower-supernode", "flower-superexec", "grid"):
    assert flower_polling.install(component)
    assert flower_polling.install(component)  # once per process
for name in flower_polling.TASK_STATE_MODULES:  # the SuperNode's hook gives its ClientApp tasks more time
    state = importlib.import_module(name)
    assert state.HEARTBEAT_DEFAULT_INTERVAL == flower_polling.TASK_START_S
    assert state.HEARTBEAT_DEFAULT_INTERVAL * state.HEARTBEAT_PATIENCE == flower_polling.TASK_SILENCE_S
pull = supernode.time.backoffs[3]
time.sleep(0.5)
idle = pull.interval()
assert supernode._pull_and_store_message() == 7
after_message = pull.interval()
started = time.monotonic()
supernode.time.sleep(3)
waited = time.monotonic() - started
grid = importlib.import_module(flower_polling.GRID_MODULE)
assert grid.HttpGrid.send_and_receive.__wrapped__
superexec = importlib.import_module(flower_polling.SUPEREXEC_MODULE)
assert 1.0 in superexec.time.backoffs
assert "flwr-serverapp" in superexec.AutoExecPlugin.visible_output_task_types
assert all(f.__kwdefaults__["initial_backoff"] == flower_polling.FIRST_OBJECT_RETRY_S for f in pulls)
assert all(f.__kwdefaults__["max_tries_per_object"] is None and f.__kwdefaults__["max_time"] == 7200 for f in pulls)
import httpx
from flwr.supercore.retry import make_simple_http_retry_invoker
retry = make_simple_http_retry_invoker()
assert not retry.should_giveup(httpx.ConnectTimeout("_ssl.c:989: The handshake operation timed out"))
assert retry.should_giveup(httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"))
print(idle, after_message, waited)
"""


def test_the_hooks_install_in_a_process_and_a_pulled_message_shortens_the_wait() -> None:
    done = subprocess.run([sys.executable, "-c", HOOKED_PROCESS], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    idle, after_message, waited = (float(value) for value in done.stdout.split())
    assert idle >= 0.1, "idle for 0.5 s, the pull loop waits longer than its floor"
    assert after_message == pytest.approx(0.02, abs=0.01)
    assert waited < 0.5, "Flower's literal 3 s became a short wait"
