"""The image builder's local target: dependencies, repository checks, cached environments."""

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flops.build import BuildOutcome, BuildResult
from flops.events import BuilderFailed, BuilderStarted
from flops.net import free_port
from image_builder import main as builder_main
from image_builder.dependencies import DependencyError, PlatformPins, read_dependencies
from image_builder.environments import IndexSettings, environment_key, is_complete, prepare_platform
from image_builder.settings import BuilderSettings
from image_builder.source import RepositoryRefused, check_tree, fetch_source
from image_builder.stages import StageFailed, Stages
from tests.conftest import EXAMPLES, ROOT

PINS = PlatformPins(
    python_version="3.11.7",
    specs={
        "flwr": "flwr==1.41.0",
        "numpy": "numpy>=1.26",
        "pandas": "pandas>=2.0",
        "scikit-learn": "scikit-learn>=1.4",
        "mlflow": "mlflow<4,>=3.1",
        "torch": "torch==2.13.0",
    },
    installed={
        "flwr": "1.41.0",
        "numpy": "2.4.6",
        "pandas": "3.1.1",
        "scikit-learn": "1.9.1",
        "torch": "2.13.0+cpu",
    },
    torch_version="2.13.0+cpu",
)

FLOPS_CONDA_YAML = """\
name: mlflow-env
channels:
  - conda-forge
dependencies:
  - python=3.10.14
  - pip<=24.0
  - pip:
      - scikit-learn==1.4.2
      - numpy
      - mlflow==2.11.3
"""

BUILDER = str(Path(sys.executable).parent / "flops-image-builder")
MODEL_MANAGER = (EXAMPLES / "digits-sklearn" / "model_manager.py").read_text()


def write(repo: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    return repo


def git_repo(path: Path, source: Path | None = None, files: dict[str, str] | None = None) -> Path:
    """A real git repository with one commit: a copy of `source` and/or `files`."""
    if source is not None:
        shutil.copytree(source, path, ignore=shutil.ignore_patterns("__pycache__", ".flops"))
    path.mkdir(parents=True, exist_ok=True)
    write(path, files or {})
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "init"]):
        subprocess.run(["git", *args], cwd=path, env=env, check=True, capture_output=True)
    return path


def builder_args(url: str, cache: Path | str, result_file: Path | str) -> list[str]:
    return [
        "--project-id",
        "p1",
        "--repo-url",
        url,
        "--cache-dir",
        str(cache),
        "--result-file",
        str(result_file),
    ]


def read_outcome(result_file: Path) -> BuildOutcome:
    """The result file as the manager reads it: exactly one of result and failure."""
    text = result_file.read_text()
    assert len(json.loads(text)) == 1, text
    return BuildOutcome.model_validate_json(text)


def read_result(result_file: Path) -> BuildResult:
    outcome = read_outcome(result_file)
    assert outcome.result is not None, outcome.failure
    return outcome.result


def read_failure(result_file: Path) -> tuple[str, str]:
    outcome = read_outcome(result_file)
    assert outcome.failure is not None, outcome.result
    return outcome.failure.stage, outcome.failure.error


def run_builder(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLOPS_MQTT")}
    return subprocess.run(
        [BUILDER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
        check=False,
    )


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Builder events, captured instead of published."""
    published: list[Any] = []

    def capture(event: Any, _settings: Any = None) -> bool:
        published.append(event)
        return True

    monkeypatch.setattr(builder_main, "publish_once", capture)
    return published


# --- dependencies -----------------------------------------------------------------------


def test_requirements_txt_is_normalised_and_fitted_to_the_platform(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "requirements.txt": (
                "# training\n"
                "Scikit_Learn==1.4.2  # old pin\n"
                "numpy>=1.20\n"
                "requests[socks] >=2.31, <3 ; python_version >= '3.8'\n"
                "flwr==1.8.0\n"
                "mlflow-skinny==2.11.3\n"
                "torch>=2.0 \\\n"
                "   --hash=sha256:abc\n"
                "--extra-index-url https://example.org/simple\n"
                "-r more.txt\n"
                "pip>=23\n"
            ),
            "more.txt": "tqdm==4.66.1\nsetuptools\n",
        },
    )
    deps = read_dependencies(tmp_path, PINS)
    assert deps.source.name == "requirements.txt"
    assert deps.requirements == [
        "flwr",
        "numpy",
        'requests[socks]<3,>=2.31; python_version >= "3.8"',
        "scikit-learn",
        "torch==2.13.0+cpu",
        "tqdm==4.66.1",
    ]
    text = "\n".join(deps.warnings)
    assert "requirements.txt line 2: Scikit_Learn==1.4.2 relaxed to the platform's scikit-learn>=1.4" in text
    assert "flwr==1.8.0 relaxed to the platform's flwr==1.41.0" in text
    assert "mlflow-skinny==2.11.3 dropped" in text
    assert "--extra-index-url ignored" in text
    assert "--hash ignored" in text
    assert "numpy" not in text  # numpy>=1.20 holds for the platform's numpy: nothing to say


def test_pyproject_dependencies_and_an_old_python(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "pyproject.toml": (
                '[project]\nname = "x"\nversion = "1"\nrequires-python = ">=3.9,<3.11"\n'
                'dependencies = [\n  "pandas==1.5.3",\n  "scipy>=1.10",\n  "mlflow",\n]\n'
            )
        },
    )
    deps = read_dependencies(tmp_path, PINS)
    assert deps.requirements == ["pandas", "scipy>=1.10"]
    text = "\n".join(deps.warnings)
    assert "requires-python >=3.9,<3.11 ignored" in text
    assert "pyproject.toml line 6: pandas==1.5.3 relaxed to the platform's pandas>=2.0" in text
    assert "mlflow dropped" in text


def test_flops_style_conda_yaml(tmp_path: Path) -> None:
    write(tmp_path, {"conda.yaml": FLOPS_CONDA_YAML})
    deps = read_dependencies(tmp_path, PINS)
    assert deps.requirements == ["numpy", "scikit-learn"]
    assert deps.warnings == [
        "conda.yaml line 5: python=3.10.14 ignored: FLOps runs Python 3.11.7 (python is never installed)",
        "conda.yaml line 8: scikit-learn==1.4.2 relaxed to the platform's scikit-learn>=1.4",
        "conda.yaml line 10: mlflow==2.11.3 dropped: learners run without MLflow and the aggregator "
        "uses the platform's mlflow<4,>=3.1",
    ]


def test_conda_specs_become_pep508(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "conda.yml": (
                "dependencies:\n  - python>=3.8\n  - conda-forge::scipy=1.11.4=py311h64a7726_0\n"
                "  - tqdm=4.66\n  - pyyaml 6.0.1\n  - requests>=2.31,<3\n  - pytorch=2.1.0\n  - wheel\n"
            )
        },
    )
    deps = read_dependencies(tmp_path, PINS)
    assert deps.requirements == [
        "pyyaml==6.0.1",
        "requests<3,>=2.31",
        "scipy==1.11.4",
        "torch==2.13.0+cpu",
        "tqdm==4.66.*",
    ]
    assert deps.warnings == ["conda.yml line 7: pytorch=2.1.0 relaxed to the platform's torch==2.13.0+cpu"]


def test_the_installed_platform_pins_are_read() -> None:
    pins = PlatformPins.current()
    assert pins.specs["flwr"] == "flwr==1.41.0"
    assert {"numpy", "pandas", "pyarrow", "scikit-learn", "torch", "mlflow"} <= set(pins.specs)
    assert pins.python_version == f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    # NumPy stays at the major the platform's data stack runs with here (pyarrow 26 needs NumPy 2).
    import numpy

    assert pins.floors == {"numpy": f"numpy>={numpy.__version__.split('.')[0]}"}
    assert pins.floors["numpy"] in pins.resolution_requirements()
    assert "torch" not in " ".join(pins.resolution_requirements())  # the user's to ask for


def test_every_example_has_readable_dependencies() -> None:
    for example in sorted(EXAMPLES.iterdir()):
        deps = read_dependencies(example)
        assert any(req.startswith("numpy") for req in deps.requirements), example
        assert not any(req.startswith("mlflow") for req in deps.requirements), example


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"requirements.txt": "numpy\n\nscikit-learn=>1.4\n"},
            "requirements.txt line 3: 'scikit-learn=>1.4'",
        ),
        ({"requirements.txt": "-e .\n"}, "requirements.txt line 1: editable installs"),
        ({"requirements.txt": "-r ../outside.txt\n"}, "lies outside the repository"),
        (
            {"pyproject.toml": '[project]\nname = "x"\ndependencies = [\n  "ok",\n  "bad name!",\n]\n'},
            "line 5",
        ),
        ({"pyproject.toml": "[project\n"}, "pyproject.toml: invalid TOML"),
        (
            {"conda.yaml": "dependencies:\n  - numpy\n  - pip:\n      - numpy==\n"},
            "conda.yaml line 4: 'numpy=='",
        ),
        ({"conda.yaml": "dependencies:\n  - numpy\n - broken: [\n"}, "conda.yaml line 3: invalid YAML"),
        (
            {"conda.yaml": "dependencies:\n  - numpy=1.x.y\n"},
            "conda.yaml line 2: 'numpy=1.x.y' has an invalid version",
        ),
        ({"README.md": "no deps"}, "no dependency file"),
    ],
)
def test_malformed_dependency_files_name_file_and_line(tmp_path: Path, files: dict[str, str], message: str) -> None:
    write(tmp_path, files)
    with pytest.raises(DependencyError) as caught:
        read_dependencies(tmp_path, PINS)
    assert message in str(caught.value)


def test_only_one_dependency_file_is_read(tmp_path: Path) -> None:
    write(
        tmp_path,
        {"requirements.txt": "numpy\n", "conda.yaml": FLOPS_CONDA_YAML, "pyproject.toml": "[tool.x]\n"},
    )
    deps = read_dependencies(tmp_path, PINS)
    assert deps.requirements == ["numpy"]
    assert deps.warnings == ["conda.yaml ignored: dependencies are read from requirements.txt only"]


# --- repository checks and environment keys --------------------------------------------


def test_symlink_outside_the_repository_is_refused(tmp_path: Path, events: list[Any]) -> None:
    (tmp_path / "secret.txt").write_text("secret")
    repo = write(tmp_path / "repo", {"requirements.txt": "numpy\n", "model_manager.py": MODEL_MANAGER})
    (repo / "data").mkdir()
    (repo / "data" / "inside.txt").symlink_to("../requirements.txt")
    (repo / "data" / "leak").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(RepositoryRefused, match=r"symlink data/leak points outside the repository"):
        check_tree(repo, 2**20)

    result_file = tmp_path / "result.json"
    code = builder_main.main(builder_args(str(repo), str(tmp_path / "cache"), str(result_file)))
    assert code == 1
    stage, error = read_failure(result_file)
    assert stage == "validate"
    assert "data/leak" in error
    assert [(e.event, e.payload) for e in events][-1] == ("failed", {"stage": "validate", "transient": False})
    assert events[-1].error == error


def test_repositories_over_the_size_limit_are_refused(tmp_path: Path) -> None:
    repo = write(tmp_path / "repo", {"requirements.txt": "numpy\n", "model_manager.py": MODEL_MANAGER})
    (repo / "weights.bin").write_bytes(b"\0" * (2 * 2**20))
    assert check_tree(repo, 3 * 2**20) > 2 * 2**20
    with pytest.raises(RepositoryRefused, match="larger than the limit of 1 MB"):
        check_tree(repo, 2**20)
    result_file = tmp_path / "result.json"
    args = builder_args(str(repo), tmp_path / "c", result_file)
    assert builder_main.main([*args, "--max-repo-mb", "1"]) == 1
    assert read_failure(result_file)[0] == "validate"


def test_environment_keys_follow_role_requirements_and_platform_source(tmp_path: Path) -> None:
    platform = prepare_platform(tmp_path)
    assert prepare_platform(tmp_path).digest == platform.digest  # stable for the same source
    assert (platform.source / "flops" / "events.py").is_file()
    key = environment_key(platform, "learner", ["numpy", "scikit-learn"])
    assert environment_key(platform, "learner", ["scikit-learn", "numpy"]) == key
    assert environment_key(platform, "aggregator", ["numpy", "scikit-learn"]) != key
    assert environment_key(platform, "learner", ["numpy"]) != key
    edited = type(platform)(**{**platform.__dict__, "digest": "0" * 32})
    assert environment_key(edited, "learner", ["numpy", "scikit-learn"]) != key
    # A half-built folder (no marker, or another key's marker) never counts as an environment.
    half = tmp_path / "half"
    (half / "bin").mkdir(parents=True)
    (half / "bin" / "python").symlink_to(sys.executable)
    assert not is_complete(half, key)
    (half / "flops-env.json").write_text(json.dumps({"key": "other"}))
    assert not is_complete(half, key)
    (half / "flops-env.json").write_text(json.dumps({"key": key}))
    assert is_complete(half, key)


def test_pip_index_settings_become_uv_flags(tmp_path: Path) -> None:
    config = tmp_path / "pip.conf"
    config.write_text("[global]\nextra-index-url = file:///a/simple file:///b/simple\nfind-links = /x\n")
    settings = IndexSettings.from_pip(
        {"PIP_CONFIG_FILE": str(config), "PIP_FIND_LINKS": "/opt/wheels", "PIP_INDEX_URL": "https://m/simple"}
    )
    assert settings.uv_args()[:2] == ["--index-url", "https://m/simple"]
    assert "file:///b/simple" in settings.uv_args()
    assert settings.find_links == ("/opt/wheels",)  # the variable overrides the file
    assert settings.uv_args()[-2:] == ["--index-strategy", "unsafe-best-match"]
    assert IndexSettings.from_pip({"PIP_CONFIG_FILE": os.devnull, "HOME": str(tmp_path)}).uv_args() == []


# --- whole builds -----------------------------------------------------------------------


def test_repository_without_the_contract_fails_at_validate(tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "repo", files={"README.md": "not an ML repository\n"})
    result_file = tmp_path / "result.json"
    done = run_builder(*builder_args(str(repo), str(tmp_path / "c"), str(result_file)))
    assert done.returncode == 1, done.stdout + done.stderr
    stage, error = read_failure(result_file)
    assert stage == "validate"
    assert "model_manager.py" in error and "\n" not in error
    assert "FAILED at validate" in done.stdout


def test_unreachable_repository_fails_at_fetch(tmp_path: Path, events: list[Any]) -> None:
    result_file = tmp_path / "result.json"
    url = f"http://127.0.0.1:{free_port()}/nobody/nothing.git"
    code = builder_main.main(builder_args(url, str(tmp_path / "c"), str(result_file)))
    assert code == 1
    stage, error = read_failure(result_file)
    assert stage == "fetch"
    assert f"cannot fetch {url}: fatal: unable to access" in error and "Failed to connect" in error
    assert [e.event for e in events] == ["started", "failed"]
    assert events[0].typed_payload() == BuilderStarted(repo_url=url, ref=None)
    assert events[1].typed_payload() == BuilderFailed(stage="fetch") and events[1].component == "builder"
    assert events[1].error == error


def test_source_stage_fetches_checks_and_reads_dependencies(tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "repo", source=EXAMPLES / "digits-sklearn")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    stages = Stages()
    cache = tmp_path / "cache"
    source = fetch_source(str(repo), None, cache, tmp_path / "copy", 2**20, stages)
    assert source.commit == head and source.url == str(repo.resolve())
    assert not source.checkout.exists()  # the clone goes once its tree is copied
    assert not (cache / "repos").exists()  # and no clone cache is kept
    assert source.dependencies.requirements == ["numpy>=2", "scikit-learn"]
    assert (source.repo / "model_manager.py").is_file() and not (source.repo / ".git").exists()
    assert list(stages.durations) == ["fetch", "validate", "dependencies"]
    # A refusal found while copying is reported at validate, like the contract.
    big = git_repo(tmp_path / "big", source=EXAMPLES / "digits-sklearn", files={"weights.txt": "0" * 2**20})
    with pytest.raises(StageFailed) as caught:
        fetch_source(str(big), None, cache, tmp_path / "copy-2", 2**20, Stages())
    assert caught.value.stage == "validate" and "larger than the limit of 1 MB" in caught.value.message


def test_check_only_checks_and_builds_nothing(tmp_path: Path, events: list[Any]) -> None:
    repo = git_repo(tmp_path / "repo", source=EXAMPLES / "digits-sklearn")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    cache, result_file = tmp_path / "cache", tmp_path / "result.json"
    assert builder_main.main([*builder_args(str(repo), cache, result_file), "--check-only"]) == 0
    result = read_result(result_file)
    assert result.commit == head
    assert not Path(result.repo_dir).exists()  # the clone the check read is gone with it
    assert set(result.stage_durations) == {"fetch", "validate", "dependencies"}
    assert result.dependency_warnings == []
    assert not (cache / "platform").exists() and not (cache / "envs").exists()
    assert not list((cache / "work").iterdir())  # the private copy is gone
    assert events == []

    broken = git_repo(tmp_path / "broken", files={"README.md": "no code\n", "requirements.txt": "numpy\n"})
    assert builder_main.main([*builder_args(str(broken), cache, result_file), "--check-only"]) == 1
    stage, error = read_failure(result_file)
    assert stage == "validate" and events == []
    assert error.startswith("the repository is not a valid FLOps ML repository: ")
    assert "model_manager.py" in error and error.endswith(
        "(see docs/ml-repository.md for what a repository must provide)"
    )


def test_relaxed_pins_reach_the_result_and_an_unresolvable_one_fails_with_the_whole_reason(tmp_path: Path) -> None:
    """Check-only runs the dependency stage as a build does: the resolver relaxes, or explains."""
    cache, result_file = tmp_path / "cache", tmp_path / "result.json"
    pinned = git_repo(
        tmp_path / "pinned", files={"requirements.txt": "tqdm==4.65.0\n", "model_manager.py": MODEL_MANAGER}
    )
    assert builder_main.main([*builder_args(str(pinned), cache, result_file), "--check-only"]) == 0
    warnings = read_result(result_file).dependency_warnings
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("requirements.txt line 1: tqdm==4.65.0 relaxed to tqdm>=4.65.0, tqdm ")
    assert "it conflicts with the platform's datasets" in warnings[0]
    assert list((cache / "resolutions").glob("*.json"))  # answers kept for the next build

    missing = "flops-test-a-package-that-is-on-no-index-at-all-for-this-check==1.0.0"
    broken = git_repo(
        tmp_path / "broken", files={"requirements.txt": f"{missing}\n", "model_manager.py": MODEL_MANAGER}
    )
    assert builder_main.main([*builder_args(str(broken), cache, result_file), "--check-only"]) == 1
    stage, error = read_failure(result_file)
    assert stage == "dependencies"
    assert error.startswith(f"requirements.txt: {missing} cannot be installed, and not because of the platform")
    # The resolver's reason, whole: not cut at 400 characters.
    assert len(error) > 400 and not error.endswith("...")
    assert error.endswith("we can conclude that your requirements are unsatisfiable."), error


def test_a_bad_host_fails_with_gits_whole_reason(tmp_path: Path, events: list[Any]) -> None:
    result_file = tmp_path / "result.json"
    url = "https://nosuch.invalid/x.git"
    assert builder_main.main([*builder_args(url, tmp_path / "c", result_file), "--check-only"]) == 1
    stage, error = read_failure(result_file)
    assert stage == "fetch"
    assert error == (
        f"cannot fetch {url}: fatal: unable to access 'https://nosuch.invalid/x.git/': "
        "Could not resolve host: nosuch.invalid"
    )
    assert events == []


def test_the_builder_entry_point_imports_no_oci_module_and_oci_imports_no_entry_point() -> None:
    probe = (
        "import sys, image_builder.main\n"
        "assert not [m for m in sys.modules if m.startswith('image_builder.oci')], 'main imports oci'\n"
        "del sys.modules['image_builder.main']\n"
        "import image_builder.oci.builder, image_builder.oci.inference, image_builder.oci.base_image\n"
        "assert 'image_builder.main' not in sys.modules, 'oci imports main'\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr


def test_settings_are_read_from_the_environment_once(tmp_path: Path) -> None:
    config = tmp_path / "pip.conf"
    ca = tmp_path / "ca.crt"
    ca.write_text("certificate")
    config.write_text(f"[global]\nindex-url = https://mirror/simple\ncert = {ca}\n")
    settings = BuilderSettings.from_env(
        {"PIP_CONFIG_FILE": str(config), "FLOPS_BUILDAH_STORAGE_DRIVER": "vfs", "FLOPS_BUILDER_INSTALLER": "pip"}
    )
    assert settings.storage_driver == "vfs" and settings.force_pip
    assert settings.host_pip_options()["pip_index_url"] == "https://mirror/simple"
    assert settings.host_pip_options()["ca_bundle"] == ca
    plain = BuilderSettings.from_env({"PIP_CONFIG_FILE": os.devnull})
    assert plain.storage_driver is None and not plain.force_pip and plain.host_pip_options()["ca_bundle"] is None


@pytest.fixture(scope="module")
def digits_build(module_tmp: Callable[[str], Path]) -> dict[str, Any]:
    """Two builders started together on a fresh cache for a git copy of digits-sklearn."""
    base = module_tmp("builder")
    repo = git_repo(base / "digits", source=EXAMPLES / "digits-sklearn")
    cache = base / "cache"
    started = time.monotonic()
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLOPS_MQTT")}
    processes = [
        subprocess.Popen(
            [BUILDER, *builder_args(str(repo), cache, base / f"result-{index}.json")],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in range(2)
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    cold_s = time.monotonic() - started
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-4000:]
    results = [read_result(base / f"result-{index}.json").model_dump() for index in range(2)]
    return {"repo": repo, "cache": cache, "results": results, "cold_s": cold_s, "base": base}


@pytest.mark.slow
def test_full_build_makes_both_environments(digits_build: dict[str, Any]) -> None:
    first, second = digits_build["results"]
    print(f"cold build (two concurrent builders): {digits_build['cold_s']:.1f} s")
    # Concurrent builders of one key: one built, the other waited and reused the same result.
    assert sorted([first["reused"], second["reused"]]) == [False, True]
    built = first if not first["reused"] else second
    for name in ("commit", "repo_dir", "learner_python", "aggregator_python", "build_key"):
        assert first[name] == second[name]
    assert built["images"] == {} and built["oci"] is None
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=digits_build["repo"], capture_output=True, text=True)
    assert built["commit"] == head.stdout.strip()
    assert set(built["stage_durations"]) == {
        "fetch",
        "validate",
        "dependencies",
        "plan",
        "snapshot",
        "learner_env",
        "aggregator_env",
    }
    repo_dir = Path(built["repo_dir"])
    assert (repo_dir / "model_manager.py").is_file() and not (repo_dir / ".git").exists()
    build_json = json.loads((repo_dir.parent / "build.json").read_text())
    assert build_json["build_key"] == built["build_key"] == repo_dir.parent.name
    assert build_json["requirements"] == ["numpy>=2", "scikit-learn"]

    learner, aggregator = Path(built["learner_python"]), Path(built["aggregator_python"])
    for python, role in ((learner, "learner"), (aggregator, "aggregator")):
        marker = json.loads((python.parent.parent / "flops-env.json").read_text())
        assert marker["role"] == role and marker["requirements"] == ["numpy>=2", "scikit-learn"]
    probe = "import importlib.util as u; print(bool(u.find_spec('mlflow')), bool(u.find_spec('sklearn')))"
    assert subprocess.run([learner, "-c", probe], capture_output=True, text=True).stdout.split() == [
        "False",
        "True",
    ]
    assert subprocess.run([aggregator, "-c", probe], capture_output=True, text=True).stdout.split() == [
        "True",
        "True",
    ]
    # The learner's entry point runs from its relocated environment.
    done = subprocess.run([learner.parent / "flops-learner", "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # No half-built folders are left behind.
    assert not list((digits_build["cache"] / "envs").glob(".tmp-*"))


@pytest.mark.slow
def test_second_build_of_the_same_commit_is_reused_quickly(digits_build: dict[str, Any]) -> None:
    result_file = digits_build["base"] / "again.json"
    started = time.monotonic()
    done = run_builder(*builder_args(str(digits_build["repo"]), str(digits_build["cache"]), str(result_file)))
    elapsed = time.monotonic() - started
    print(f"warm build: {elapsed:.2f} s")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    result = read_result(result_file)
    assert result.reused is True
    assert result.build_key == digits_build["results"][0]["build_key"]
    assert set(result.stage_durations) == {"fetch", "validate", "dependencies", "plan"}
    assert elapsed < 5, elapsed


# --- registry failures: away for now or refused -------------------------------------------


@pytest.fixture
def refusing_registry() -> Any:
    """A registry that answers every call 403 (it is there, and says no)."""
    import http.server
    import threading

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *_: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_registry_that_is_away_fails_the_build_for_now_and_one_that_refuses_for_good(refusing_registry: str) -> None:
    from image_builder.oci.errors import OciBuildError, RegistryUnavailable
    from image_builder.oci.registry import registry_has

    with pytest.raises(RegistryUnavailable, match="connection refused") as away:
        registry_has(f"127.0.0.1:{free_port()}/acme/digits/learner:abc", tls_verify=False, timeout=20)
    assert Stages().failed(away.value).failure().transient

    with pytest.raises(OciBuildError) as refused:
        registry_has(f"{refusing_registry}/acme/digits/learner:abc", tls_verify=False, timeout=20)
    assert not isinstance(refused.value, RegistryUnavailable) and "403" in str(refused.value)
    assert not Stages().failed(refused.value).failure().transient
