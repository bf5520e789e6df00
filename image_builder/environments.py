"""Cached Python environments for learners and the aggregator.

An environment is keyed by a digest of everything that decides its contents: the role, the
normalised user requirements, the interpreter, and the platform's version and source files
(so editing FLOps invalidates it). It is built in a temporary folder next to the cache and
renamed into place only when complete and checked, with a `flops-env.json` marker inside,
so a crashed build never leaves a folder that looks valid. Builders of the same key
serialise on a file lock; the second one finds the first one's result and reuses it.

Roles: `learner` gets the platform without MLflow (`flops`), `aggregator` gets
`flops[tracking]`; both get the user's requirements. The platform is installed from a
wheel built once per source digest from a private copy of its source, so builds never
write into the platform's checkout.

Before anything is installed, `Installer.resolve` answers whether a set of requirements
resolves (`uv pip compile`, or pip's `install --dry-run --report`), with the resolver's whole
reason when it does not; `image_builder.dependencies.fit_by_resolution` relaxes user pins by
it. Each environment is checked before it is kept (`_verify`): the platform imports, the
data stack imports (numpy, pyarrow, pandas, datasets: a NumPy that pyarrow cannot run with
fails the build, not round 1), torch and torchvision import together where present, and
MLflow is absent from learners and present in the aggregator's.

Every step that may run a requirement's code (creating the environment, `uv pip install` /
`pip install` running a `setup.py` or build backend, resolving (which builds sdists for their
metadata), and the import check, which runs `.pth` files and import-time code) runs in a
sandbox (`flops.sandbox`, as FLOPS_SANDBOX_UID when the builder is root): it writes only
the environment being built and a private scratch folder (HOME, temp files, uv's cache), reads
the system, this interpreter, the platform wheel, the index's local find-links and CA files,
and sees nothing of FLOPS_HOME (store, tokens, other builds). Its environment is the index's
and network's settings (`UV_*`, `PIP_*`, CA files, proxies), nothing else of the builder's.
uv's cache is the builder's, read-only to the sandbox: each step gets a private copy (hard
links of the immutable unpacked wheels, copies of the small rest; `seed_uv_cache`), so a
build cannot poison another's packages; what a step downloads is dropped with the copy.
Once installed, the environment is handed back to the builder's user (`restore_owner`), so
no sandbox can change a cached environment later. The platform wheel is built unsandboxed:
it is FLOps's own code.
"""

import configparser
import errno
import json
import os
import platform as _platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flops.runtime_env import without_manager_secrets
from flops.sandbox import Sandbox, SandboxSettings, SandboxUnavailable, python_paths, runtime_paths
from image_builder.dependencies import Resolution, torchvision_fix, torchvision_for
from image_builder.files import file_lock, read_json, remove_tree, text_digest, tree_digest, write_json_atomic

ROLES = ("learner", "aggregator")
PLATFORM_PACKAGES = ("flops", "flops_utils", "learner", "aggregator")
PLATFORM_EXTRAS = {"learner": "", "aggregator": "tracking"}
MARKER = "flops-env.json"
KEY_FORMAT = 1

RESOLVE_TIMEOUT_S = 300.0
CHECK_TIMEOUT_S = 300.0
# What of the builder's environment an install step keeps: the index's and the network's settings.
INSTALL_ENV_PREFIXES = ("UV_", "PIP_")
INSTALL_ENV_NAMES = (
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
)  # fmt: skip
# uv's cache buckets of unpacked wheels: never written once made, shared with the sandbox as hard links.
_IMMUTABLE_BUCKET = re.compile(r"^archive-v\d+$")

# Run inside a new environment: one JSON line {"versions": ..., "problems": [...]}. Every
# module is imported, so one broken import does not hide the next.
_CHECK = """
import importlib, importlib.metadata, importlib.util, json, sys
role = sys.argv[1]
platform = ["flops", "flops_utils", role]
data = ["numpy", "pyarrow", "pandas"] + (["datasets"] if role == "learner" else [])
problems, versions = [], {}
for module in platform + data + (["mlflow"] if role == "aggregator" else []):
    try:
        importlib.import_module(module)
    except Exception as error:
        kind = "the platform" if module in platform else "MLflow" if module == "mlflow" else "the data stack"
        problems.append(f"import {module} ({kind}) fails: {type(error).__name__}: {error}")
for name in ["numpy", "pyarrow", "pandas", "datasets", "mlflow", "torch", "torchvision"]:
    try:
        versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
if role == "learner" and importlib.util.find_spec("mlflow"):
    problems.append("mlflow is importable: learners must run without MLflow")
torchvision = None
if "torchvision" in versions:
    try:
        import torch, torchvision
        torch.ops.torchvision.nms
    except Exception as error:
        torchvision = f"{type(error).__name__}: {error}"
print(json.dumps({"versions": versions, "problems": problems, "torchvision": torchvision}))
"""

Log = Callable[[str], None]
# Per-package lines of installers and wheel builds: counted in their summaries anyway.
_NOISE = re.compile(r"^\s*(?:[+-] \S+==|adding '|copying |creating build|running )")


class BuildEnvironmentError(RuntimeError):
    """An environment could not be built; the message is one line."""


@dataclass(frozen=True)
class Platform:
    """The FLOps platform that environments install: a frozen copy of its source."""

    root: Path  # the platform's checkout (read only)
    source: Path  # private copy under the cache, named by its digest
    digest: str
    version: str
    python: str  # interpreter identity: implementation, version, machine, base executable

    def requirement(self, role: str, wheel: Path) -> str:
        extra = PLATFORM_EXTRAS[role]
        return f"flops{f'[{extra}]' if extra else ''} @ {wheel.resolve().as_uri()}"


@dataclass(frozen=True)
class Environment:
    role: str
    path: Path
    key: str
    reused: bool

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


def platform_root() -> Path:
    """The platform's project root: the folder holding the `flops` package and pyproject.toml."""
    import flops

    root = Path(flops.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise BuildEnvironmentError(
            f"no pyproject.toml in {root}: the image builder needs the FLOps source tree "
            "(an editable or source checkout), not an installed wheel"
        )
    return root


def python_identity() -> str:
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    return f"{sys.implementation.name}-{_platform.python_version()}-{_platform.machine()}-{base}"


def prepare_platform(cache_dir: Path) -> Platform:
    """Copy the platform's source into the cache (once per digest) and describe it.

    The digest is taken of the copy, so an edit made while copying cannot slip in unnamed.
    """
    import importlib.metadata

    root = platform_root()
    platform_dir = cache_dir / "platform"
    platform_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=platform_dir, prefix=".stage-"))
    try:
        source = staging / "src"
        source.mkdir()
        shutil.copy2(root / "pyproject.toml", source / "pyproject.toml")
        _copy_readme(root, source)
        for package in PLATFORM_PACKAGES:
            shutil.copytree(root / package, source / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        digest = tree_digest(source)[:32]
        final = platform_dir / digest
        with file_lock(platform_dir / ".locks" / f"{digest}.lock"):
            if not (final / "src").is_dir():
                final.mkdir(exist_ok=True)
                os.rename(source, final / "src")
    finally:
        remove_tree(staging)
    try:
        version = importlib.metadata.version("flops")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return Platform(root=root, source=final / "src", digest=digest, version=version, python=python_identity())


def _copy_readme(root: Path, dest: Path) -> None:
    """The readme pyproject.toml names (a placeholder when the checkout lacks it)."""
    import tomllib

    readme = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8")).get("project", {}).get("readme")
    name = readme if isinstance(readme, str) else readme.get("file") if isinstance(readme, dict) else None
    if not name:
        return
    target = dest / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if (root / name).is_file():
        shutil.copy2(root / name, target)
    else:
        target.write_text("# FLOps\n", encoding="utf-8")


# --- package index settings -------------------------------------------------------------


@dataclass(frozen=True)
class IndexSettings:
    """pip's index configuration (config files, then PIP_* variables), for uv."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    no_index: bool = False

    @classmethod
    def from_pip(cls, environ: Mapping[str, str]) -> "IndexSettings":
        values: dict[str, str] = {}
        parser = configparser.RawConfigParser()
        parser.read([str(path) for path in pip_config_files(environ)], encoding="utf-8")
        for section in ("global", "install"):
            if parser.has_section(section):
                values.update(parser.items(section))
        for key in ("index-url", "extra-index-url", "find-links", "no-index"):
            env_value = environ.get("PIP_" + key.upper().replace("-", "_"))
            if env_value is not None:
                values[key] = env_value
        return cls(
            index_url=values.get("index-url", "").strip() or None,
            extra_index_urls=tuple(values.get("extra-index-url", "").split()),
            find_links=tuple(values.get("find-links", "").split()),
            no_index=values.get("no-index", "").strip().lower() in {"1", "true", "yes", "on"},
        )

    def uv_args(self) -> list[str]:
        args: list[str] = []
        if self.index_url:
            args += ["--index-url", self.index_url]
        for url in self.extra_index_urls:
            args += ["--extra-index-url", url]
        for link in self.find_links:
            args += ["--find-links", link]
        if self.no_index:
            args.append("--no-index")
        if self.extra_index_urls or self.find_links:
            # pip picks the best version over all indexes; uv's default stops at the first.
            args += ["--index-strategy", "unsafe-best-match"]
        return args


def pip_config_files(environ: Mapping[str, str]) -> list[Path]:
    """pip's configuration files in the order pip reads them (later ones win)."""
    config_file = environ.get("PIP_CONFIG_FILE")
    if config_file == os.devnull:
        return []
    xdg_dirs = environ.get("XDG_CONFIG_DIRS") or "/etc/xdg"
    files = [Path(folder) / "pip" / "pip.conf" for folder in xdg_dirs.split(":") if folder]
    files.append(Path("/etc/pip.conf"))
    home = Path.home()
    files.append(home / ".pip" / "pip.conf")
    files.append(Path(environ.get("XDG_CONFIG_HOME") or home / ".config") / "pip" / "pip.conf")
    files.append(Path(sys.prefix) / "pip.conf")
    if config_file:
        files.append(Path(config_file))
    return files


# --- installers -------------------------------------------------------------------------


def builder_uv() -> Path | None:
    """The uv next to this interpreter, if any: the fast installer of local and native builds."""
    uv = Path(sys.executable).parent / "uv"
    return uv if uv.is_file() and os.access(uv, os.X_OK) else None


@dataclass(frozen=True)
class Installer:
    """uv when it sits next to the interpreter, else `python -m venv` and pip.

    Steps that may run a requirement's code run in `sandbox` (default: `SandboxSettings.from_env()`).
    """

    uv: Path | None
    index: IndexSettings
    sandbox: SandboxSettings = field(default_factory=SandboxSettings.from_env, compare=False)

    @classmethod
    def detect(
        cls, index: IndexSettings, force_pip: bool = False, sandbox: SandboxSettings | None = None
    ) -> "Installer":
        uv = builder_uv()
        return cls(uv=None if force_pip else uv, index=index, sandbox=sandbox or SandboxSettings.from_env())

    @property
    def name(self) -> str:
        return "uv" if self.uv else "pip"

    def _env(self) -> dict[str, str]:
        """The trusted steps' environment (the platform wheel): the builder's, without the manager's secrets."""
        env = without_manager_secrets(os.environ)
        env.setdefault("UV_PYTHON_DOWNLOADS", "never")
        if env.get("PIP_CERT") and not env.get("SSL_CERT_FILE"):
            env["SSL_CERT_FILE"] = env["PIP_CERT"]
        return env

    def install_env(self, cache: Path | None) -> dict[str, str]:
        """What a sandboxed step gets of the builder's environment: index, CA files, proxies; uv's cache `cache`."""
        env = {
            key: value
            for key, value in os.environ.items()
            if key.startswith(INSTALL_ENV_PREFIXES) or key in INSTALL_ENV_NAMES
        }
        env.pop("UV_CACHE_DIR", None)
        env.setdefault("UV_PYTHON_DOWNLOADS", "never")
        env.setdefault("UV_LINK_MODE", "copy")  # the cache's files are the builder's: no hard links to them
        if cache is not None:
            env["UV_CACHE_DIR"] = str(cache)
        if env.get("PIP_CERT") and not env.get("SSL_CERT_FILE"):
            env["SSL_CERT_FILE"] = env["PIP_CERT"]
        if not self.uv:  # pip reads the user's pip.conf from HOME, which the sandbox replaces
            env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            if self.index.index_url:
                env.setdefault("PIP_INDEX_URL", self.index.index_url)
            if self.index.extra_index_urls:
                env.setdefault("PIP_EXTRA_INDEX_URL", " ".join(self.index.extra_index_urls))
            if self.index.find_links:
                env.setdefault("PIP_FIND_LINKS", " ".join(self.index.find_links))
            if self.index.no_index:
                env.setdefault("PIP_NO_INDEX", "1")
        return env

    def sandboxed(
        self,
        cmd: list[str],
        scratch: Path,
        read_only: Iterable[Path] = (),
        writable: Iterable[Path] = (),
        wheels: bool = True,
    ) -> tuple[list[str], dict[str, str]]:
        """`cmd` as it runs in this installer's sandbox, and its whole environment.

        `scratch` (writable, private to the step) holds its HOME and its copy of uv's cache
        (with the unpacked wheels unless `wheels` is False: resolving reads metadata only);
        the step also reads this interpreter, the index's local files and `read_only`.
        """
        try:
            self.sandbox.check()
        except SandboxUnavailable as error:
            raise BuildEnvironmentError(f"cannot sandbox the install step: {error}") from error
        cache = scratch / "uv-cache" if self.uv else None
        if cache is not None and not cache.exists():
            seed_uv_cache(shared_uv_cache(), cache, wheels=wheels)
        extra = self.install_env(cache)
        sandbox = Sandbox.create(
            self.sandbox,
            scratch / "home",
            read_only=[*runtime_paths(), *self._index_files(extra), *read_only],
            writable=[scratch, *writable],
            extra_env=extra,
            scripts=[Path(sys.executable).parent],
            die_with_parent=True,
        )
        sandbox.prepare()
        return sandbox.wrap(cmd), sandbox.env

    def _index_files(self, env: Mapping[str, str]) -> list[Path]:
        """Local files the index settings name: file:// indexes, find-links folders, CA bundles, uv's config."""
        index = self.index
        # A file:// index's pages link to files beside them (`<root>/simple` and `<root>/files`): its root.
        roots = [_file_path(url).rstrip("/").rsplit("/", 1)[0] for url in (index.index_url, *index.extra_index_urls)]
        values = [*roots, *map(_file_path, index.find_links)]
        values += [value for key, value in env.items() if key != "UV_CACHE_DIR"]
        return [Path(value) for value in values if os.path.isabs(value) and os.path.exists(value)]

    def create_venv(self, target: Path, log: Log) -> None:
        if self.uv:
            cmd = [str(self.uv), "venv", "--relocatable", "--python", sys.executable, str(target)]
        else:
            cmd = [sys.executable, "-m", "venv", str(target)]
        argv, env = self.sandboxed(cmd, target.parent)
        run_logged(cmd, log, "creating the virtual environment", env, argv=argv)

    def install(self, target: Path, requirements: list[str], log: Log, read_only: Sequence[Path] = ()) -> None:
        """Install `requirements` into `target` in the sandbox (writable: `target`'s folder; plus `read_only`)."""
        python = target / "bin" / "python"
        if self.uv:
            cmd = [
                str(self.uv),
                "pip",
                "install",
                # Precompiled bytecode: every Flower app process is a fresh interpreter, and
                # without .pyc files each would compile mlflow, flwr and sklearn again.
                "--compile-bytecode",
                "--python",
                str(python),
                *self.index.uv_args(),
                *requirements,
            ]
        else:
            cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *requirements]
        argv, env = self.sandboxed(cmd, target.parent, read_only=read_only)
        run_logged(cmd, log, "installing packages", env, argv=argv)

    @property
    def identity(self) -> str:
        """What decides a resolution besides the requirements: installer, interpreter, index."""
        return json.dumps({"installer": self.name, "python": python_identity(), "index": self.index.uv_args()})

    def resolve(self, requirements: list[str], timeout: float = RESOLVE_TIMEOUT_S) -> Resolution:
        """Whether `requirements` resolve for this interpreter, without installing anything.

        uv: `uv pip compile` (metadata only); pip: `pip install --dry-run --report`. A failure
        that is a conflict comes back with the resolver's whole reason; any other failure
        (no network, a timeout) as not a conflict. Runs in the sandbox: resolving builds
        sdists (their `setup.py` runs) to read their metadata.
        """
        with tempfile.TemporaryDirectory(prefix="flops-resolve-", dir=_scratch_parent()) as folder:
            if self.uv:
                infile = Path(folder) / "requirements.in"
                infile.write_text("".join(f"{line}\n" for line in requirements), encoding="utf-8")
                cmd = [
                    str(self.uv),
                    *("pip", "compile", "--quiet", "--no-header", "--no-annotate", "--python", sys.executable),
                    *self.index.uv_args(),
                    str(infile),
                ]
            else:
                report = Path(folder) / "report.json"
                cmd = [
                    sys.executable,
                    *("-m", "pip", "install", "--dry-run", "--ignore-installed", "--disable-pip-version-check"),
                    *("--no-input", "--report", str(report), *requirements),
                ]
            argv, env = self.sandboxed(cmd, Path(folder), wheels=False)
            try:
                # pip writes its conflict's details to stdout and the error to stderr: one stream keeps their order.
                done = subprocess.run(
                    argv,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE if self.uv else subprocess.STDOUT,
                    text=True,
                    env=env,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                return Resolution(versions=None, message=f"the resolver ({self.name}) took longer than {timeout:g} s")
            output = (done.stderr if self.uv else done.stdout).splitlines()
            if done.returncode == 0:
                if self.uv:
                    return Resolution(versions=_compiled_versions(done.stdout))
                return Resolution(versions=_reported_versions(report))
        message = resolver_message(output)
        conflict = any(
            marker in message
            for marker in ("No solution found", "ResolutionImpossible", "conflicting dependencies", "No matching dist")
        )
        return Resolution(versions=None, message=message, conflict=conflict)

    def build_wheel(self, source: Path, out: Path, log: Log) -> None:
        """The platform's wheel: FLOps's own code, built unsandboxed with the builder's cache."""
        if self.uv:
            cmd = [str(self.uv), "build", "--quiet", "--wheel", "--out-dir", str(out), *self.index.uv_args()]
        else:
            cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(out)]
        run_logged([*cmd, str(source)], log, "building the platform wheel", self._env())


def _file_path(url: str | None) -> str:
    """The local path of a file:// URL or a plain path; "" for anything else."""
    if not url:
        return ""
    if url.startswith("file:"):
        return urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    return url if os.path.isabs(url) else ""


def shared_uv_cache() -> Path | None:
    """The builder's own uv cache (UV_CACHE_DIR, else XDG_CACHE_HOME/uv, else ~/.cache/uv); None: uv caches nothing."""
    if os.environ.get("UV_NO_CACHE"):
        return None
    if os.environ.get("UV_CACHE_DIR"):
        return Path(os.environ["UV_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "uv"


def _scratch_parent() -> str | None:
    """Where a resolver's scratch folder goes: next to uv's cache (hard links need one file system)."""
    shared = shared_uv_cache()
    parent = shared.parent if shared is not None else None
    return str(parent) if parent is not None and parent.is_dir() and os.access(parent, os.W_OK) else None


def seed_uv_cache(shared: Path | None, dest: Path, wheels: bool = True) -> bool:
    """Make `dest` a private copy of uv's cache `shared`; whether anything was copied.

    Unpacked wheels (`archive-v*`, never changed once made) are hard links: the sandbox's uid
    can read them but not change them (they stay the builder's, and `give_tree` leaves files
    with more than one link alone). The small rest (index pages, built-wheel records) is
    copied, lock files left out; `wheels` False leaves the unpacked wheels out (a resolver
    needs metadata only). Another file system than the cache's, or no cache: `dest` starts
    empty and uv downloads what it needs.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if shared is None or not shared.is_dir():
        return False
    try:
        for folder, dirs, files in os.walk(shared):
            relative = os.path.relpath(folder, shared)
            target = dest if relative == "." else dest / relative
            immutable = bool(_IMMUTABLE_BUCKET.match(Path(relative).parts[0])) if relative != "." else False
            if relative == "." and not wheels:
                dirs[:] = [name for name in dirs if not _IMMUTABLE_BUCKET.match(name)]
            for name in list(dirs):
                source = os.path.join(folder, name)
                if os.path.islink(source):
                    os.symlink(os.readlink(source), target / name)
                    dirs.remove(name)
                else:
                    (target / name).mkdir(exist_ok=True)
            for name in files:
                source = os.path.join(folder, name)
                if os.path.islink(source):
                    os.symlink(os.readlink(source), target / name)
                elif immutable:
                    os.link(source, target / name)
                elif not name.endswith(".lock"):
                    shutil.copy2(source, target / name)
    except OSError as error:
        remove_tree(dest)
        dest.mkdir(parents=True)
        if error.errno != errno.EXDEV:
            raise BuildEnvironmentError(f"cannot copy uv's cache {shared} for the sandbox: {error}") from error
        return False
    return True


def restore_owner(path: Path) -> None:
    """Give a tree the sandbox wrote back to the builder's user, setuid/setgid and world-write bits cleared.

    A cached environment then stays as built: no later sandbox (same uid) can change it.
    """
    if os.geteuid() != 0:
        return
    uid, gid = os.getuid(), os.getgid()
    for folder, dirs, files in os.walk(path):
        for entry in (folder, *(os.path.join(folder, name) for name in (*dirs, *files))):
            info = os.lstat(entry)
            os.lchown(entry, uid, gid)
            if not os.path.islink(entry):
                os.chmod(entry, info.st_mode & 0o7777 & ~0o6002)


def run_logged(
    cmd: list[str], log: Log, what: str, env: Mapping[str, str] | None = None, argv: list[str] | None = None
) -> list[str]:
    """Run `cmd` (as `argv`, its sandboxed form, when given), logging its output as it comes.

    Raise a one-line error if it fails. The log shows `cmd`, not the sandbox around it.
    """
    log("  $ " + shlex.join(cmd))
    tail: deque[str] = deque(maxlen=80)
    with subprocess.Popen(
        argv or cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(env or os.environ)
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            tail.append(line)
            if not _NOISE.match(line):
                log("    " + line)
        code = process.wait()
    if code:
        raise BuildEnvironmentError(f"{what} failed (exit {code}): {summarize(list(tail))}")
    return list(tail)


# uv's error decorations: the cross, tree arrows and box-drawing characters.
_DECORATION = re.compile("^[\\s\u00d7\u25b6\u2500-\u257f]+")


def summarize(lines: list[str], limit: int | None = None) -> str:
    """One line out of a tool's output: from its first error line to the end, else its last lines.

    Nothing is cut unless `limit` says so: the whole reason reaches the project's error.
    """
    cleaned = [(raw, _DECORATION.sub("", raw).strip()) for raw in lines]
    cleaned = [(raw, line) for raw, line in cleaned if line]
    start = next(
        (
            index
            for index, (raw, line) in enumerate(cleaned)
            if "\u00d7" in raw or line.lower().startswith(("error", "traceback")) or "Error:" in line
        ),
        None,
    )
    picked = [line for _, line in (cleaned[start:] if start is not None else cleaned[-2:])]
    text = " ".join(picked) or "no output"
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


# pip's lines that say what it is doing, not why it failed.
_PIP_CHATTER = re.compile(
    r"^(?:WARNING: Location |Collecting |Downloading |Using cached |Looking in |Processing |Obtaining |"
    r"Requirement already |INFO: |  Downloading |  Using cached )"
)
_PIP_DEPENDS = re.compile(r"^(?P<name>[A-Za-z0-9][\w.-]*) (?P<version>\d\S*) depends on (?P<target>.+)$")


def resolver_message(lines: list[str]) -> str:
    """The resolver's whole reason as one paragraph: uv's error and its derivation, or pip's conflict.

    uv's decorations and `error:`/`cause:` labels go; pip's progress lines, its advice and
    its help link go, and its one line per tried version ("datasets 3.0.0 depends on
    tqdm>=4.66.3", ...) becomes one line per package and requirement.
    """
    kept: list[str] = []
    for raw in lines:
        if _PIP_CHATTER.match(raw) or raw.startswith(("Resolved ", "Would install", "warning: ")):
            continue
        kept.append(raw)
    start = next(
        (index for index, raw in enumerate(kept) if raw.lstrip("\u00d7 ").lower().startswith("error")),
        None,
    )
    if start is None:
        return summarize(kept)
    parts: list[str] = []
    pending: tuple[str, str, list[str]] | None = None  # pip: (package, requirement, versions)
    advice = False
    listing = False  # inside pip's "The conflict is caused by:" list
    for raw in kept[start:]:
        line = _DECORATION.sub("", raw).strip()
        if not line or "for help visit" in line:
            listing = listing and bool(line)
            continue
        if listing and not raw.startswith(" "):
            listing = False
        if line.endswith("caused by:"):
            listing = True
            parts.append(line)
            continue
        if line.startswith("To fix this you could try"):
            advice = True
            continue
        if advice and re.match(r"^\d+\. ", line):
            continue
        advice = False
        if parts and re.match(r"^(?:cause|Caused by):", line) and not parts[-1].endswith((":", ".")):
            parts[-1] += ":"
        line = re.sub(r"^(?:error|ERROR|cause|Caused by):\s*", "", line)
        depends = _PIP_DEPENDS.match(line)
        if depends and pending and pending[:2] == (depends["name"], depends["target"]):
            pending[2].append(depends["version"])
            continue
        if pending:
            parts.append(_pip_depends(*pending))
            pending = None
        if depends:
            pending = (depends["name"], depends["target"], [depends["version"]])
            continue
        parts.append(f"{line};" if listing else line)
    if pending:
        parts.append(_pip_depends(*pending))
    return _PIP_VERSION_RUN.sub(_versions_run, " ".join(parts)) or "no output"


# pip's "Cannot install datasets==3.0.0, datasets==3.0.1, ..., datasets==5.2.0 and tqdm==4.65.0".
_PIP_VERSION_RUN = re.compile(r"\b(?P<name>[A-Za-z0-9][\w.-]*)==[^\s,]+(?:, (?P=name)==[^\s,]+){2,}")


def _versions_run(match: re.Match[str]) -> str:
    versions = [item.split("==", 1)[1] for item in match[0].split(", ")]
    return f"{match['name']}=={versions[0]} to {match['name']}=={versions[-1]} ({len(versions)} versions)"


def _pip_depends(name: str, target: str, versions: list[str]) -> str:
    if len(versions) == 1:
        return f"{name} {versions[0]} depends on {target};"
    return f"{name} {versions[-1]} to {versions[0]} ({len(versions)} versions) depend on {target};"


def _compiled_versions(text: str) -> dict[str, str]:
    """`name==version` lines of `uv pip compile`, by canonical name."""
    from packaging.utils import canonicalize_name

    versions: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;]+)", line.strip())
        if match:
            versions[str(canonicalize_name(match[1]))] = match[2]
    return versions


def _reported_versions(report: Path) -> dict[str, str]:
    """What pip's `--report` would install, by canonical name."""
    from packaging.utils import canonicalize_name

    data = read_json(report)
    installs = data.get("install", []) if isinstance(data, dict) else []
    return {
        str(canonicalize_name(item["metadata"]["name"])): str(item["metadata"]["version"])
        for item in installs
        if isinstance(item, dict) and isinstance(item.get("metadata"), dict)
    }


# --- environments -----------------------------------------------------------------------


def environment_key(platform: Platform, role: str, requirements: list[str]) -> str:
    return text_digest(
        {
            "format": KEY_FORMAT,
            "role": role,
            "requirements": sorted(set(requirements)),
            "python": platform.python,
            "platform_version": platform.version,
            "platform_digest": platform.digest,
        }
    )


def environment_dir(cache_dir: Path, role: str, key: str) -> Path:
    return cache_dir / "envs" / f"{role}-{key[:24]}"


def is_complete(path: Path, key: str) -> bool:
    marker = read_json(path / MARKER)
    return isinstance(marker, dict) and marker.get("key") == key and (path / "bin" / "python").exists()


def ensure_platform_wheel(platform: Platform, cache_dir: Path, installer: Installer, log: Log) -> Path:
    """The platform's wheel for this source digest, built once."""
    folder = cache_dir / "platform" / platform.digest
    wheel_dir = folder / "wheel"
    with file_lock(folder / ".wheel.lock"):
        wheels = sorted(wheel_dir.glob("flops-*.whl"))
        if wheels:
            return _readable(wheels[-1])
        staging = Path(tempfile.mkdtemp(dir=folder, prefix=".wheel-"))
        try:
            log(f"building the platform wheel from {platform.root} (source {platform.digest[:12]})")
            installer.build_wheel(platform.source, staging, log)
            if not list(staging.glob("flops-*.whl")):
                raise BuildEnvironmentError("building the platform wheel produced no flops-*.whl")
            remove_tree(wheel_dir)
            os.rename(staging, wheel_dir)
        finally:
            remove_tree(staging)
        return _readable(sorted(wheel_dir.glob("flops-*.whl"))[-1])


def _readable(wheel: Path) -> Path:
    """The platform wheel and its folder readable by everyone: sandboxed installs read it as another uid."""
    wheel.parent.chmod(0o755)
    wheel.chmod(0o644)
    return wheel


def ensure_environment(
    platform: Platform,
    role: str,
    requirements: list[str],
    cache_dir: Path,
    installer: Installer,
    log: Log = print,
) -> Environment:
    """The environment for `role` with `requirements`: reused if cached, else built."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
    key = environment_key(platform, role, requirements)
    final = environment_dir(cache_dir, role, key)
    if is_complete(final, key):
        return Environment(role=role, path=final, key=key, reused=True)
    envs = final.parent
    with file_lock(envs / ".locks" / f"{final.name}.lock"):
        if is_complete(final, key):  # another builder finished it while we waited
            return Environment(role=role, path=final, key=key, reused=True)
        for stale in envs.glob(f".tmp-{final.name}-*"):
            remove_tree(stale)  # left by a crashed builder; we hold the lock
        wheel = ensure_platform_wheel(platform, cache_dir, installer, log)
        staging = Path(tempfile.mkdtemp(dir=envs, prefix=f".tmp-{final.name}-"))
        try:
            target = staging / "env"
            log(f"building the {role} environment with {installer.name} in {final}")
            installer.create_venv(target, log)
            wheels = [wheel.parent, wheel.parent.resolve()]  # the platform wheel: all the install reads of the cache
            installer.install(target, [platform.requirement(role, wheel), *requirements], log, read_only=wheels)
            restore_owner(target)  # the builder's from now on: no sandbox changes a cached environment
            _verify(role, target, log, installer.sandbox)
            _relocate_scripts(target, final)
            write_json_atomic(
                target / MARKER,
                {
                    "key": key,
                    "role": role,
                    "requirements": sorted(set(requirements)),
                    "python": platform.python,
                    "platform_version": platform.version,
                    "platform_digest": platform.digest,
                    "installer": installer.name,
                    "created_at": time.time(),
                },
            )
            remove_tree(final)  # an incomplete folder from before markers were checked
            os.rename(target, final)
        except BuildEnvironmentError as error:
            raise BuildEnvironmentError(f"{role} environment: {error}") from error
        finally:
            remove_tree(staging)
    return Environment(role=role, path=final, key=key, reused=False)


def check_environment(
    role: str, python: Path, label: str = "the dependency file", sandbox: SandboxSettings | None = None
) -> tuple[dict[str, str], list[str]]:
    """Import what `role` needs with `python`: the versions found and every problem, named.

    The platform and the data stack (numpy, pyarrow, pandas; datasets for learners) must
    import; learners must not see MLflow, the aggregator must import it; where torchvision
    is installed, it must work with the torch beside it (`torch.ops.torchvision.nms`).
    Importing runs the packages' code (and `.pth` files): it runs in the sandbox, the
    environment read-only (default settings: `SandboxSettings.from_env()`).
    """
    settings = sandbox or SandboxSettings.from_env()
    try:
        settings.check()
    except SandboxUnavailable as error:
        return {}, [f"cannot sandbox the environment check: {error}"]
    with tempfile.TemporaryDirectory(prefix="flops-check-") as scratch:
        # Isolated (-I) and away from any checkout: `import flops` must find the environment's own.
        isolated = Sandbox.create(
            settings,
            Path(scratch) / "home",
            read_only=[*python_paths(python), *runtime_paths()],
            die_with_parent=True,
        )
        isolated.prepare()
        result = subprocess.run(
            isolated.wrap([str(python), "-I", "-c", _CHECK, role]),
            capture_output=True,
            text=True,
            check=False,
            timeout=CHECK_TIMEOUT_S,
            cwd=scratch,
            env=isolated.env,
        )
    report = None
    for line in reversed(result.stdout.splitlines()):
        try:
            report = json.loads(line)
            break
        except json.JSONDecodeError:
            continue
    if not isinstance(report, dict):
        output = (result.stdout + result.stderr).splitlines()
        return {}, [f"the environment's interpreter does not run the check: {summarize(output)}"]
    versions: dict[str, str] = report.get("versions", {})
    problems: list[str] = list(report.get("problems", []))
    if report.get("torchvision"):
        torch = versions.get("torch", "?")
        vision = versions.get("torchvision", "?")
        series = torchvision_for(torch) if torch != "?" else None
        problems.append(
            torchvision_fix(
                f"torchvision {vision} does not work with torch {torch} ({report['torchvision']})"
                + (f"; torch {torch} needs torchvision {series}" if series and not vision.startswith(series) else ""),
                torch,
                series or "the release built for that torch",
                label,
            )
        )
    return versions, problems


def _verify(role: str, target: Path, log: Log, sandbox: SandboxSettings | None = None) -> None:
    """The environment is kept only when `check_environment` finds no problem."""
    log(f"checking the {role} environment")
    versions, problems = check_environment(role, target / "bin" / "python", "the dependency file", sandbox)
    if versions:
        log("    " + ", ".join(f"{name} {version}" for name, version in sorted(versions.items())))
    for problem in problems:
        log("    problem: " + problem)
    if problems:
        raise BuildEnvironmentError("check failed: " + "; ".join(problems))


def _relocate_scripts(target: Path, final: Path) -> None:
    """Point scripts that name the build folder (pip's shebangs) at the final folder."""
    old, new = str(target).encode(), str(final).encode()
    for script in (target / "bin").iterdir():
        if script.is_symlink() or not script.is_file() or script.stat().st_size > 1 << 20:
            continue
        content = script.read_bytes()
        if old in content:
            script.write_bytes(content.replace(old, new))
