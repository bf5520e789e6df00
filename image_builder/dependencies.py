"""Reads an ML repository's dependencies and fits them to what the platform can honour.

One file declares them: `requirements.txt`, `pyproject.toml` (`[project].dependencies`) or
an MLflow-style `conda.yaml` / `conda.yml` (conda specs plus a nested `pip:` list). The
result is a sorted list of PEP 508 requirement strings, plus warnings for every pin the
platform relaxed: Python is never installed (the platform's interpreter runs the code),
MLflow never reaches a learner (the aggregator gets the platform's own), and packages the
platform itself depends on (flwr, numpy, pandas, scikit-learn, torch, ...) follow the
platform's versions so the resolver never has to choose between user code and FLOps.
"""

import importlib.metadata
import platform as _platform
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

DEPENDENCY_FILES = ("requirements.txt", "pyproject.toml", "conda.yaml", "conda.yml")
PLATFORM_DISTRIBUTION = "flops"
# Extras of the platform whose packages the platform pins in some environment.
PLATFORM_EXTRAS = ("tracking", "pytorch")
MLFLOW_NAMES = frozenset({"mlflow", "mlflow-skinny", "mlflow-tracing"})
DROPPED_NAMES = frozenset({"pip", "setuptools", "wheel"})
PLATFORM_SELF = frozenset({"flops", "flops-utils"})
CONDA_TO_PIP = {"pytorch": "torch"}
# pip options in a requirements file that only choose where packages come from: the
# platform's own index settings are used instead.
INDEX_OPTIONS = (
    "-i",
    "--index-url",
    "--extra-index-url",
    "-f",
    "--find-links",
    "--no-index",
    "--pre",
    "--trusted-host",
    "--prefer-binary",
    "--only-binary",
    "--no-binary",
    "--use-feature",
)


class DependencyError(ValueError):
    """The dependency file cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class PlatformPins:
    """What the platform itself pins, so user requirements can be fitted to it."""

    python_version: str
    specs: dict[str, str] = field(default_factory=dict)  # name -> the platform's requirement
    installed: dict[str, str] = field(default_factory=dict)  # name -> version installed here
    torch_version: str | None = None

    @classmethod
    def current(cls) -> "PlatformPins":
        """Pins of the installed `flops` distribution (base and runtime extras) plus torch."""
        specs: dict[str, str] = {}
        try:
            declared = importlib.metadata.requires(PLATFORM_DISTRIBUTION) or []
        except importlib.metadata.PackageNotFoundError:
            declared = []
        for line in declared:
            req = Requirement(line)
            if req.marker is not None and not any(req.marker.evaluate({"extra": extra}) for extra in PLATFORM_EXTRAS):
                continue
            name = str(canonicalize_name(req.name))
            specs.setdefault(name, f"{name}{req.specifier}")
        specs.setdefault("torch", "torch")
        installed: dict[str, str] = {}
        for name in specs:
            try:
                installed[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                continue
        return cls(
            python_version=_platform.python_version(),
            specs=specs,
            installed=installed,
            torch_version=installed.get("torch"),
        )


@dataclass(frozen=True)
class Dependencies:
    """The requirements to install for a repository, and what was changed on the way."""

    source: Path
    requirements: list[str]
    warnings: list[str]


@dataclass(frozen=True)
class _Entry:
    text: str  # as the user wrote it
    requirement: str  # PEP 508
    where: str  # "conda.yaml line 7"


def find_dependency_file(repo: Path) -> tuple[Path, list[str]]:
    """The one dependency file that is read, and warnings naming the ones ignored."""
    present = [repo / name for name in DEPENDENCY_FILES if (repo / name).is_file()]
    if not present:
        raise DependencyError(f"{repo}: no dependency file: add one of " + ", ".join(DEPENDENCY_FILES))
    chosen = present[0]
    # A pyproject.toml that only configures tools declares no dependencies.
    if chosen.name == "pyproject.toml" and len(present) > 1 and "project" not in _load_toml(chosen):
        chosen = present[1]
    ignored = [
        f"{path.name} ignored: dependencies are read from {chosen.name} only"
        for path in present
        if path != chosen and not (path.name == "pyproject.toml" and "project" not in _load_toml(path))
    ]
    return chosen, ignored


def read_dependencies(repo: Path, pins: PlatformPins | None = None) -> Dependencies:
    """Normalised requirements of `repo`, fitted to the platform's pins, with warnings."""
    pins = pins or PlatformPins.current()
    source, warnings = find_dependency_file(repo)
    if source.name == "requirements.txt":
        entries = _read_requirements_txt(source, repo, warnings)
    elif source.name == "pyproject.toml":
        entries = _read_pyproject(source, repo, pins, warnings)
    else:
        entries = _read_conda(source, repo, warnings)
    requirements = {fitted for entry in entries if (fitted := _fit_to_platform(entry, pins, warnings)) is not None}
    return Dependencies(source=source, requirements=sorted(requirements), warnings=warnings)


# --- requirements.txt -------------------------------------------------------------------


def _read_requirements_txt(
    path: Path, repo: Path, warnings: list[str], seen: frozenset[Path] = frozenset()
) -> list[_Entry]:
    label = _label(path, repo)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DependencyError(f"{label}: cannot read: {error}") from error
    entries: list[_Entry] = []
    for number, line in _logical_lines(text):
        entries.extend(_pip_line(line, path, repo, f"{label} line {number}", warnings, seen | {path}))
    return entries


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Lines without comments, joined across trailing backslashes, with their first line number."""
    lines: list[tuple[int, str]] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            lines.append((start, line))
    if pending.strip():
        lines.append((start, pending.strip()))
    return lines


def _pip_line(
    line: str, path: Path, repo: Path, where: str, warnings: list[str], seen: frozenset[Path]
) -> list[_Entry]:
    """One requirements-file line: a requirement, an include, or an option."""
    if line.startswith("-"):
        option, _, value = line.replace("=", " ", 1).partition(" ")
        value = value.strip()
        if option in ("-r", "--requirement"):
            included = (path.parent / value).resolve()
            if not included.is_relative_to(repo.resolve()):
                raise DependencyError(f"{where}: {value} lies outside the repository")
            if included in seen:
                raise DependencyError(f"{where}: {value} includes itself")
            if not included.is_file():
                raise DependencyError(f"{where}: included file {value} does not exist")
            return _read_requirements_txt(included, repo, warnings, seen)
        if option in ("-c", "--constraint"):
            warnings.append(f"{where}: constraints file {value} ignored")
            return []
        if option in INDEX_OPTIONS:
            warnings.append(f"{where}: {option} ignored: the platform's package index settings are used")
            return []
        if option in ("-e", "--editable"):
            raise DependencyError(f"{where}: editable installs ({line}) are not supported; list packages instead")
        raise DependencyError(f"{where}: unsupported pip option {option}")
    # Per-requirement hashes cannot hold once the platform relaxes a pin.
    requirement, hashes = re.subn(r"\s--hash[=\s]\S+", "", line)
    if hashes:
        warnings.append(f"{where}: --hash ignored")
    return [_entry(line, requirement.strip(), where)]


def _entry(text: str, requirement: str, where: str) -> _Entry:
    try:
        Requirement(requirement)
    except InvalidRequirement as error:
        raise DependencyError(f"{where}: {text!r} is not a valid requirement: {error}") from error
    return _Entry(text=text, requirement=requirement, where=where)


# --- pyproject.toml ---------------------------------------------------------------------


def _load_toml(path: Path) -> dict[str, object]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


def _read_pyproject(path: Path, repo: Path, pins: PlatformPins, warnings: list[str]) -> list[_Entry]:
    label = _label(path, repo)
    try:
        text = path.read_text(encoding="utf-8")
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise DependencyError(f"{label}: invalid TOML: {error}") from error
    except (OSError, UnicodeDecodeError) as error:
        raise DependencyError(f"{label}: cannot read: {error}") from error
    project = document.get("project")
    if not isinstance(project, dict):
        raise DependencyError(f"{label}: no [project] table; declare [project].dependencies")
    if "dependencies" not in project:
        if "dependencies" in project.get("dynamic", []):
            raise DependencyError(f"{label}: dynamic dependencies are not supported; list them in [project]")
        return []
    declared = project["dependencies"]
    if not isinstance(declared, list) or not all(isinstance(item, str) for item in declared):
        raise DependencyError(f"{label} line {_line_of(text, 'dependencies')}: dependencies must be strings")
    requires_python = project.get("requires-python")
    if isinstance(requires_python, str):
        try:
            spec = SpecifierSet(requires_python)
        except InvalidSpecifier as error:
            line = _line_of(text, "requires-python")
            raise DependencyError(f"{label} line {line}: invalid requires-python: {error}") from error
        if not spec.contains(pins.python_version, prereleases=True):
            warnings.append(
                f"{label}: requires-python {requires_python} ignored: FLOps runs Python "
                f"{pins.python_version} (python is never installed)"
            )
    return [_entry(item, item, f"{label} line {_line_of(text, item)}") for item in declared]


def _line_of(text: str, needle: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if f'"{needle}"' in line or f"'{needle}'" in line or line.strip().startswith(needle):
            return number
    return 1


# --- conda.yaml -------------------------------------------------------------------------


def _read_conda(path: Path, repo: Path, warnings: list[str]) -> list[_Entry]:
    label = _label(path, repo)
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as error:
        line = error.problem_mark.line + 1 if error.problem_mark else 1
        raise DependencyError(f"{label} line {line}: invalid YAML: {error.problem}") from error
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise DependencyError(f"{label}: cannot read: {error}") from error
    if root is None:
        return []
    if not isinstance(root, yaml.MappingNode):
        raise DependencyError(f"{label} line 1: expected a mapping with a 'dependencies' list")
    dependencies = _mapping_value(root, "dependencies")
    if dependencies is None:
        return []
    if not isinstance(dependencies, yaml.SequenceNode):
        raise DependencyError(f"{label} line {_line(dependencies)}: 'dependencies' must be a list")
    entries: list[_Entry] = []
    for item in dependencies.value:
        where = f"{label} line {_line(item)}"
        if isinstance(item, yaml.ScalarNode):
            entries.append(_conda_entry(str(item.value), where))
        elif isinstance(item, yaml.MappingNode):
            for key, value in item.value:
                if key.value != "pip":
                    warnings.append(f"{where}: '{key.value}:' section ignored")
                    continue
                if not isinstance(value, yaml.SequenceNode):
                    raise DependencyError(f"{where}: 'pip:' must be a list")
                for pip_item in value.value:
                    pip_where = f"{label} line {_line(pip_item)}"
                    if not isinstance(pip_item, yaml.ScalarNode):
                        raise DependencyError(f"{pip_where}: pip entries must be strings")
                    spec_text = re.sub(r"(^|\s)#.*$", "", str(pip_item.value)).strip()
                    if spec_text:
                        entries.extend(_pip_line(spec_text, path, repo, pip_where, warnings, frozenset({path})))
        else:
            raise DependencyError(f"{where}: expected a package spec or a 'pip:' list")
    return entries


def _mapping_value(node: yaml.MappingNode, key: str) -> yaml.Node | None:
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            return value_node
    return None


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


_CONDA_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?P<rest>.*)$")


def _conda_entry(spec: str, where: str) -> _Entry:
    """A conda match spec (`name`, `name=1.2`, `name>=1`, `name 1.2 build`) as PEP 508."""
    text = spec.strip()
    bare = text.split("::", 1)[1] if "::" in text else text  # channel::name
    match = _CONDA_SPEC.match(bare)
    if not match or "|" in bare or "[" in bare:
        raise DependencyError(f"{where}: {text!r} is not a conda package spec this builder understands")
    name = CONDA_TO_PIP.get(match["name"].lower(), match["name"])
    rest = match["rest"].strip()
    if not rest:
        version = ""
    elif rest.startswith("=="):
        version = "==" + re.split(r"[=\s]", rest[2:].strip(), maxsplit=1)[0]  # drop a build string
    elif rest[0] in "<>!~":
        version = rest.replace(" ", "")
    else:
        # `=1.2.3[=build]` or `1.2.3 [build]`: conda's fuzzy match, 1.2 means 1.2.*.
        raw = rest[1:] if rest.startswith("=") else rest
        raw = re.split(r"[=\s]", raw.strip(), maxsplit=1)[0]
        version = _conda_version(raw, text, where)
    return _entry(text, f"{name}{version}", where)


def _conda_version(raw: str, text: str, where: str) -> str:
    if raw.endswith("*"):
        raw = raw.rstrip("*").rstrip(".")
        return f"=={raw}.*"
    try:
        release = Version(raw).release
    except InvalidVersion as error:
        raise DependencyError(f"{where}: {text!r} has an invalid version {raw!r}") from error
    return f"=={raw}" if len(release) >= 3 else f"=={raw}.*"


# --- fitting to the platform ------------------------------------------------------------


def _fit_to_platform(entry: _Entry, pins: PlatformPins, warnings: list[str]) -> str | None:
    """The requirement to install for `entry` (None: dropped), warning about every change."""
    req = Requirement(entry.requirement)
    name = canonicalize_name(req.name)
    where = entry.where
    if name == "python":
        if req.specifier and not req.specifier.contains(pins.python_version, prereleases=True):
            warnings.append(
                f"{where}: {entry.text} ignored: FLOps runs Python {pins.python_version} (python is never installed)"
            )
        return None
    if name in DROPPED_NAMES:
        return None
    if name in MLFLOW_NAMES:
        tracking = pins.specs.get("mlflow", "mlflow")
        warnings.append(
            f"{where}: {entry.text} dropped: learners run without MLflow and the aggregator "
            f"uses the platform's {tracking}"
        )
        return None
    if name in PLATFORM_SELF:
        warnings.append(f"{where}: {entry.text} dropped: {name} is provided by the platform")
        return None
    if name == "torch" and pins.torch_version:
        if (req.url or req.specifier) and not _satisfied(req, pins.torch_version):
            warnings.append(f"{where}: {entry.text} relaxed to the platform's torch=={pins.torch_version}")
        return _render(name, req.extras, f"=={pins.torch_version}", req.marker)
    if name in pins.specs:
        installed = pins.installed.get(name)
        if req.url or (req.specifier and (installed is None or not _satisfied(req, installed))):
            warnings.append(f"{where}: {entry.text} relaxed to the platform's {pins.specs[name]}")
        return _render(name, req.extras, "", req.marker)
    if req.url:
        return f"{_render(name, req.extras, '', None)} @ {req.url}" + (f" ; {req.marker}" if req.marker else "")
    return _render(name, req.extras, str(req.specifier), req.marker)


def _satisfied(req: Requirement, version: str) -> bool:
    return not req.url and req.specifier.contains(version, prereleases=True)


def _render(name: str, extras: set[str], specifier: str, marker: Marker | None) -> str:
    text = name + (f"[{','.join(sorted(extras))}]" if extras else "") + specifier
    return text + (f"; {marker}" if marker else "")


def _label(path: Path, repo: Path) -> str:
    try:
        return path.resolve().relative_to(repo.resolve()).as_posix()
    except ValueError:
        return str(path)
