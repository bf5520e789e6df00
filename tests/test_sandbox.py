"""User code in its sandbox, tested as the attack: what a hostile repository or requirement tries.

User code (model_manager.py, a ClientApp, a requirement's setup.py) tries to read the admin
token, the manager's environment, the store, another project's run folder and another node's
data, and prints what it got; the tests assert it got nothing, through real bubblewrap
sandboxes, the real local orchestrator, the builder's real install step and one real
training through the manager, whose customer-visible logs hold no secret.
"""

import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from flops.config import ensure_private_home
from flops.net import wait_until
from flops.runtime_env import FLOWER_OFFLINE_ENV, actor_env
from flops.sandbox import Sandbox, SandboxSettings, SandboxUnavailable, python_paths, runtime_paths
from flops_manager.orchestration.base import OrchestratorError, ServiceSpec
from flops_manager.orchestration.docker import CONTAINER_USER, DockerOrchestrator, is_root_user
from flops_manager.orchestration.local import LocalOrchestrator
from image_builder.environments import BuildEnvironmentError, IndexSettings, Installer, builder_uv
from tests.conftest import EXAMPLES
from tests.manager_process import FINAL, Manager, make_git_repo, sla

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another uid needs root")
SANDBOX_UID = 65534
MARK = "FLOPS-ATTACK "


# --- the attack ---------------------------------------------------------------------------


def attack_code(targets: dict[str, str], pids: list[int], write_to: list[str]) -> str:
    """Python that tries every target (read a file, list a folder), writes, and prints what it got."""
    return textwrap.dedent(f"""
        import json, os
        found = {{}}
        for name, path in {targets!r}.items():
            try:
                if os.path.isdir(path):
                    found[name] = "LISTED " + ",".join(sorted(os.listdir(path)))
                else:
                    with open(path, encoding="utf-8", errors="replace") as handle:
                        found[name] = "READ " + handle.read(500)
            except OSError as error:
                found[name] = "DENIED " + type(error).__name__
        for pid in {pids!r}:
            try:
                with open(f"/proc/{{pid}}/environ", "rb") as handle:
                    found[f"environ-{{pid}}"] = "READ " + handle.read().decode(errors="replace")
            except OSError as error:
                found[f"environ-{{pid}}"] = "DENIED " + type(error).__name__
        for path in {write_to!r}:
            try:
                with open(path, "w") as handle:
                    handle.write("pwned")
                found["write " + path] = "WROTE"
            except OSError as error:
                found["write " + path] = "DENIED " + type(error).__name__
        found["env"] = dict(os.environ)
        found["uid"] = os.getuid()
        found["processes"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        print({MARK!r} + json.dumps(found), flush=True)
    """)


def attack_reports(text: str) -> list[dict[str, Any]]:
    return [json.loads(line.split(MARK, 1)[1]) for line in text.splitlines() if MARK in line]


class Victims:
    """A FLOPS_HOME as the manager keeps it, with secrets where an attacker looks for them.

    Its mode is 0755 on purpose: the sandbox must hide it by its mounts, not by permissions.
    """

    def __init__(self, home: Path) -> None:
        self.home = home
        self.token = "flops_" + secrets.token_urlsafe(24)
        self.victim_log = "victim-secret-" + secrets.token_hex(8)
        self.node_secret = "node-2-secret-" + secrets.token_hex(8)
        self.store_secret = "store-secret-" + secrets.token_hex(8)
        write(home / "manager" / "admin-token", self.token, 0o600)
        write(home / "store" / "projects.json", self.store_secret, 0o644)
        write(home / "projects" / "victim" / "logs" / "learner-node-1.log", self.victim_log, 0o644)
        write(home / "nodes" / "node-1" / "digits" / "part.csv", "1,2,3\n", 0o644)
        write(home / "nodes" / "node-2" / "digits" / "part.csv", self.node_secret, 0o644)
        for folder in (home, *home.rglob("*")):
            if folder.is_dir():
                folder.chmod(0o755)

    def targets(self) -> dict[str, str]:
        return targets_in(self.home)

    def secrets(self) -> list[str]:
        return [self.token, self.victim_log, self.node_secret, self.store_secret]


def targets_in(home: Path) -> dict[str, str]:
    """Where the attack looks, in a FLOPS_HOME: the token, the store, another project, another node."""
    return {
        "admin token": str(home / "manager" / "admin-token"),
        "store": str(home / "store"),
        "store file": str(home / "store" / "projects.json"),
        "other project's run": str(home / "projects" / "victim" / "logs" / "learner-node-1.log"),
        "other project's folder": str(home / "projects" / "victim"),
        "other node's data": str(home / "nodes" / "node-2" / "digits" / "part.csv"),
        "other node's folder": str(home / "nodes" / "node-2"),
        "the manager's cache": str(Path.home() / ".cache"),
    }


def write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


@pytest.fixture
def victims(tmp_path: Path) -> Victims:
    return Victims(tmp_path / "flops-home")


# All a sandboxed process's environment may hold besides what its spec gives it (PWD: bwrap's).
ACTOR_ENV = {*actor_env("/h"), "PWD"}


def assert_nothing_leaked(report: dict[str, Any], victims: Victims, extra_env: set[str]) -> None:
    for name in victims.targets():
        assert str(report[name]).startswith("DENIED"), (name, report[name])
    for key, value in report.items():
        if key.startswith(("environ-", "write ")):
            assert str(value).startswith("DENIED"), (key, value)
    assert set(report["env"]) <= ACTOR_ENV | extra_env, set(report["env"]) - ACTOR_ENV - extra_env
    text = json.dumps(report)
    for secret in [*victims.secrets(), *os.environ.values()]:
        if len(secret) >= 12 and secret.startswith(("flops_", "canary-")):
            assert secret not in text


# --- the sandbox's description ------------------------------------------------------------


def test_settings_come_from_the_environment_and_refuse_root(tmp_path: Path) -> None:
    settings = SandboxSettings.from_env({"FLOPS_HOME": str(tmp_path / "h"), "FLOPS_NODES_DIR": str(tmp_path / "n")})
    assert settings.enabled and (settings.uid, settings.gid) == (65534, 65534)
    assert settings.hidden == (tmp_path / "h", tmp_path / "n")
    assert not SandboxSettings.from_env({"FLOPS_SANDBOX": "off"}).enabled
    assert SandboxSettings.from_env({"FLOPS_SANDBOX_UID": "1234", "FLOPS_SANDBOX_GID": "99"}).uid == 1234
    with pytest.raises(ValueError, match="must not run as root"):
        SandboxSettings.from_env({"FLOPS_SANDBOX_UID": "0"})
    with pytest.raises(ValueError, match="FLOPS_SANDBOX='maybe'"):
        SandboxSettings.from_env({"FLOPS_SANDBOX": "maybe"})


def test_actor_env_is_built_from_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLOPS_ADMIN_TOKEN", "flops_must-not-leak")
    monkeypatch.setenv("FLOPS_MONGO_URI", "mongodb://admin:pw@db")
    env = actor_env(tmp_path, {"FLOPS_PROJECT_ID": "p1"}, scripts=["/env/bin"])
    assert set(env) == {"PATH", "HOME", "LANG", "TMPDIR", "PYTHONUNBUFFERED", "FLOPS_PROJECT_ID", *FLOWER_OFFLINE_ENV,
                        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"}  # fmt: skip
    assert env["PATH"].startswith("/env/bin:") and env["HOME"] == str(tmp_path)


@ROOT_ONLY
def test_wrap_hides_flops_home_and_drops_to_the_sandbox_uid(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = SandboxSettings.from_env({"FLOPS_HOME": str(home)})
    sandbox = Sandbox.create(
        settings, home / "projects" / "p" / "sandbox" / "learner", read_only=[home / "nodes" / "n1"],
        writable=[home / "projects" / "p" / "state"], extra_env={"FLOPS_PROJECT_ID": "p"},
    )  # fmt: skip
    argv = sandbox.wrap(["python", "-c", "pass"])
    assert argv[0].endswith("bwrap") and argv[-3:] == ["python", "-c", "pass"]
    for flag in ("--unshare-pid", "--unshare-ipc", "--new-session", "--proc", "--dev"):
        assert flag in argv
    assert "--die-with-parent" not in argv  # local services outlive a manager restart
    assert "--unshare-user" not in argv  # as root a user namespace would map the uid back to root
    setpriv = argv.index("--reuid=65534") - 1
    assert argv[setpriv].endswith("setpriv") and argv[argv.index("--") + 1] == argv[setpriv]
    for flag in ("--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"):
        assert flag in argv[setpriv:]
    assert ["--ro-bind-try", str(home / "nodes" / "n1"), str(home / "nodes" / "n1")] == argv[
        argv.index(str(home / "nodes" / "n1")) - 1 : argv.index(str(home / "nodes" / "n1")) + 2
    ]
    assert argv[argv.index("--chdir") + 1] == str(sandbox.home)
    assert "/" not in [argv[i + 1] for i, a in enumerate(argv) if a in ("--ro-bind", "--bind")]  # no whole root
    assert sandbox.env["FLOPS_PROJECT_ID"] == "p" and sandbox.env["HOME"] == str(sandbox.home)
    off = Sandbox.create(SandboxSettings(enabled=False), tmp_path / "h")
    assert off.wrap(["python"]) == ["python"] and "FLOPS_ADMIN_TOKEN" not in off.env


def test_a_named_path_below_dev_is_left_to_the_sandboxs_own_dev(tmp_path: Path) -> None:
    """PIP_CONFIG_FILE=/dev/null names a path: bound again, /dev/null would be remounted nodev and unopenable."""
    settings = SandboxSettings.from_env({})
    sandbox = Sandbox.create(settings, tmp_path / "h", read_only=[Path(os.devnull), *runtime_paths()])
    argv = sandbox.wrap([sys.executable, "-c", "open('/dev/null', 'rb').read(); open('/dev/null', 'w').write('x')"])
    assert "/dev/null" not in argv[argv.index("--dev") :]
    sandbox.prepare()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_python_paths_name_the_environment_and_its_base_interpreter() -> None:
    paths = python_paths(sys.executable)
    assert Path(sys.prefix) in paths
    assert any(Path(os.path.realpath(sys.executable)).is_relative_to(path) for path in paths)
    assert python_paths(None) == []


# --- real sandboxes -----------------------------------------------------------------------


def run_attack(sandbox: Sandbox, victims: Victims, extra: str = "") -> tuple[subprocess.CompletedProcess[str], Any]:
    code = attack_code(victims.targets(), [os.getpid(), os.getppid()], [str(victims.home / "pwned"), "/usr/pwned"])
    sandbox.prepare()
    with sandbox.launch([sys.executable, "-c", code + extra]) as (argv, fds):
        done = subprocess.run(argv, env=sandbox.env, capture_output=True, text=True, timeout=60, pass_fds=fds)
    reports = attack_reports(done.stdout)
    assert reports, done.stdout + done.stderr
    return done, reports[0]


@ROOT_ONLY
def test_user_code_in_the_sandbox_reads_nothing_of_the_manager(
    victims: Victims, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOPS_ADMIN_TOKEN", victims.token)
    monkeypatch.setenv("FLOPS_TEST_CANARY", "canary-" + secrets.token_hex(8))
    settings = SandboxSettings.from_env({"FLOPS_HOME": str(victims.home)})
    own = victims.home / "nodes" / "node-1"
    password = victims.home / "projects" / "attacker" / "mqtt-password"
    write(password, "its-own-mqtt-password", 0o600)  # root's 0600, as the broker writes it
    sandbox = Sandbox.create(
        settings, victims.home / "projects" / "attacker" / "sandbox" / "learner-node-1",
        read_only=[*runtime_paths(), own], writable=[victims.home / "projects" / "attacker" / "state"],
        secrets=[password], extra_env={"FLOPS_MQTT_PASSWORD_FILE": str(password)},
    )  # fmt: skip
    check_own = textwrap.dedent(f"""
        print("OWN-DATA", sorted(os.listdir({str(own)!r})))
        print("OWN-SECRET", open({str(password)!r}).read())
        open({str(victims.home / "projects" / "attacker" / "state" / "ok")!r}, "w").write("state")
        open(os.path.join(os.environ["HOME"], "ok"), "w").write("home")
    """)
    done, report = run_attack(sandbox, victims, check_own)
    assert done.returncode == 0, done.stderr
    assert_nothing_leaked(report, victims, {"FLOPS_MQTT_PASSWORD_FILE"})
    assert report["uid"] == SANDBOX_UID
    assert "FLOPS_ADMIN_TOKEN" not in report["env"] and "FLOPS_TEST_CANARY" not in report["env"]
    assert len(report["processes"]) <= 3, report["processes"]  # its own PID namespace
    assert "OWN-DATA ['digits']" in done.stdout and "OWN-SECRET its-own-mqtt-password" in done.stdout
    assert (victims.home / "projects" / "attacker" / "state" / "ok").stat().st_uid == SANDBOX_UID
    assert not (victims.home / "pwned").exists()


@ROOT_ONLY
def test_bwraps_own_uid_switch_as_root_would_still_read_roots_files(victims: Victims) -> None:
    """Why the sandbox drops to its uid with setpriv: `--unshare-user --uid` maps it back to root."""
    token = victims.home / "manager" / "admin-token"
    mapped = subprocess.run(
        ["bwrap", "--ro-bind", "/", "/", "--unshare-user", "--uid", "65534", "--gid", "65534", "cat", str(token)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert mapped.stdout == victims.token, mapped.stderr  # host root through the owner bits
    sandbox = Sandbox.create(SandboxSettings(), victims.home / "x", read_only=[token.parent])
    sandbox.prepare()
    ours = subprocess.run(sandbox.wrap(["cat", str(token)]), env=sandbox.env, capture_output=True, text=True)
    assert ours.returncode != 0 and victims.token not in ours.stdout and "Permission denied" in ours.stderr


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder another uid can reach (pytest's own are root's 0700), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="flops-sandbox-test-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@ROOT_ONLY
def test_without_root_the_sandbox_still_hides_flops_home(open_folder: Path) -> None:
    """A manager that is not root: mounts only (it keeps its uid), and FLOPS_HOME is still not there."""
    victims = Victims(open_folder / "flops-home")
    for path in (open_folder, *open_folder.rglob("*")):
        os.lchown(path, SANDBOX_UID, SANDBOX_UID)  # the unprivileged manager's own files, readable by it
    code = textwrap.dedent(f"""
        import subprocess, sys
        from pathlib import Path
        from flops.sandbox import Sandbox, SandboxSettings, runtime_paths
        settings = SandboxSettings.from_env({{"FLOPS_HOME": {str(victims.home)!r}}})
        print("MODE", settings.mode, flush=True)
        sandbox = Sandbox.create(settings, Path({str(victims.home / "projects" / "p" / "sandbox")!r}),
                                 read_only=runtime_paths())
        sandbox.prepare()
        sys.exit(subprocess.run(sandbox.wrap(sys.argv[1:]), env=sandbox.env).returncode)
    """)
    attack = attack_code(victims.targets(), [], [str(victims.home / "pwned")])
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
         sys.executable, "-c", code, "/usr/bin/python3", "-c", attack],
        capture_output=True, text=True, timeout=60, check=False, cwd="/",
    )  # fmt: skip
    if "MODE mounts" in done.stdout and "Operation not permitted" in done.stderr:
        pytest.skip(f"unprivileged user namespaces are off here: {done.stderr.strip()}")
    assert "MODE mounts" in done.stdout, done.stdout + done.stderr
    assert (victims.home / "manager" / "admin-token").stat().st_uid == SANDBOX_UID  # its owner could read it
    reports = attack_reports(done.stdout)
    assert reports, done.stdout + done.stderr
    assert reports[0]["uid"] == SANDBOX_UID
    for name in ("admin token", "store file", "other project's run", "other node's data"):
        assert reports[0][name].startswith("DENIED"), (name, reports[0][name])  # not there at all
    assert not (victims.home / "pwned").exists()  # at most into the sandbox's own throwaway tmpfs
    assert not any(secret in done.stdout for secret in victims.secrets())


# --- the local orchestrator ---------------------------------------------------------------


def wait_finished(orchestrator: LocalOrchestrator, handle: Any, timeout: float = 60) -> None:
    assert wait_until(lambda: orchestrator.status(handle).finished, timeout), orchestrator.logs(handle)


@ROOT_ONLY
def test_local_backend_services_cannot_read_the_store_tokens_or_other_projects(
    victims: Victims, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = "canary-" + secrets.token_hex(8)
    monkeypatch.setenv("FLOPS_ADMIN_TOKEN", victims.token)
    monkeypatch.setenv("FLOPS_TEST_CANARY", canary)
    monkeypatch.setenv("FLOPS_HOME", str(victims.home))
    runs = victims.home / "projects"
    orchestrator = LocalOrchestrator(runs)
    password = runs / "attacker" / "credentials" / "learner-node-1"
    write(password, "learner-password", 0o600)
    code = attack_code(victims.targets(), [os.getpid()], [str(runs / "victim" / "logs" / "pwned")])
    code += (
        f"print('OWN', open({str(password)!r}).read(), sorted(os.listdir({str(victims.home / 'nodes' / 'node-1')!r})))"
    )
    learner = ServiceSpec(
        project_id="attacker", name="learner-node-1", role="learner", command=[sys.executable, "-c", code],
        env={"FLOPS_PROJECT_ID": "attacker", "FLOPS_MQTT_PASSWORD_FILE": str(password)},
        read_only_paths=[str(victims.home / "nodes" / "node-1")],
    )  # fmt: skip
    handle = orchestrator.deploy(learner)
    wait_finished(orchestrator, handle)
    log = orchestrator.logs(handle)
    assert orchestrator.status(handle).exit_code == 0, log
    reports = attack_reports(log)
    assert reports, log
    assert_nothing_leaked(reports[0], victims, {"FLOPS_PROJECT_ID", "FLOPS_MQTT_PASSWORD_FILE"})
    assert reports[0]["uid"] == SANDBOX_UID and set(reports[0]["env"]) >= {"FLOPS_PROJECT_ID", "HOME", "PATH"}
    assert "OWN learner-password ['digits']" in log
    for secret in [*victims.secrets(), canary]:
        assert secret not in log
    assert not (runs / "victim" / "logs" / "pwned").exists()
    orchestrator.undeploy(handle)


@ROOT_ONLY
def test_an_aggregator_writes_its_state_only_and_stops_with_its_group(victims: Victims) -> None:
    runs = victims.home / "projects"
    orchestrator = LocalOrchestrator(runs, SandboxSettings.from_env({"FLOPS_HOME": str(victims.home)}))
    state = runs / "attacker" / "aggregator"
    summary = state / "summary.json"
    code = f"import time; open({str(summary)!r}, 'w').write('{{}}'); print('started', flush=True); time.sleep(600)"
    spec = ServiceSpec(
        project_id="attacker", name="aggregator", role="aggregator", command=[sys.executable, "-c", code],
        writable_paths=[str(state)],
    )  # fmt: skip
    handle = orchestrator.deploy(spec)
    assert wait_until(lambda: "started" in orchestrator.logs(handle), 30), orchestrator.logs(handle)
    assert (state / "summary.json").read_text() == "{}"  # the manager reads what the sandbox wrote
    started = time.monotonic()
    orchestrator.undeploy(handle)
    assert orchestrator.status(handle).finished and time.monotonic() - started < 10


@ROOT_ONLY
def test_a_sandbox_whose_bwrap_was_killed_is_still_stopped_whole(victims: Victims) -> None:
    """bwrap's first process (its PID namespace's init) runs in a session of its own: SIGKILL of the
    started group (a test's kill, the OOM killer) leaves what runs inside; undeploy still ends it."""
    runs = victims.home / "projects"
    orchestrator = LocalOrchestrator(runs, SandboxSettings.from_env({"FLOPS_HOME": str(victims.home)}))
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
    code += "print('started', flush=True); time.sleep(600)"
    spec = ServiceSpec(project_id="attacker", name="learner-node-1", role="learner",
                       command=[sys.executable, "-c", code])  # fmt: skip
    handle = orchestrator.deploy(spec)
    assert handle.sandbox_pid is not None and handle.sandbox_pid != int(handle.ref)
    assert wait_until(lambda: "started" in orchestrator.logs(handle), 30), orchestrator.logs(handle)
    inside = [handle.sandbox_pid, *(p.pid for p in psutil.Process(handle.sandbox_pid).children(recursive=True))]
    assert len(inside) >= 3  # the namespace's init, the service, its child
    os.killpg(int(handle.ref), signal.SIGKILL)
    assert wait_until(lambda: orchestrator.status(handle).finished, 10)
    assert all(psutil.pid_exists(pid) for pid in inside)  # left running by the kill
    orchestrator.undeploy(handle)
    assert wait_until(lambda: not any(alive(pid) for pid in inside), 10), [alive(pid) for pid in inside]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_no_bubblewrap_fails_the_deployment_naming_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import flops.sandbox

    monkeypatch.setattr(flops.sandbox, "_CHECKED", {})
    monkeypatch.setattr(flops.sandbox, "FALLBACK_DIRS", ())
    monkeypatch.setenv("PATH", str(tmp_path))
    orchestrator = LocalOrchestrator(tmp_path / "runs", SandboxSettings(hidden=(tmp_path,)))
    spec = ServiceSpec(project_id="p", name="learner-n1", role="learner", command=[sys.executable, "-c", "pass"])
    with pytest.raises(OrchestratorError, match=r"apt-get install bubblewrap.*FLOPS_SANDBOX=off") as error:
        orchestrator.deploy(spec)
    assert not error.value.transient
    with pytest.raises(SandboxUnavailable):
        SandboxSettings().check()
    with caplog.at_level("WARNING", logger="flops.manager"):
        unsandboxed = LocalOrchestrator(tmp_path / "runs", SandboxSettings(enabled=False))
    assert any("FLOPS_SANDBOX=off" in record.getMessage() for record in caplog.records)
    handle = unsandboxed.deploy(spec)
    wait_finished(unsandboxed, handle)
    assert unsandboxed.status(handle).exit_code == 0


def test_flops_up_without_bubblewrap_starts_nothing_and_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import typer

    import flops.sandbox
    from flops import stack
    from flops.cli import projects

    monkeypatch.setattr(flops.sandbox, "_CHECKED", {})
    monkeypatch.setattr(flops.sandbox, "FALLBACK_DIRS", ())
    monkeypatch.setenv("PATH", str(tmp_path))
    started: list[object] = []
    monkeypatch.setattr(stack, "up", started.append)
    with pytest.raises(typer.Exit) as exited:
        projects.up_command()
    assert exited.value.exit_code != 0 and started == []
    said = " ".join(capsys.readouterr().out.split())
    assert "apt-get install bubblewrap" in said and "FLOPS_SANDBOX=off" in said, said


# --- the builder's install step -------------------------------------------------------------

EVIL_SETUP = """
import json, os
from setuptools import setup
found = {{}}
for name, path in {targets!r}.items():
    try:
        found[name] = "READ " + (",".join(os.listdir(path)) if os.path.isdir(path) else open(path).read())
    except OSError as error:
        found[name] = "DENIED " + type(error).__name__
found["env"] = sorted(os.environ)
found["uid"] = os.getuid()
try:
    open({host_marker!r}, "w").write("ran unsandboxed")
    found["host marker"] = "WROTE"
except OSError as error:
    found["host marker"] = "DENIED " + type(error).__name__
raise SystemExit("FLOPS-SETUP " + json.dumps(found))
"""


def evil_sdist(folder: Path, name: str, victims: Victims, marker: Path) -> Path:
    """A source distribution whose setup.py reads what it can and fails with what it read."""
    source = folder / f"{name}-src"
    (source / name).mkdir(parents=True)
    (source / name / "__init__.py").write_text("")
    (source / "setup.py").write_text(EVIL_SETUP.format(targets=victims.targets(), host_marker=str(marker)))
    (source / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
    )
    (source / "PKG-INFO").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    links = folder / "links"
    links.mkdir(exist_ok=True)
    subprocess.run(["tar", "-czf", str(links / f"{name}-1.0.tar.gz"), "-C", str(source.parent),
                    "--transform", f"s,^{source.name},{name}-1.0,", source.name], check=True)  # fmt: skip
    return source


def setup_report(message: str) -> dict[str, Any]:
    """What setup.py printed after FLOPS-SETUP, out of an error message that goes on after it."""
    assert "FLOPS-SETUP " in message, message
    report, _ = json.JSONDecoder().raw_decode(message.split("FLOPS-SETUP ", 1)[1])
    return dict(report)


@ROOT_ONLY
@pytest.mark.skipif(builder_uv() is None, reason="the builder's uv is not installed next to the interpreter")
def test_a_requirements_setup_py_cannot_read_the_managers_secrets(
    victims: Victims, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOPS_ADMIN_TOKEN", victims.token)
    monkeypatch.setenv("FLOPS_HOME", str(victims.home))
    marker = tmp_path / "ran-on-the-host"
    evil_sdist(tmp_path, "evilpkg", victims, marker)
    base = IndexSettings.from_pip(os.environ)
    index = IndexSettings(
        index_url=base.index_url, extra_index_urls=base.extra_index_urls,
        find_links=(*base.find_links, str(tmp_path / "links")), no_index=base.no_index,
    )  # fmt: skip
    installer = Installer.detect(index)
    staging = victims.home / "builds" / "envs" / ".tmp-learner-x"
    staging.mkdir(parents=True)
    installer.create_venv(staging / "env", print)
    with pytest.raises(BuildEnvironmentError, match="FLOPS-SETUP") as failed:  # installing builds the sdist
        installer.install(staging / "env", ["evilpkg"], print)
    report = setup_report(str(failed.value))
    for name in victims.targets():
        assert report[name].startswith("DENIED"), (name, report[name])
    assert report["uid"] == SANDBOX_UID and "FLOPS_ADMIN_TOKEN" not in report["env"]
    assert report["host marker"].startswith("DENIED") and not marker.exists()
    assert not any(secret in str(failed.value) for secret in victims.secrets())
    resolution = installer.resolve(["evilpkg"])  # resolving builds it too, for its metadata
    assert resolution.versions is None and "FLOPS-SETUP" in resolution.message
    assert not any(secret in resolution.message for secret in victims.secrets())
    # A file:// requirement elsewhere on the machine is not even there to build.
    local = installer.resolve([f"evilpkg @ {(tmp_path / 'evilpkg-src').as_uri()}"])
    assert local.versions is None and not marker.exists()
    assert not any(secret in local.message for secret in victims.secrets())


def test_flops_home_is_made_private_and_a_loose_one_is_tightened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fresh = ensure_private_home(tmp_path / "fresh" / "home")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    with caplog.at_level("WARNING", logger="flops"):
        ensure_private_home(loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700
    assert any("made private" in record.getMessage() for record in caplog.records)


# --- containers ---------------------------------------------------------------------------


class FakeImage:
    def __init__(self, user: str) -> None:
        self.attrs = {"Config": {"User": user}}


def test_containers_never_run_as_root_and_write_only_tmpfs() -> None:
    orchestrator = DockerOrchestrator(client=object())
    assert orchestrator.run_user(FakeImage("")) == CONTAINER_USER == "65534:65534"
    assert orchestrator.run_user(FakeImage("root:root")) == CONTAINER_USER
    assert orchestrator.run_user(FakeImage("0")) == CONTAINER_USER
    assert orchestrator.run_user(FakeImage("10001:10001")) == "10001:10001"
    assert is_root_user("root") and not is_root_user("flops")
    spec = ServiceSpec(
        project_id="p", name="aggregator", role="aggregator", command=["flops-aggregator"], image="img:1",
        env={"FLOPS_MQTT_PASSWORD": "its-own"}, writable_paths=["/tmp/flops-p", "/state"],
    )  # fmt: skip
    options = orchestrator._run_options(spec, "10001:10001")
    assert options["user"] == "10001:10001" and options["read_only"] is True
    assert options["cap_drop"] == ["ALL"] and options["security_opt"] == ["no-new-privileges"]
    assert set(options["tmpfs"]) == {"/tmp", "/state"}
    assert "FLOPS_ADMIN_TOKEN" not in options["environment"] and options["environment"]["HOME"] == "/tmp"
    assert set(options["environment"]) == {*FLOWER_OFFLINE_ENV, "HOME", "FLOPS_MQTT_PASSWORD"}


# --- one real training through the manager -------------------------------------------------


@pytest.fixture(scope="module")
def attacked(mlflow_server: str, module_tmp: Callable[[str], Path]) -> Iterator[dict[str, Any]]:
    """A hostile repository trained through a real manager: its model_manager.py attacks on import."""
    home = module_tmp("attacked-home")
    canary = "canary-" + secrets.token_hex(8)
    manager = Manager(home, mlflow_server, extra_env={"FLOPS_TEST_CANARY": canary})
    try:
        manager.add_mock_nodes("Admin")
        victim_log = "victim-secret-" + secrets.token_hex(8)
        write(home / "projects" / "victim" / "logs" / "learner-node-1.log", victim_log, 0o644)
        # Another customer's tag on the learner's own node: world-readable, as partitioned data is.
        other_tag = home / "nodes" / "node-1" / "bobs-tag"
        write(other_tag / "part-0.parquet", victim_log, 0o644)
        other_tag.chmod(0o755)
        repo = make_git_repo(EXAMPLES / "digits-sklearn", module_tmp("repos") / "hostile")
        targets = {**targets_in(home), "own node": str(home / "nodes" / "node-1"), "another tag": str(other_tag)}
        code = attack_code(targets, [manager.process.pid if manager.process else 1], [str(home / "pwned")])
        source = (repo / "model_manager.py").read_text()
        (repo / "model_manager.py").write_text(code + "\n" + source)
        subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam",
                        "attack"], check=True)  # fmt: skip
        answer = manager.call("POST", "/api/flops/projects", json=sla(repo, rounds=1))
        assert answer.status_code == 200, answer.text
        project = manager.wait_for(answer.json()["project_id"], FINAL, timeout=900)
        logs = manager.call("GET", f"/api/flops/projects/{project['project_id']}/logs").json()
        yield {"manager": manager, "project": project, "logs": logs, "victim_log": victim_log, "canary": canary}
    finally:
        manager.stop()


@ROOT_ONLY
@pytest.mark.slow
def test_a_hostile_repository_trains_but_reads_no_secret_and_leaks_none_into_its_logs(
    attacked: dict[str, Any],
) -> None:
    manager, project, logs = attacked["manager"], attacked["project"], attacked["logs"]
    assert project["status"] == "completed", (project["error"], manager.log())
    text = json.dumps(logs)
    for secret in (manager.admin_token, attacked["canary"], attacked["victim_log"]):
        assert secret not in text, f"a secret reached the customer's logs: {secret[:12]}..."
    learner_reports = attack_reports(str(logs.get("learner-node-1", "")))
    assert learner_reports, logs.get("learner-node-1")  # the attack ran, in the learner
    for report in learner_reports:
        assert report["uid"] == SANDBOX_UID
        for name in ("admin token", "store", "store file", "other project's run", "other project's folder",
                     "other node's data", "the manager's cache", "another tag"):  # fmt: skip
            assert report[name].startswith("DENIED"), (name, report[name])
        # Its node shows the project's tag alone.
        assert report["own node"].startswith("LISTED") and "digits" in report["own node"]
        assert "bobs-tag" not in report["own node"], report["own node"]
        assert not {"FLOPS_ADMIN_TOKEN", "FLOPS_TEST_CANARY", "FLOPS_HOME"} & set(report["env"])
        assert str(report[f"environ-{manager.process.pid if manager.process else 1}"]).startswith("DENIED")
    assert not (manager.home / "pwned").exists()
    # The environments the build left in the cache are the builder's: no sandbox can change them.
    envs = manager.home / "builds" / "envs"
    owned = [p for p in envs.rglob("*") if not p.is_symlink() and p.lstat().st_uid == SANDBOX_UID]
    assert owned == [], owned[:5]
    assert stat.S_IMODE(manager.home.stat().st_mode) == 0o700
