"""The sandbox of every process that runs user code: the one place that builds it.

User code (a repository's `model_manager.py`, a requirement's `setup.py` or build backend, a
package's `.pth` file) runs in the aggregator, the learners and the model server of the local
backend, and in the image builder's install steps (creating the environment, installing and
resolving requirements, importing them to check the environment). Each such process starts
through `Sandbox.wrap`:

- **bubblewrap** (`bwrap`) builds a new mount namespace whose root is an empty tmpfs holding
  only the system folders (`SYSTEM_PATHS`, read-only), a fresh `/proc`, `/dev`, `/dev/shm`
  and `/tmp`, and the paths the caller names: read-only (code, environment, data,
  certificates) or writable (a state folder, the process's private HOME). Nothing else of the
  machine is there: not FLOPS_HOME (the store, tokens, broker passwords, other projects' runs,
  builds and node data), not the manager's home, not other tenants' folders. Where a bound
  folder would show one of the hidden roots (`SandboxSettings.hidden`: FLOPS_HOME, the nodes
  folder) a tmpfs covers it, and only the paths named are bound back on top. New PID, IPC and
  UTS namespaces (the process sees only its own processes), its own session (no terminal
  injection); the network is shared: actors talk over loopback or TLS.
- **as root**, bwrap sets the mounts up and `setpriv` then runs the command as
  FLOPS_SANDBOX_UID:FLOPS_SANDBOX_GID (default 65534:65534, `nobody`), without supplementary
  groups, with empty capability sets (bounding set included) and no_new_privs: a process that
  is unprivileged on the host, whatever the mounts show. bwrap's own `--unshare-user --uid`
  is not used for this: run by root it maps the sandbox's uid to host root, which still reads
  root's 0700 files through their owner bits (tests/test_sandbox.py checks both).
  Files the sandbox writes (its writable paths, its HOME) are handed to that uid first.
- **not root**: bwrap in a user namespace with every capability dropped: the mounts hide what
  they hide, but the process keeps the manager's uid (one log line says so).
- `FLOPS_SANDBOX=off`: no sandbox at all (one warning); the environment stays `actor_env`.

One uid for every sandbox is enough to keep projects apart: each sandbox sees only its own
processes (PID namespace) and its own files (mounts), and the uid owns nothing outside them.

Settings (read by `SandboxSettings.from_env`):

    FLOPS_SANDBOX       on (default) | off
    FLOPS_SANDBOX_UID   uid user code runs as when FLOps runs as root (default 65534; not 0)
    FLOPS_SANDBOX_GID   its group (default 65534)
    FLOPS_HOME, FLOPS_NODES_DIR   hidden from every sandbox
"""

import glob
import json
import logging
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import psutil
from pydantic import BaseModel, ConfigDict

from flops.config import flops_home
from flops.processes import stop_group
from flops.runtime_env import actor_env

log = logging.getLogger("flops.sandbox")

SANDBOX_ENV = "FLOPS_SANDBOX"
UID_ENV = "FLOPS_SANDBOX_UID"
GID_ENV = "FLOPS_SANDBOX_GID"
DEFAULT_UID = 65534  # nobody
DEFAULT_GID = 65534  # nogroup
INSTALL_HINT = "install bubblewrap (apt-get install bubblewrap)"
OPT_OUT_HINT = f"or set {SANDBOX_ENV}=off to run user code unsandboxed (not for shared machines)"
# What every sandbox sees of the machine, read-only: programs, libraries, configuration.
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
# Device nodes bound in when present: GPUs for learners that train on them.
DEVICE_GLOBS = ("/dev/nvidia*", "/dev/dri")
# Fresh, empty and world-writable (sticky) in every sandbox.
SCRATCH_MOUNTS = (Path("/tmp"), Path("/dev/shm"))
# Made fresh in every sandbox: a path below them is never bound (a bind would remount /dev/null nodev).
KERNEL_MOUNTS = (Path("/dev"), Path("/proc"), Path("/sys"))
_ON = {"", "1", "on", "true", "yes"}
_OFF = {"0", "off", "false", "no"}


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be built on this machine; the message names the fix."""


class SandboxSettings(BaseModel):
    """Whether user code is sandboxed, as whom, and what every sandbox hides."""

    model_config = ConfigDict(frozen=True)

    enabled: bool = True
    uid: int = DEFAULT_UID
    gid: int = DEFAULT_GID
    hidden: tuple[Path, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, hidden: Iterable[Path] = ()) -> "SandboxSettings":
        """FLOPS_SANDBOX, FLOPS_SANDBOX_UID/GID; FLOPS_HOME and FLOPS_NODES_DIR (and `hidden`) are hidden."""
        env = os.environ if env is None else env
        value = env.get(SANDBOX_ENV, "on").strip().lower()
        if value not in _ON | _OFF:
            raise ValueError(f"{SANDBOX_ENV}={value!r}: use on (the default) or off")
        roots = [flops_home(env), *([Path(env["FLOPS_NODES_DIR"])] if env.get("FLOPS_NODES_DIR") else []), *hidden]
        return cls(
            enabled=value in _ON,
            uid=_id(env, UID_ENV, DEFAULT_UID),
            gid=_id(env, GID_ENV, DEFAULT_GID),
            hidden=tuple(dict.fromkeys(_absolute(path) for path in roots)),
        )

    @property
    def privileged(self) -> bool:
        """FLOps runs as root: the sandbox drops to `uid`."""
        return os.geteuid() == 0

    @property
    def mode(self) -> str:
        """off, uid (mounts and an unprivileged uid) or mounts (hiding only: not root)."""
        if not self.enabled:
            return "off"
        return "uid" if self.privileged else "mounts"

    def describe(self) -> str:
        """One line for the log: how user code runs here."""
        if self.mode == "off":
            return f"{SANDBOX_ENV}=off: user code runs unsandboxed, with this service's privileges and files"
        if self.mode == "uid":
            return f"user code runs sandboxed (bubblewrap) as uid {self.uid}:{self.gid}"
        return (
            f"user code runs sandboxed (bubblewrap), mount hiding only: not running as root, "
            f"it keeps uid {os.geteuid()} (run as root to drop it to {UID_ENV}={self.uid})"
        )

    def check(self) -> None:
        """Raise `SandboxUnavailable` (naming the fix) unless sandboxes can be built here; cached."""
        if not self.enabled:
            return
        key = (self.privileged, self.uid, self.gid)
        if key in _CHECKED:
            if _CHECKED[key]:
                raise SandboxUnavailable(_CHECKED[key])
            return
        problem = self._probe()
        _CHECKED[key] = problem
        if problem:
            raise SandboxUnavailable(problem)

    def _probe(self) -> str:
        try:
            bwrap_path()
            if self.privileged:
                setpriv_path()
        except SandboxUnavailable as error:
            return str(error)
        with tempfile.TemporaryDirectory(prefix="flops-sandbox-probe-") as folder:
            sandbox = Sandbox.create(self, Path(folder) / "home")
            sandbox.prepare()
            try:
                done = subprocess.run(
                    sandbox.wrap(["/bin/sh", "-c", "id -u"]),
                    env=sandbox.env,
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as error:
                return f"bubblewrap cannot start a sandbox here: {error}; {OPT_OUT_HINT}"
        expected = str(self.uid if self.privileged else os.geteuid())
        if done.returncode != 0 or done.stdout.strip() != expected:
            reason = (done.stderr or done.stdout).strip() or f"exit {done.returncode}"
            return (
                f"bubblewrap cannot build a sandbox here ({reason}): it needs mount and PID namespaces "
                f"(as root, or unprivileged user namespaces); {OPT_OUT_HINT}"
            )
        return ""


_CHECKED: dict[tuple[bool, int, int], str] = {}


def _id(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number: give the numeric id user code runs as") from None
    if value <= 0:
        raise ValueError(f"{name}={value}: user code must not run as root; use an unprivileged id such as 65534")
    return value


def _absolute(path: Path | str) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path))))


# Where Debian puts them, for a PATH without /usr/bin.
FALLBACK_DIRS = ("/usr/bin", "/bin")


def _program(name: str) -> str | None:
    return shutil.which(name) or next(
        (path for path in (os.path.join(folder, name) for folder in FALLBACK_DIRS) if os.access(path, os.X_OK)), None
    )


def bwrap_path() -> str:
    found = _program("bwrap")
    if not found:
        raise SandboxUnavailable(f"bubblewrap (bwrap) is not installed: {INSTALL_HINT}, {OPT_OUT_HINT}")
    return found


def setpriv_path() -> str:
    found = _program("setpriv")
    if not found:
        raise SandboxUnavailable(
            f"setpriv (util-linux) is not installed: install it (apt-get install util-linux), {OPT_OUT_HINT}"
        )
    return found


class Sandbox(BaseModel):
    """One sandboxed process: what it reads, what it writes, its whole environment.

    `env` is the process's complete environment (`actor_env`: never the caller's); pass it as
    the `env` of the process that runs `wrap(command)`. Credentials travel in `env` or files,
    never in the argv `wrap` returns. `secrets` are files (keys, passwords: root's and 0600)
    the process gets as private read-only copies at the same path, readable by its uid and
    seen by no other sandbox; start such a sandbox with `launch`, which passes their contents
    to bwrap as open files.
    """

    model_config = ConfigDict(frozen=True)

    settings: SandboxSettings
    home: Path
    read_only: tuple[Path, ...] = ()
    writable: tuple[Path, ...] = ()
    secrets: tuple[Path, ...] = ()
    env: dict[str, str]
    die_with_parent: bool = False

    @classmethod
    def create(
        cls,
        settings: SandboxSettings,
        home: Path,
        *,
        read_only: Iterable[Path | str] = (),
        writable: Iterable[Path | str] = (),
        secrets: Iterable[Path | str] = (),
        extra_env: Mapping[str, str] | None = None,
        scripts: Sequence[Path | str] = (),
        die_with_parent: bool = False,
    ) -> "Sandbox":
        """A sandbox whose HOME (and working folder) is `home`, writable and private.

        `die_with_parent`: the sandbox dies with the process that starts it (install steps);
        services of the local backend outlive a manager that dies, so they do not set it.
        """
        home = _absolute(home)
        rw = tuple(dict.fromkeys(_absolute(path) for path in writable))
        ro = tuple(path for path in dict.fromkeys(_absolute(path) for path in read_only) if path not in rw)
        return cls(
            settings=settings,
            home=home,
            read_only=ro,
            writable=rw,
            secrets=tuple(dict.fromkeys(_absolute(path) for path in secrets)),
            env=actor_env(home, extra_env, scripts),
            die_with_parent=die_with_parent,
        )

    def prepare(self) -> None:
        """Create HOME and the writable paths and, as root, give them to the sandbox's uid.

        Files with more than one link are left to their owner: they may be shared with a
        cache outside the sandbox (hard links), which the sandbox must not be able to change.
        """
        for path in (self.home, *self.writable):
            path.mkdir(parents=True, exist_ok=True)
            if self.settings.mode == "uid":
                give_tree(path, self.settings.uid, self.settings.gid)

    @contextmanager
    def launch(self, command: Sequence[str], info_fd: int | None = None) -> Iterator[tuple[list[str], tuple[int, ...]]]:
        """`wrap(command)` with the secrets opened: start the process inside, with `pass_fds`.

        The files are closed when the block ends (bwrap has copied them by then). `info_fd`: see `wrap`.
        """
        fds: dict[Path, int] = {}
        try:
            if self.settings.enabled:
                for path in self.secrets:
                    fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            extra = (info_fd,) if info_fd is not None and self.settings.enabled else ()
            yield self.wrap(command, fds, info_fd), (*fds.values(), *extra)
        finally:
            for fd in fds.values():
                os.close(fd)

    def wrap(
        self, command: Sequence[str], secret_fds: Mapping[Path, int] | None = None, info_fd: int | None = None
    ) -> list[str]:
        """The argv that runs `command` in this sandbox (`command` itself when the sandbox is off).

        `secret_fds`: each secret's open file (`launch` opens them); needed when there are secrets.
        `info_fd`: bwrap writes `{"child-pid": N}` there (`read_sandbox_pid`), the pid of the sandbox's
        first process, the init of its PID namespace, which runs in a session of its own.
        """
        command = list(command)
        settings = self.settings
        if not settings.enabled:
            return command
        secret_fds = secret_fds or {}
        missing = [str(path) for path in self.secrets if path not in secret_fds]
        if missing:
            raise ValueError(f"start a sandbox with secrets through launch(): no open file for {', '.join(missing)}")
        args = [bwrap_path(), "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        args.append("--new-session")
        if info_fd is not None:
            args += ["--info-fd", str(info_fd)]
        if self.die_with_parent:
            args.append("--die-with-parent")
        if not settings.privileged:
            args += ["--unshare-user", "--disable-userns", "--cap-drop", "ALL"]
        system: list[Path] = []
        for name in SYSTEM_PATHS:
            path = Path(name)
            if path.is_symlink():
                args += ["--symlink", os.readlink(path), name]
            elif path.is_dir():
                args += ["--ro-bind", name, name]
                system.append(path)
        args += _resolver_binds(system)
        args += ["--ro-bind-try", "/sys", "/sys", "--proc", "/proc", "--dev", "/dev"]
        args += ["--perms", "1777", "--tmpfs", "/dev/shm", "--perms", "1777", "--tmpfs", "/tmp"]
        for pattern in DEVICE_GLOBS:
            for device in sorted(glob.glob(pattern)):
                args += ["--dev-bind-try", device, device]
        args += self._binds(system, secret_fds)
        args += ["--chdir", str(self.home), "--"]
        if settings.privileged:
            args += [
                setpriv_path(), f"--reuid={settings.uid}", f"--regid={settings.gid}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
            ]  # fmt: skip
        return args + command

    def _binds(self, system: list[Path], secret_fds: Mapping[Path, int]) -> list[str]:
        """Hidden roots covered where a bound folder shows them, then the named paths, parents first.

        bwrap makes the folders leading to a mount point 0700 (root's, as root): each one that is
        not part of a bound folder is made first, 0755, so the sandbox's uid can walk to its paths.
        """
        binds: dict[Path, str] = {}
        for path in self.read_only:
            # Not root: what this uid cannot reach, bwrap could not bind (and the sandbox could not read).
            if self.settings.privileged or os.access(path, os.R_OK):
                binds.setdefault(path, "--ro-bind-try")
        for path in (*self.writable, self.home):
            binds[path] = "--bind"
        binds = {path: flag for path, flag in binds.items() if not _under(path, [*system, *KERNEL_MOUNTS])}
        shown = [*system, *binds]
        hidden = [path for path in self.settings.hidden if any(path != r and path.is_relative_to(r) for r in shown)]
        # What each folder of the sandbox is part of: a bound folder (exists), or a tmpfs (must be made).
        mounts: dict[Path, bool] = {Path("/"): False, **dict.fromkeys(SCRATCH_MOUNTS, False)}
        mounts.update(dict.fromkeys(system, True))
        mounts.update(dict.fromkeys(hidden, False))
        mounts.update(dict.fromkeys(binds, True))
        operations: list[tuple[int, int, list[str]]] = []
        for path in hidden:
            operations.append((len(path.parts), 0, ["--perms", "0755", "--tmpfs", str(path)]))
        made: set[Path] = set()
        # A secret: the file's bytes (read by bwrap from its open file) at its path, read-only, 0444.
        copies = [
            (path, ["--perms", "0444", "--ro-bind-data", str(secret_fds[path]), str(path)]) for path in self.secrets
        ]
        for path, argv in [*((path, [flag, str(path), str(path)]) for path, flag in binds.items()), *copies]:
            for parent in reversed(path.parents):
                if parent in made or (parent in mounts and not mounts[parent]):
                    continue  # made already, or a mount point itself (/, /tmp, a hidden root)
                covering = max((mount for mount in mounts if parent.is_relative_to(mount)), key=lambda m: len(m.parts))
                if not mounts[covering]:
                    made.add(parent)
                    operations.append((len(parent.parts), 1, ["--perms", "0755", "--dir", str(parent)]))
            operations.append((len(path.parts), 2, argv))
        operations.sort(key=lambda operation: operation[:2])
        return [arg for _, _, argv in operations for arg in argv]


def _under(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _resolver_binds(system: list[Path]) -> list[str]:
    """/etc/resolv.conf where it links outside the system folders (systemd-resolved's /run file)."""
    resolv = Path("/etc/resolv.conf")
    if not resolv.is_symlink():
        return []
    target = Path(os.path.realpath(resolv))
    if _under(target, system) or not target.exists():
        return []
    return ["--ro-bind-try", str(target), str(target)]


def give_tree(path: Path, uid: int, gid: int) -> None:
    """chown `path` and what lies below it to uid:gid, symlinks themselves, hard-linked files not."""
    for folder, dirs, files in os.walk(path):
        os.lchown(folder, uid, gid)
        for name in (*dirs, *files):
            entry = os.path.join(folder, name)
            try:
                info = os.lstat(entry)
            except FileNotFoundError:
                continue
            if os.path.isdir(entry) and not os.path.islink(entry):
                continue  # walked next
            if info.st_nlink > 1 and not os.path.islink(entry):
                continue
            os.lchown(entry, uid, gid)


def python_paths(python: Path | str | None) -> list[Path]:
    """What an interpreter needs to run in a sandbox: its environment's prefix and base interpreter.

    For this installation's own interpreter, also its base prefix and the FLOps source tree
    when FLOps is installed from a checkout (editable). Paths inside the system folders are left out.
    """
    if not python:
        return []
    executable = _absolute(python)
    prefix = executable.parent.parent
    found = [prefix]
    config = prefix / "pyvenv.cfg"
    if config.is_file():
        for line in config.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home" and value.strip():
                found.append(_absolute(value.strip()).parent)
    found.append(Path(os.path.realpath(executable)).parent.parent)
    if prefix == _absolute(sys.prefix):
        found.append(_absolute(sys.base_prefix))
        found += platform_source()
    system = [Path(name) for name in SYSTEM_PATHS]
    return [path for path in dict.fromkeys(found) if path != Path("/") and not _under(path, system)]


def platform_source() -> list[Path]:
    """The folder FLOps's packages are imported from, when it is not inside this interpreter's prefix."""
    import flops

    root = Path(flops.__file__).resolve().parent.parent
    return [] if root.is_relative_to(Path(sys.prefix).resolve()) else [root]


def runtime_paths() -> list[Path]:
    """What FLOps's own interpreter needs in a sandbox (see `python_paths`)."""
    return python_paths(sys.executable)


def read_sandbox_pid(info_read_fd: int, timeout: float = 10.0) -> int | None:
    """The sandbox's first process (its PID namespace's init) from bwrap's `--info-fd`, read from the pipe's
    other end (the writing end closed in this process); None when bwrap wrote none in `timeout` s.

    The init and what runs under it are in their own session: stopping the bwrap process that was
    started leaves them running when bwrap is already dead (SIGKILLed, say). Killing the init kills
    every process of the namespace (`stop_sandbox`).
    """
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([info_read_fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(info_read_fd, 4096)
        if not chunk:
            break
        data += chunk
        try:
            return int(json.loads(data)["child-pid"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def stop_sandbox(pid: int, started_at: float, grace: float = 5.0) -> None:
    """Stop the sandbox whose namespace init is `pid` (see `read_sandbox_pid`), if it still runs: its
    session is asked to end, and after `grace` s the init is killed, which ends the whole namespace.
    A pid now held by a process that is no bwrap started near `started_at` is left alone."""
    try:
        process = psutil.Process(pid)
        if Path(process.exe()).name != "bwrap" or process.create_time() < started_at - 60:
            return
    except (psutil.Error, OSError):
        return
    stop_group(pid, grace=grace)
