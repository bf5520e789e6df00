"""No component imports another component's package; `flops` and `flops_utils` import none.

Components meet only through the contracts in `flops/` (models, command lines, events), so a
learner image needs neither MLflow nor Flask, and a change inside one component cannot
break another's imports.
"""

import ast
import subprocess

from tests.conftest import ROOT

COMPONENTS = ("flops_manager", "image_builder", "aggregator", "learner", "observatory")
SHARED = ("flops", "flops_utils")
# The check the issue names, run as is over every package.
IMPORT_GREP = r"^\s*(from|import) (flops_manager|image_builder|aggregator|learner|observatory)\b"


def imported_packages(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in `tree`, wherever it stands."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def test_no_component_imports_another() -> None:
    violations = []
    files = 0
    for package in (*SHARED, *COMPONENTS):
        for path in sorted((ROOT / package).rglob("*.py")):
            files += 1
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for line, imported in imported_packages(tree):
                if imported in COMPONENTS and imported != package:
                    violations.append(f"{path.relative_to(ROOT)}:{line}: {package} imports {imported}")
    assert files > 50, "the packages were not found"
    assert not violations, "imports across components:\n" + "\n".join(violations)


def test_the_issue_grep_finds_no_import_across_components() -> None:
    packages = [package for package in (*SHARED, *COMPONENTS) if (ROOT / package).is_dir()]
    result = subprocess.run(
        ["grep", "-rnIE", IMPORT_GREP, *packages], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode in (0, 1), result.stderr
    across = []
    for hit in result.stdout.splitlines():
        path, _, text = hit.split(":", 2)
        imported = text.split()[1].split(".")[0]
        if imported != path.split("/")[0]:
            across.append(hit)
    assert result.stdout, "the grep should at least find each component's imports of itself"
    assert not across, "imports across components:\n" + "\n".join(across)
