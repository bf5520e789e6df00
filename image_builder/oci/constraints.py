"""Constraint resolution: which versions the images install.

With `--pip-constraints auto` (the default) images get the versions this builder runs with
(`builder_constraints`: the installed dependency closure of the requirements, `name==version`,
except what the user pinned), so images run what the platform was tested with and the
resolver has nothing to search; `none` leaves it to pip; a path names a constraints file.
"""

import contextlib
import importlib.metadata
import tomllib
from collections.abc import Sequence
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from image_builder.environments import Platform
from image_builder.oci.errors import OciBuildError
from image_builder.oci.options import OciOptions


def platform_requirements(platform: Platform) -> tuple[list[str], list[str]]:
    """The platform's own requirements: (base, tracking extra), from its pyproject.toml."""
    project = tomllib.loads((platform.source / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    base = [str(item) for item in project.get("dependencies", [])]
    tracking = [str(item) for item in project.get("optional-dependencies", {}).get("tracking", [])]
    return base, tracking


def requirement_names(requirements: Sequence[str]) -> set[str]:
    names = set()
    for line in requirements:
        with contextlib.suppress(InvalidRequirement):
            names.add(str(canonicalize_name(Requirement(line).name)))
    return names


def builder_constraints(requirements: Sequence[str], exclude: set[str]) -> list[str]:
    """`name==version` for the dependency closure of `requirements` as installed here.

    Images then get the versions the platform was tested with (and pip has nothing to
    search for). Packages the user pinned (`exclude`) and ones not installed here are left
    to pip; local version labels (`+cpu`) are dropped so that a matching wheel satisfies them.
    """
    pending: list[tuple[str, frozenset[str]]] = []
    for line in requirements:
        with contextlib.suppress(InvalidRequirement):
            req = Requirement(line)
            pending.append((str(canonicalize_name(req.name)), frozenset(req.extras)))
    seen: set[tuple[str, frozenset[str]]] = set()
    pins: dict[str, str] = {}
    while pending:
        name, extras = pending.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if name not in exclude and name != "flops" and dist.read_text("direct_url.json") is None:
            pins[name] = dist.version.split("+", 1)[0]
        for line in dist.requires or []:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            if req.marker is not None and not any(
                req.marker.evaluate({"extra": extra}) for extra in (extras or {""}) | {""}
            ):
                continue
            pending.append((str(canonicalize_name(req.name)), frozenset(req.extras)))
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def constraints_for(options: OciOptions, requirements: Sequence[str], user_requirements: Sequence[str]) -> list[str]:
    if options.pip_constraints == "none":
        return []
    if options.pip_constraints == "auto":
        return builder_constraints(requirements, requirement_names(user_requirements))
    path = Path(options.pip_constraints)
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as error:
        raise OciBuildError(f"cannot read --pip-constraints {path}: {error}") from error
