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
"""

import configparser
import os
import platform as _platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from image_builder.files import file_lock, read_json, remove_tree, text_digest, tree_digest, write_json_atomic

ROLES = ("learner", "aggregator")
PLATFORM_PACKAGES = ("flops", "flops_utils", "learner", "aggregator")
PLATFORM_EXTRAS = {"learner": "", "aggregator": "tracking"}
MARKER = "flops-env.json"
KEY_FORMAT = 1

_VERIFY = {
    "learner": (
        "import importlib.util, sys\n"
        "import flops, flops_utils, learner\n"
        "sys.exit('mlflow is importable' if importlib.util.find_spec('mlflow') else 0)\n"
    ),
    "aggregator": "import flops, flops_utils, aggregator, mlflow\nprint('mlflow', mlflow.__version__)\n",
}

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
    """uv when it sits next to the interpreter, else `python -m venv` and pip."""

    uv: Path | None
    index: IndexSettings

    @classmethod
    def detect(cls, index: IndexSettings, force_pip: bool = False) -> "Installer":
        uv = builder_uv()
        return cls(uv=None if force_pip else uv, index=index)

    @property
    def name(self) -> str:
        return "uv" if self.uv else "pip"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("UV_PYTHON_DOWNLOADS", "never")
        if env.get("PIP_CERT") and not env.get("SSL_CERT_FILE"):
            env["SSL_CERT_FILE"] = env["PIP_CERT"]
        return env

    def create_venv(self, target: Path, log: Log) -> None:
        if self.uv:
            cmd = [str(self.uv), "venv", "--relocatable", "--python", sys.executable, str(target)]
        else:
            cmd = [sys.executable, "-m", "venv", str(target)]
        run_logged(cmd, log, "creating the virtual environment", self._env())

    def install(self, target: Path, requirements: list[str], log: Log) -> None:
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
        run_logged(cmd, log, "installing packages", self._env())

    def build_wheel(self, source: Path, out: Path, log: Log) -> None:
        if self.uv:
            cmd = [str(self.uv), "build", "--quiet", "--wheel", "--out-dir", str(out), *self.index.uv_args()]
        else:
            cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(out)]
        run_logged([*cmd, str(source)], log, "building the platform wheel", self._env())


def run_logged(cmd: list[str], log: Log, what: str, env: Mapping[str, str] | None = None) -> list[str]:
    """Run `cmd`, logging its output as it comes; raise a one-line error if it fails."""
    log("  $ " + shlex.join(cmd))
    tail: deque[str] = deque(maxlen=80)
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(env or os.environ)
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


def summarize(lines: list[str], limit: int = 400) -> str:
    """One line out of a tool's output: from its first error line on, else its last line."""
    cleaned = [_DECORATION.sub("", line).strip() for line in lines]
    cleaned = [line for line in cleaned if line]
    start = next(
        (
            index
            for index, (raw, line) in enumerate(zip(lines, cleaned, strict=False))
            if "\u00d7" in raw or line.lower().startswith(("error", "traceback")) or "Error:" in line
        ),
        None,
    )
    picked = cleaned[start : start + 6] if start is not None else cleaned[-2:]
    text = " ".join(picked) or "no output"
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
            return wheels[-1]
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
        return sorted(wheel_dir.glob("flops-*.whl"))[-1]


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
            installer.install(target, [platform.requirement(role, wheel), *requirements], log)
            _verify(role, target, log)
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


def _verify(role: str, target: Path, log: Log) -> None:
    """The learner environment must not see MLflow; the aggregator's must import it."""
    log(f"checking the {role} environment")
    python = target / "bin" / "python"
    result = subprocess.run(
        [str(python), "-c", _VERIFY[role]], capture_output=True, text=True, check=False, timeout=300
    )
    output = (result.stdout + result.stderr).strip()
    if output:
        log("    " + output.replace("\n", "\n    "))
    if result.returncode:
        reason = "MLflow must not be importable there" if role == "learner" else "it cannot import the platform"
        raise BuildEnvironmentError(f"check failed ({reason}): {summarize(output.splitlines())}")


def _relocate_scripts(target: Path, final: Path) -> None:
    """Point scripts that name the build folder (pip's shebangs) at the final folder."""
    old, new = str(target).encode(), str(final).encode()
    for script in (target / "bin").iterdir():
        if script.is_symlink() or not script.is_file() or script.stat().st_size > 1 << 20:
            continue
        content = script.read_bytes()
        if old in content:
            script.write_bytes(content.replace(old, new))
