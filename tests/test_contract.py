"""The repository validator names every missing piece, statically."""

from pathlib import Path

import pytest

from flops.ml_repo.contract import ContractError, check_repository, validate_repository
from tests.conftest import EXAMPLES


def write(repo: Path, files: dict[str, str]) -> Path:
    repo.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (repo / name).write_text(text)
    return repo


def test_every_example_keeps_the_contract() -> None:
    for example in sorted(EXAMPLES.iterdir()):
        assert check_repository(example).ok, (example, check_repository(example).problems)


def test_empty_repository_names_model_manager_and_dependency_file(tmp_path: Path) -> None:
    problems = check_repository(write(tmp_path / "r", {})).problems
    assert any("model_manager.py" in p for p in problems)
    assert any("dependency file" in p for p in problems)


def test_missing_methods_are_each_named(tmp_path: Path) -> None:
    repo = write(
        tmp_path / "r",
        {
            "requirements.txt": "numpy\n",
            "model_manager.py": "class ModelManager:\n    def get_model(self):\n        return 1\n",
        },
    )
    with pytest.raises(ContractError) as caught:
        validate_repository(repo)
    message = str(caught.value)
    for method in (
        "set_model_data",
        "get_model_parameters",
        "set_model_parameters",
        "fit_model",
        "evaluate_model",
    ):
        assert f"{method}()" in message
    assert "get_model()" not in message


def test_methods_inherited_from_a_local_base_count(tmp_path: Path) -> None:
    methods = "".join(
        f"    def {m}(self, *a):\n        pass\n"
        for m in (
            "set_model_data",
            "get_model",
            "get_model_parameters",
            "set_model_parameters",
            "fit_model",
        )
    )
    source = f"class Base:\n{methods}\nclass ModelManager(Base):\n    def evaluate_model(self):\n        pass\n"
    repo = write(tmp_path / "r", {"conda.yaml": "name: x\n", "model_manager.py": source})
    assert check_repository(repo).ok


def test_syntax_error_is_reported_with_line(tmp_path: Path) -> None:
    repo = write(tmp_path / "r", {"requirements.txt": "", "model_manager.py": "class ModelManager(\n"})
    (problem,) = check_repository(repo).problems
    assert "syntax error" in problem and "line" in problem


def test_missing_class_is_named(tmp_path: Path) -> None:
    repo = write(tmp_path / "r", {"pyproject.toml": "", "model_manager.py": "class Model:\n    pass\n"})
    assert check_repository(repo).problems == ["model_manager.py defines no class ModelManager"]
