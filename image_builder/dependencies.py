"""Reads an ML repository's dependencies and fits them to what the platform can honour.

One file declares them: `requirements.txt`, `pyproject.toml` (`[project].dependencies`) or
an MLflow-style `conda.yaml` / `conda.yml` (conda specs plus a nested `pip:` list). The
result is a sorted list of PEP 508 requirement strings, plus warnings for every pin the
platform relaxed. Two steps:

- `read_dependencies` (static, no network): Python is never installed (the platform's
  interpreter runs the code), MLflow never reaches a learner (the aggregator gets the
  platform's own), packages the platform itself depends on (flwr, numpy, pandas,
  scikit-learn, torch, ...) follow the platform's versions, torchvision follows the
  platform's torch, and the platform's floors (`PlatformPins.floors`: NumPy stays at the
  major the platform's compiled data stack runs with) are added.
- `fit_by_resolution`: the platform's requirements and the user's are resolved together
  (`uv pip compile`, or pip's dry run); while the resolver fails, the user pins its message
  blames are relaxed (`==1.2` to `>=1.2`, then to any version), a bounded number of rounds.
  A pin the resolver never blames is kept as written; each relaxed pin is one warning that
  names the pin, what it conflicted with and what is used instead. A conflict that names
  no user pin, or none of the platform's packages, fails with the resolver's whole reason.
"""

import importlib.metadata
import platform as _platform
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
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
    # name -> a requirement every environment gets, beyond what the platform declares:
    # what its packages need at run time without saying so in their metadata.
    floors: dict[str, str] = field(default_factory=dict)

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
            floors=numpy_floor(installed.get("numpy")),
        )

    def spec(self, name: str) -> str:
        """The platform's requirement for `name`, with its floor where it has one."""
        return self.floors.get(name) or self.specs.get(name, name)

    def resolution_requirements(self) -> list[str]:
        """What the platform itself installs in an environment (base and tracking), as resolver input.

        torch is the user's to ask for (then at the platform's version, see `_fit_to_platform`).
        """
        return sorted({self.spec(name) for name in self.specs if name != "torch"} | set(self.floors.values()))

    def names(self) -> set[str]:
        return set(self.specs) | set(self.floors) | {PLATFORM_DISTRIBUTION}


def numpy_floor(installed: str | None) -> dict[str, str]:
    """NumPy at the major version the platform runs with, when that is 2 or later.

    The platform's compiled data stack is built against NumPy 2 and does not always say so:
    pyarrow 26 declares no NumPy requirement at all and fails at import with NumPy 1.x
    ("pyarrow requires NumPy 2.0 or newer"), so a user pin that holds NumPy at 1.26 would
    install cleanly and break every learner in round 1.
    """
    if installed is None:
        return {}
    try:
        major = Version(installed).major
    except InvalidVersion:
        return {}
    return {"numpy": f"numpy>={major}"} if major >= 2 else {}


@dataclass(frozen=True)
class Pin:
    """A user requirement with a version (or URL) of its own, which resolution may relax."""

    name: str  # canonical
    requirement: str  # PEP 508, as it enters resolution
    text: str  # as the user wrote it
    where: str  # "conda.yaml line 7"


@dataclass(frozen=True)
class Dependencies:
    """The requirements to install for a repository, and what was changed on the way."""

    source: Path
    requirements: list[str]
    warnings: list[str]
    pins: tuple[Pin, ...] = ()  # the user's own pins among `requirements`
    versions: dict[str, str] = field(default_factory=dict)  # name -> version, once resolved


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
    requirements: set[str] = set()
    user_pins: dict[str, Pin] = {}
    for entry in entries:
        fitted = _fit_to_platform(entry, pins, warnings)
        if fitted is None:
            continue
        requirement, relaxable = fitted
        requirements.add(requirement)
        if relaxable:
            name = str(canonicalize_name(Requirement(requirement).name))
            user_pins.setdefault(requirement, Pin(name, requirement, entry.text, entry.where))
    names = {str(canonicalize_name(Requirement(line).name)) for line in requirements}
    if "torchvision" in names and "torch" not in names and pins.torch_version:
        requirements.add(f"torch=={pins.torch_version}")
        warnings.append(f"torchvision needs torch: the platform's torch=={pins.torch_version} is installed with it")
    requirements |= {floor for name, floor in pins.floors.items() if name not in names}
    return Dependencies(
        source=source,
        requirements=sorted(requirements),
        warnings=warnings,
        pins=tuple(sorted(user_pins.values(), key=lambda pin: pin.requirement)),
    )


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


def torchvision_for(torch_version: str) -> str | None:
    """The torchvision release series built for a torch release: torch 2.N goes with torchvision 0.(N+15)."""
    try:
        release = Version(torch_version).release
    except InvalidVersion:
        return None
    if len(release) < 2 or release[0] != 2:
        return None
    return f"0.{release[1] + 15}"


def _fit_to_platform(entry: _Entry, pins: PlatformPins, warnings: list[str]) -> tuple[str, bool] | None:
    """The requirement to install for `entry` (None: dropped) and whether it is the user's own pin.

    Warns about every change."""
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
        return _render(name, req.extras, f"=={pins.torch_version}", req.marker), False
    series = torchvision_for(pins.torch_version) if name == "torchvision" and pins.torch_version else None
    if series is not None:
        if req.url or (req.specifier and not _admits_series(req.specifier, series)):
            warnings.append(
                f"{where}: {entry.text} relaxed to torchvision=={series}.*, the release built for the "
                f"platform's torch {pins.torch_version}"
            )
        return _render(name, req.extras, f"=={series}.*", req.marker), False
    if name in pins.specs or name in pins.floors:
        installed = pins.installed.get(name)
        floor = pins.floors.get(name)
        specifier = str(Requirement(floor).specifier) if floor else ""
        if req.url or (req.specifier and (installed is None or not _satisfied(req, installed))):
            warnings.append(f"{where}: {entry.text} relaxed to the platform's {pins.spec(name)}")
        return _render(name, req.extras, specifier, req.marker), False
    if req.url:
        url = f"{_render(name, req.extras, '', None)} @ {req.url}" + (f" ; {req.marker}" if req.marker else "")
        return url, True
    return _render(name, req.extras, str(req.specifier), req.marker), bool(req.specifier)


def _admits_series(specifier: SpecifierSet, series: str) -> bool:
    return any(specifier.contains(f"{series}.{patch}", prereleases=True) for patch in range(20))


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


# --- fitting by resolution --------------------------------------------------------------

MAX_ROUNDS = 10
RESOLUTION_FORMAT = 1


@dataclass(frozen=True)
class Resolution:
    """One resolver run over a set of requirements."""

    versions: dict[str, str] | None  # canonical name -> version, when they resolved
    message: str = ""  # otherwise: the resolver's whole reason, cleaned, one paragraph
    conflict: bool = False  # the requirements cannot go together (not: the resolver could not run)

    @property
    def ok(self) -> bool:
        return self.versions is not None


Resolve = Callable[[list[str]], Resolution]
Log = Callable[[str], None]


def cached(resolve: Resolve, cache_dir: Path, identity: str) -> Resolve:
    """`resolve` with its answers kept in `cache_dir`, per requirement set and `identity`.

    `identity` names what else decides the answer: the installer, interpreter and index.
    Answers are kept (resolved or conflicting) as environments are: an index that changes
    later does not change a build of the same inputs. A resolver that could not run is asked
    again next time.
    """
    from image_builder.files import read_json, text_digest, write_json_atomic

    def run(requirements: list[str]) -> Resolution:
        key = text_digest({"format": RESOLUTION_FORMAT, "identity": identity, "requirements": sorted(requirements)})
        path = cache_dir / f"{key[:32]}.json"
        record = read_json(path)
        if isinstance(record, dict) and record.get("key") == key:
            versions = record.get("versions")
            return Resolution(
                versions=dict(versions) if isinstance(versions, dict) else None,
                message=str(record.get("message", "")),
                conflict=bool(record.get("conflict")),
            )
        outcome = resolve(requirements)
        if outcome.ok or outcome.conflict:
            write_json_atomic(
                path,
                {"key": key, "versions": outcome.versions, "message": outcome.message, "conflict": outcome.conflict},
            )
        return outcome

    return run


def fit_by_resolution(deps: Dependencies, pins: PlatformPins, resolve: Resolve, log: Log = print) -> Dependencies:
    """`deps` with exactly the user pins relaxed that the resolver blames for a conflict with the platform.

    Resolves the platform's requirements (`PlatformPins.resolution_requirements`) with the
    user's; while that fails, every user pin the resolver's message names is relaxed one step
    (`_relax`), for at most MAX_ROUNDS rounds. Raises DependencyError, with the resolver's
    whole reason, when a conflict blames no user pin, names nothing of the platform (the
    repository's own pins conflict) or outlasts the rounds. A resolver that cannot run
    (no network) leaves the pins as they are, with a warning: the install has the last word.
    """
    label = deps.source.name
    if not deps.pins and not any(_requirement_name(line) == "torchvision" for line in deps.requirements):
        return deps  # nothing to relax and nothing to check: the install resolves as it would
    current = {pin.requirement: pin.requirement for pin in deps.pins}  # as written -> as relaxed now
    fixed = sorted(set(deps.requirements) - set(current))
    platform = pins.resolution_requirements()
    blame: dict[str, tuple[list[str], str]] = {}  # as written -> (what it conflicts with, the resolver's words)
    outcome = Resolution(versions=None)
    for round_number in range(1, MAX_ROUNDS + 1):
        requirements = sorted({*fixed, *current.values()})
        outcome = resolve([*platform, *requirements])
        if outcome.ok or not outcome.conflict:
            break
        message = outcome.message
        blamed = [written for written, now in current.items() if _blamed(now, message) and _relax(now) is not None]
        # The strictest first: a pin with a ceiling or an exact version is relaxed before a mere floor
        # (pip names every requirement on the package in conflict, floors that fit both sides included).
        strict = [written for written in blamed if not _floor_only(current[written])]
        blamed = strict or blamed
        if not blamed:
            raise DependencyError(
                f"{label}: the requirements cannot be installed together with the platform's, and no pin "
                f"of {label} can be relaxed to change that; the resolver says: {message}"
            )
        conflicts = _platform_named(message, pins, {_requirement_name(current[written]) for written in blamed})
        if not conflicts:
            names = ", ".join(current[written] for written in blamed)
            raise DependencyError(
                f"{label}: {names} cannot be installed, and not because of the platform (the repository's "
                f"own requirements): fix them in {label}; the resolver says: {message}"
            )
        for written in blamed:
            relaxed = _relax(current[written])
            assert relaxed is not None
            log(f"round {round_number}: {current[written]} relaxed to {relaxed}: it conflicts with {conflicts[0]}")
            blame.setdefault(written, (conflicts, message))
            current[written] = relaxed
    else:
        relaxed_names = ", ".join(sorted(written for written, now in current.items() if now != written))
        raise DependencyError(
            f"{label}: the requirements still conflict with the platform's after {MAX_ROUNDS} rounds of "
            f"relaxing pins ({relaxed_names}); the resolver says: {outcome.message}"
        )
    versions = outcome.versions or {}
    warnings = list(deps.warnings)
    by_requirement = {pin.requirement: pin for pin in deps.pins}
    for written, now in current.items():
        if now == written:
            continue
        pin = by_requirement[written]
        conflicts, message = blame[written]
        used = versions.get(pin.name)
        instead = now if now != _bare(now) else f"{now} (any version)"
        warnings.append(
            f"{pin.where}: {pin.text} relaxed to {instead}"
            + (f", {pin.name} {used} is used" if used else "")
            + f": it conflicts with {' and '.join(conflicts)}; the resolver says: {message}"
        )
    if not outcome.ok:
        warnings.append(
            f"dependencies were not resolved before installing, pins are kept as written "
            f"(the install decides): {outcome.message}"
        )
    else:
        mismatch = torchvision_mismatch(versions.get("torch"), versions.get("torchvision"), label)
        if mismatch:
            raise DependencyError(mismatch)
    return replace(
        deps,
        requirements=sorted({*fixed, *current.values()}),
        warnings=warnings,
        pins=tuple(replace(pin, requirement=current[pin.requirement]) for pin in deps.pins),
        versions=versions,
    )


def torchvision_mismatch(torch: str | None, torchvision: str | None, label: str = "the dependency file") -> str | None:
    """Why `torchvision` cannot go with `torch` (a CPU torch with a CUDA torchvision), with the fix; None if it can."""
    if not torch or not torchvision:
        return None
    try:
        torch_local, vision_local = Version(torch).local, Version(torchvision).local
    except InvalidVersion:
        return None
    if torch_local is None or not torch_local.startswith("cpu") or vision_local == torch_local:
        return None
    series = torchvision_for(torch) or "the matching release"
    return torchvision_fix(
        f"torchvision {torchvision} from the package index is a CUDA build, and the platform's torch is the CPU "
        f"build {torch}: the two do not import together (operator torchvision::nms does not exist)",
        torch,
        series,
        label,
    )


def torchvision_fix(problem: str, torch: str, series: str, label: str) -> str:
    return (
        f"{problem}. Fix: provide a CPU build of torchvision {series} (torchvision-{series}.*+cpu, from the "
        f"PyTorch CPU index https://download.pytorch.org/whl/cpu) in a folder the builder's pip configuration "
        f"lists as find-links (PIP_FIND_LINKS or find-links in pip.conf), or remove torchvision from {label}"
    )


def _requirement_name(line: str) -> str:
    return str(canonicalize_name(Requirement(line).name))


def _bare(line: str) -> str:
    req = Requirement(line)
    return _render(str(canonicalize_name(req.name)), req.extras, "", req.marker)


def _relax(line: str) -> str | None:
    """One step looser: a pin (`==1.2`, `~=1.2`, `<2`) keeps only its floor (`>=1.2`), a floor goes.

    None when nothing is left to relax.
    """
    req = Requirement(line)
    bare = _bare(line)
    if req.url:
        return bare
    floors: list[str] = []
    for spec in req.specifier:
        version = spec.version.removesuffix(".*")
        if spec.operator in (">=", ">"):
            floors.append(f"{spec.operator}{version}")
        elif spec.operator in ("==", "~=", "==="):
            try:
                floors.append(f">={Version(version).public}")
            except InvalidVersion:
                continue
    floor = ",".join(sorted(set(floors)))
    name = str(canonicalize_name(req.name))
    if floor and SpecifierSet(floor) != req.specifier:
        return _render(name, req.extras, floor, req.marker)
    return bare if bare != line else None


def _floor_only(line: str) -> bool:
    req = Requirement(line)
    return not req.url and all(spec.operator in (">=", ">") for spec in req.specifier)


_SPEC = r"(?:===?|!=|<=|>=|~=|<|>)\s*[\w.*+!-]+"


def _blamed(line: str, message: str) -> bool:
    """Whether `message` names the requirement `line` as it was asked for (name and the same specifier).

    A package named with other versions (`tqdm>=4.66.3`, someone else's need) is not this pin;
    pip's `name version` form counts for an exact pin of that version.
    """
    req = Requirement(line)
    pattern = _name_pattern(str(canonicalize_name(req.name)))
    asked = req.specifier
    extras_and_markers = r"(?:\[[^\]]*\])?(?:\{[^}]*\})?"
    specifiers = rf"(?P<spec>{_SPEC}(?:\s*,\s*{_SPEC})*)"
    mention = rf"(?<![\w./-]){pattern}{extras_and_markers}(?:\s*{specifiers}|\s+(?P<version>\d[\w.+!-]*))"
    for match in re.finditer(mention, message, re.IGNORECASE):
        text = match["spec"] or f"=={match['version']}"
        try:
            if SpecifierSet(re.sub(r"\s+", "", text).rstrip(".")) == asked:
                return True
        except InvalidSpecifier:
            continue
    return bool(req.url) and _named(str(canonicalize_name(req.name)), message)


def _name_pattern(name: str) -> str:
    return "[-_.]".join(re.escape(part) for part in re.split(r"[-_.]+", name))


def _named(name: str, message: str) -> bool:
    """Whether the resolver's `message` names the package `name` (with a version, or as `versions of NAME`)."""
    pattern = _name_pattern(name)
    versioned = rf"(?<![\w./-]){pattern}(?=\s*(?:\[|\{{|===?|!=|<=|>=|~=|<|>)|\s+\d)"
    spelled = rf"versions? of {pattern}(?![\w-])"
    return re.search(versioned, message, re.IGNORECASE) is not None or (
        re.search(spelled, message, re.IGNORECASE) is not None
    )


def _platform_named(message: str, pins: PlatformPins, exclude: set[str]) -> list[str]:
    """The platform's requirements `message` names (Python included), in the order it names them."""
    found: list[tuple[int, str]] = []
    for name in pins.names() - exclude:
        # Any mention counts, a bare one too (pip: "Cannot install cffi==1.16.0 and flwr because ...").
        match = re.search(rf"(?<![\w./-]){_name_pattern(name)}(?![\w-]|\.\w)", message, re.IGNORECASE)
        if match:
            spec = pins.spec(name) if name != PLATFORM_DISTRIBUTION else "FLOps"
            found.append((match.start(), f"the platform's {spec}"))
    python = re.search(r"\bPython\b", message)
    if python:
        found.append((python.start(), f"the platform's Python {pins.python_version}"))
    return [text for _, text in sorted(found)]
