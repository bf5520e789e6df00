"""Checks that a repository keeps the ML-repository contract before anything starts.

The check is static (AST), so it needs none of the repository's dependencies and runs in
the manager and builder as safely as in the CLI. It names every missing piece at once.
"""

import ast
from dataclasses import dataclass, field
from pathlib import Path

MODEL_MANAGER_FILE = "model_manager.py"
MODEL_MANAGER_CLASS = "ModelManager"
DEPENDENCY_FILES = ("requirements.txt", "pyproject.toml", "conda.yaml", "conda.yml")
REQUIRED_METHODS = (
    "set_model_data",
    "get_model",
    "get_model_parameters",
    "set_model_parameters",
    "fit_model",
    "evaluate_model",
)
TEMPLATE_BASES = {"ModelManagerTemplate"}


class ContractError(ValueError):
    """The repository does not keep the ML-repository contract."""

    def __init__(self, repo: Path, problems: list[str]) -> None:
        self.repo = repo
        self.problems = problems
        listing = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(
            f"{repo} is not a valid FLOps ML repository:\n{listing}\n"
            "See docs/ml-repository.md for what a repository must provide."
        )


@dataclass
class RepoCheck:
    """What the validator found: problems that block, and the dependency file in use."""

    problems: list[str] = field(default_factory=list)
    dependency_file: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def check_repository(repo: Path) -> RepoCheck:
    """Every way in which `repo` misses the contract (empty when it keeps it)."""
    result = RepoCheck()
    if not repo.is_dir():
        result.problems.append(f"{repo} is not a directory")
        return result

    present = [repo / name for name in DEPENDENCY_FILES if (repo / name).is_file()]
    if not present:
        result.problems.append("no dependency file: add one of " + ", ".join(DEPENDENCY_FILES))
    else:
        result.dependency_file = present[0]

    model_file = repo / MODEL_MANAGER_FILE
    if not model_file.is_file():
        result.problems.append(f"missing file {MODEL_MANAGER_FILE}")
        return result
    try:
        tree = ast.parse(model_file.read_text(encoding="utf-8"), filename=str(model_file))
    except SyntaxError as err:
        result.problems.append(f"{MODEL_MANAGER_FILE} line {err.lineno}: syntax error: {err.msg}")
        return result

    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    manager = classes.get(MODEL_MANAGER_CLASS)
    if manager is None:
        result.problems.append(f"{MODEL_MANAGER_FILE} defines no class {MODEL_MANAGER_CLASS}")
        return result

    defined, resolved = _methods_with_local_bases(manager, classes)
    for method in REQUIRED_METHODS:
        # A method may come from a base class imported from another module; only a class
        # whose bases are all known can be said to lack one.
        if method not in defined and resolved:
            result.problems.append(f"{MODEL_MANAGER_CLASS} in {MODEL_MANAGER_FILE} lacks method {method}()")
    return result


def validate_repository(repo: Path) -> RepoCheck:
    """Like `check_repository`, but raise `ContractError` naming every problem."""
    result = check_repository(repo)
    if not result.ok:
        raise ContractError(repo, result.problems)
    return result


def _methods_with_local_bases(cls: ast.ClassDef, classes: dict[str, ast.ClassDef]) -> tuple[set[str], bool]:
    """Methods of `cls` and its same-file bases, and whether every base was resolved."""
    methods = {node.name for node in cls.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    resolved = True
    for base in cls.bases:
        name = base.id if isinstance(base, ast.Name) else ast.unparse(base).split(".")[-1]
        if name in TEMPLATE_BASES or name in {"ABC", "object"}:
            continue
        if name in classes and name != cls.name:
            inherited, base_resolved = _methods_with_local_bases(classes[name], classes)
            methods |= inherited
            resolved = resolved and base_resolved
        else:
            resolved = False
    return methods, resolved
