"""Dependency resolution that explains itself: exactly the user pins that conflict with the platform are relaxed.

Three layers: the relaxation logic against a scripted resolver (no network); uv's and pip's
resolvers against a small index of generated wheels (offline, both installers must blame the
same pins); and uv against the configured index with the pins FLOps repositories carry.
"""

import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from image_builder.dependencies import (
    Dependencies,
    DependencyError,
    PlatformPins,
    Resolution,
    _relax,
    cached,
    fit_by_resolution,
    read_dependencies,
    torchvision_for,
)
from image_builder.environments import (
    BuildEnvironmentError,
    IndexSettings,
    Installer,
    builder_uv,
    check_environment,
    resolver_message,
    run_logged,
)

FLOPS_PINS = """\
name: mlflow-env
channels:
  - conda-forge
dependencies:
  - python=3.10
  - pip<=24.0
  - pip:
      - mlflow==2.12.2
      - numpy==1.26.4
      - scipy==1.11.4
      - tqdm==4.65.0
      - protobuf==3.20.3
      - cffi==1.16.0
      - scikit-learn==1.4.2
      - tabulate==0.9.0
"""

# Recorded from uv 0.12 (`uv pip compile`) and pip 26 (`pip install --dry-run`) on this index.
UV_TQDM = """\
error: No solution found when resolving dependencies
  cause: Because datasets>=3.0.0 depends on tqdm>=4.66.3 and you require datasets>=3.0, we can conclude that \
you require tqdm>=4.66.3.
         And because you require tqdm==4.65.0, we can conclude that your requirements are unsatisfiable.
"""
PIP_TQDM = """\
Collecting flwr==1.41.0
  Using cached flwr-1.41.0-py3-none-any.whl.metadata (15 kB)
WARNING: Location 'file:///opt/pypi/simple/flwr/' is ignored: it is neither a file nor a directory.
INFO: pip is looking at multiple versions of datasets to determine which version is compatible.
ERROR: Cannot install datasets>=3.0 and tqdm==4.65.0 because these package versions have conflicting dependencies.

The conflict is caused by:
    The user requested tqdm==4.65.0
    datasets 5.2.0 depends on tqdm>=4.66.3
    datasets 5.1.0 depends on tqdm>=4.66.3
    datasets 3.0.0 depends on tqdm>=4.66.3

To fix this you could try to:
1. loosen the range of package versions you've specified
2. remove package versions to allow pip to attempt to solve the dependency conflict

ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/
"""

PINS = PlatformPins(
    python_version="3.11.7",
    specs={"flwr": "flwr==1.41.0", "datasets": "datasets>=3.0", "numpy": "numpy>=1.26", "torch": "torch==2.13.0"},
    installed={"flwr": "1.41.0", "datasets": "4.8.5", "numpy": "2.4.6", "torch": "2.13.0+cpu"},
    torch_version="2.13.0+cpu",
    floors={"numpy": "numpy>=2"},
)


def deps_of(tmp_path: Path, requirements: str, pins: PlatformPins = PINS) -> Dependencies:
    (tmp_path / "requirements.txt").write_text(requirements)
    return read_dependencies(tmp_path, pins)


class Scripted:
    """A resolver that fails while any of `conflicts` (requirement -> message) is asked for."""

    def __init__(self, conflicts: dict[str, str], versions: dict[str, str] | None = None) -> None:
        self.conflicts = conflicts
        self.versions = versions or {}
        self.calls: list[list[str]] = []

    def __call__(self, requirements: list[str]) -> Resolution:
        self.calls.append(requirements)
        for requirement, message in self.conflicts.items():
            if requirement in requirements:
                return Resolution(versions=None, message=message, conflict=True)
        return Resolution(versions=dict(self.versions))


# --- the relaxation logic ---------------------------------------------------------------


def test_only_the_pins_the_resolver_blames_are_relaxed_and_each_says_why(tmp_path: Path) -> None:
    deps = deps_of(tmp_path, "tqdm==4.65.0\ntabulate==0.9.0\nscipy==1.11.4\nnumpy==1.26.4\n")
    assert deps.requirements == ["numpy>=2", "scipy==1.11.4", "tabulate==0.9.0", "tqdm==4.65.0"]
    assert "requirements.txt line 4: numpy==1.26.4 relaxed to the platform's numpy>=2" in deps.warnings
    scipy_message = (
        "No solution found when resolving dependencies: Because scipy==1.11.4 depends on numpy>=1.21.6,<1.28.0 "
        "and you require numpy>=2, we can conclude that your requirements and scipy==1.11.4 are incompatible."
    )
    resolver = Scripted(
        {"tqdm==4.65.0": resolver_message(UV_TQDM.splitlines()), "scipy==1.11.4": scipy_message},
        versions={"tqdm": "4.70.1", "scipy": "1.17.1", "tabulate": "0.9.0"},
    )
    fitted = fit_by_resolution(deps, PINS, resolver, log=lambda _: None)
    assert fitted.requirements == ["numpy>=2", "scipy>=1.11.4", "tabulate==0.9.0", "tqdm>=4.65.0"]
    assert len(resolver.calls) == 3  # tqdm blamed, then scipy, then it resolves
    assert resolver.calls[0][: len(PINS.resolution_requirements())] == PINS.resolution_requirements()
    relaxed = fitted.warnings[len(deps.warnings) :]
    assert len(relaxed) == 2
    tqdm = next(line for line in relaxed if "tqdm" in line.split(":")[1])
    assert tqdm.startswith(
        "requirements.txt line 1: tqdm==4.65.0 relaxed to tqdm>=4.65.0, tqdm 4.70.1 is used: it conflicts with "
        "the platform's datasets>=3.0; the resolver says: No solution found when resolving dependencies: "
        "Because datasets>=3.0.0 depends on tqdm>=4.66.3"
    )
    scipy = next(line for line in relaxed if "scipy" in line.split(":")[1])
    assert "scipy==1.11.4 relaxed to scipy>=1.11.4, scipy 1.17.1 is used" in scipy
    assert "it conflicts with the platform's numpy>=2; the resolver says: No solution found" in scipy
    assert not any("tabulate" in line for line in fitted.warnings)  # never blamed: kept as written
    assert fitted.versions["scipy"] == "1.17.1"


def test_a_pin_blamed_again_loses_its_floor_too(tmp_path: Path) -> None:
    deps = deps_of(tmp_path, "protobuf==8.0\n")
    message = "Because flwr==1.41.0 depends on protobuf>=5.28.0,<7.0.0 and you require protobuf{}, ..."
    resolver = Scripted(
        {"protobuf==8.0": message.format("==8.0"), "protobuf>=8.0": message.format(">=8.0")},
        versions={"protobuf": "6.33.6"},
    )
    fitted = fit_by_resolution(deps, PINS, resolver, log=lambda _: None)
    assert fitted.requirements == ["numpy>=2", "protobuf"]
    assert fitted.warnings[-1].startswith(
        "requirements.txt line 1: protobuf==8.0 relaxed to protobuf (any version), protobuf 6.33.6 is used: "
        "it conflicts with the platform's flwr==1.41.0; the resolver says: Because flwr==1.41.0"
    )


@pytest.mark.parametrize(
    ("line", "steps"),
    [
        ("scipy==1.11.4", ["scipy>=1.11.4", "scipy", None]),
        ("tqdm==4.65.*", ["tqdm>=4.65", "tqdm", None]),
        ("foo~=1.2; python_version >= '3'", ['foo>=1.2; python_version >= "3"', 'foo; python_version >= "3"', None]),
        ("foo<2,>=1", ["foo>=1", "foo", None]),
        ("foo>=1", ["foo", None]),
        ("foo[x]==1.0+local", ["foo[x]>=1.0", "foo[x]", None]),
        ("foo @ https://example.org/foo-1.0.tar.gz", ["foo", None]),
    ],
)
def test_relaxing_keeps_the_floor_first_then_any_version(line: str, steps: list[str | None]) -> None:
    current: str | None = line
    for expected in steps:
        assert current is not None
        current = _relax(current)
        assert current == expected


def test_a_conflict_among_the_users_own_pins_fails_with_the_whole_reason(tmp_path: Path) -> None:
    deps = deps_of(tmp_path, "foo==1.0\nbar==2.0\n")
    message = (
        "No solution found when resolving dependencies: Because foo==1.0 depends on bar<2 and you require "
        "bar==2.0, we can conclude that you require foo==1.0 and bar==2.0 are incompatible. " + "x" * 400
    )
    with pytest.raises(DependencyError) as caught:
        fit_by_resolution(deps, PINS, Scripted({"foo==1.0": message}), log=lambda _: None)
    text = str(caught.value)
    assert "bar==2.0, foo==1.0 cannot be installed, and not because of the platform" in text
    assert text.endswith(message)  # whole, not cut


def test_a_conflict_that_blames_no_user_pin_fails_naming_the_resolvers_reason(tmp_path: Path) -> None:
    deps = deps_of(tmp_path, "tabulate==0.9.0\n")
    message = "Because flwr==1.41.0 depends on grpcio>=9 and there is no version of grpcio>=9, ..."
    with pytest.raises(DependencyError, match=r"no pin of requirements.txt can be relaxed.*grpcio>=9, \.\.\.$"):
        fit_by_resolution(deps, PINS, Scripted({"tabulate==0.9.0": message}), log=lambda _: None)


def test_relaxation_is_bounded(tmp_path: Path) -> None:
    deps = deps_of(tmp_path, "".join(f"pkg{index}==1.0\n" for index in range(12)))

    def always(requirements: list[str]) -> Resolution:  # blames one pin a round, for ever
        pinned = next(line for line in requirements if line.startswith("pkg") and "=" in line)
        return Resolution(versions=None, message=f"Because flwr==1.41.0 conflicts with {pinned}", conflict=True)

    with pytest.raises(DependencyError, match="still conflict with the platform's after 10 rounds"):
        fit_by_resolution(deps, PINS, always, log=lambda _: None)


def test_a_resolver_that_cannot_run_keeps_the_pins_and_says_so(tmp_path: Path) -> None:
    deps = deps_of(tmp_path, "tqdm==4.65.0\n")

    def offline(requirements: list[str]) -> Resolution:
        return Resolution(versions=None, message="Failed to fetch: https://pypi.org/simple/tqdm/", conflict=False)

    fitted = fit_by_resolution(deps, PINS, offline, log=lambda _: None)
    assert fitted.requirements == deps.requirements
    assert fitted.warnings[-1] == (
        "dependencies were not resolved before installing, pins are kept as written (the install decides): "
        "Failed to fetch: https://pypi.org/simple/tqdm/"
    )


def test_requirements_without_pins_are_not_resolved(tmp_path: Path) -> None:
    deps = deps_of(tmp_path, "numpy\nscikit-learn\ntabulate\n")
    resolver = Scripted({})
    assert fit_by_resolution(deps, PINS, resolver) is deps
    assert resolver.calls == []


def test_resolutions_are_cached_but_a_resolver_that_could_not_run_is_asked_again(tmp_path: Path) -> None:
    answers = [Resolution(versions=None, message="offline"), Resolution(versions={"a": "1"})]
    calls: list[list[str]] = []

    def resolve(requirements: list[str]) -> Resolution:
        calls.append(requirements)
        return answers[min(len(calls), len(answers)) - 1]

    run = cached(resolve, tmp_path / "resolutions", "uv|python|index")
    assert not run(["a==1"]).ok
    assert run(["a==1"]).versions == {"a": "1"}
    assert run(["a==1"]).versions == {"a": "1"}
    assert len(calls) == 2
    assert cached(resolve, tmp_path / "resolutions", "pip|python|index")(["a==1"]).ok
    assert len(calls) == 3  # another identity is another answer


def test_torchvision_follows_the_platforms_torch(tmp_path: Path) -> None:
    assert torchvision_for("2.13.0+cpu") == "0.28"
    assert torchvision_for("2.0.1") == "0.15"
    deps = deps_of(tmp_path, "torchvision==0.16.0\n")
    assert deps.requirements == ["numpy>=2", "torch==2.13.0+cpu", "torchvision==0.28.*"]
    assert deps.warnings == [
        "requirements.txt line 1: torchvision==0.16.0 relaxed to torchvision==0.28.*, the release built for the "
        "platform's torch 2.13.0+cpu",
        "torchvision needs torch: the platform's torch==2.13.0+cpu is installed with it",
    ]
    # The index's torchvision is a CUDA build: the build stops before installing, naming the fix.
    cuda = Scripted({}, versions={"torch": "2.13.0+cpu", "torchvision": "0.28.0"})
    with pytest.raises(DependencyError) as caught:
        fit_by_resolution(deps, PINS, cuda, log=lambda _: None)
    assert str(caught.value).startswith(
        "torchvision 0.28.0 from the package index is a CUDA build, and the platform's torch is the CPU build "
        "2.13.0+cpu: the two do not import together (operator torchvision::nms does not exist). Fix: provide a "
        "CPU build of torchvision 0.28 (torchvision-0.28.*+cpu"
    )
    assert "find-links" in str(caught.value) and "remove torchvision from requirements.txt" in str(caught.value)
    # A CPU build where the index settings offer one: fine.
    cpu = Scripted({}, versions={"torch": "2.13.0+cpu", "torchvision": "0.28.0+cpu"})
    assert fit_by_resolution(deps, PINS, cpu, log=lambda _: None).versions["torchvision"] == "0.28.0+cpu"


def test_resolver_messages_are_cleaned_whole() -> None:
    assert resolver_message(UV_TQDM.splitlines()) == (
        "No solution found when resolving dependencies: Because datasets>=3.0.0 depends on tqdm>=4.66.3 and you "
        "require datasets>=3.0, we can conclude that you require tqdm>=4.66.3. And because you require "
        "tqdm==4.65.0, we can conclude that your requirements are unsatisfiable."
    )
    assert resolver_message(PIP_TQDM.splitlines()) == (
        "Cannot install datasets>=3.0 and tqdm==4.65.0 because these package versions have conflicting "
        "dependencies. The conflict is caused by: The user requested tqdm==4.65.0; datasets 3.0.0 to 5.2.0 "
        "(3 versions) depend on tqdm>=4.66.3;"
    )
    header = "ERROR: Cannot install datasets==3.0.0, datasets==3.0.1, datasets==5.2.0 and tqdm==4.65.0 because ..."
    assert resolver_message([header]) == (
        "Cannot install datasets==3.0.0 to datasets==5.2.0 (3 versions) and tqdm==4.65.0 because ..."
    )


def test_a_failed_command_reports_its_whole_error(tmp_path: Path) -> None:
    script = "import sys\nprint('working')\nprint('error: ' + 'x' * 600)\nprint('hint: more')\nsys.exit(3)\n"
    with pytest.raises(BuildEnvironmentError) as caught:
        run_logged([sys.executable, "-c", script], lambda _: None, "installing packages")
    assert str(caught.value) == f"installing packages failed (exit 3): error: {'x' * 600} hint: more"


# --- uv and pip against an index of generated wheels (offline) ------------------------------


def wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    module = name.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {line}\n" for line in requires
    )
    with zipfile.ZipFile(folder / f"{module}-{version}-py3-none-any.whl", "w") as archive:
        archive.writestr(f"{module}/__init__.py", "")
        archive.writestr(f"{info}/METADATA", metadata)
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")


@pytest.fixture(scope="module")
def wheel_index(module_tmp: Callable[[str], Path]) -> Path:
    """platform-core needs shared-dep>=2; user-lib 1.0 needs shared-dep<2, user-lib 2.0 does not; other is free."""
    folder = module_tmp("wheels")
    wheel(folder, "platform-core", "1.0", ("shared-dep>=2",))
    for version in ("1.0", "2.0", "3.0"):
        wheel(folder, "shared-dep", version)
    wheel(folder, "user-lib", "1.0", ("shared-dep<2",))
    wheel(folder, "user-lib", "2.0", ("shared-dep>=2",))
    wheel(folder, "other", "1.0")
    wheel(folder, "other", "2.0")
    # A real index is readable by everyone; pytest makes its folders 0700, and resolving runs sandboxed as another uid.
    folder.chmod(0o755)
    return folder


TOY_PINS = PlatformPins(python_version="3.11.7", specs={"platform-core": "platform-core==1.0"})


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_uv_and_pip_blame_the_same_pins_directly_and_transitively(
    installer: str, wheel_index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if installer == "uv" and builder_uv() is None:
        pytest.skip("no uv next to this interpreter")
    # pip reads its own configuration: only the generated wheels.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheel_index))
    index = IndexSettings(find_links=(str(wheel_index),), no_index=True)
    resolver = Installer(uv=builder_uv() if installer == "uv" else None, index=index)
    deps = deps_of(tmp_path, "shared-dep==1.0\nuser-lib==1.0\nother==1.0\n", TOY_PINS)
    fitted = fit_by_resolution(deps, TOY_PINS, resolver.resolve, log=lambda _: None)
    assert fitted.requirements == ["other==1.0", "shared-dep>=1.0", "user-lib>=1.0"]
    assert fitted.versions == {"platform-core": "1.0", "shared-dep": "3.0", "user-lib": "2.0", "other": "1.0"}
    relaxed = {line.split(":")[1].split()[0]: line for line in fitted.warnings}
    assert set(relaxed) == {"shared-dep==1.0", "user-lib==1.0"}
    for line in relaxed.values():
        assert "it conflicts with the platform's platform-core==1.0; the resolver says: " in line


# --- uv against the configured index: FLOps's own pins ---------------------------------------


@pytest.fixture(scope="module")
def configured_uv() -> Installer:
    if builder_uv() is None:
        pytest.skip("no uv next to this interpreter")
    return Installer(uv=builder_uv(), index=IndexSettings.from_pip(os.environ))


def test_flops_pins_are_relaxed_by_resolution_against_the_index(tmp_path: Path, configured_uv: Installer) -> None:
    (tmp_path / "conda.yaml").write_text(FLOPS_PINS)
    pins = PlatformPins.current()
    fitted = fit_by_resolution(read_dependencies(tmp_path, pins), pins, configured_uv.resolve, log=lambda _: None)
    assert fitted.requirements == [
        "cffi>=1.16.0",
        "numpy>=2",
        "protobuf>=3.20.3",
        "scikit-learn",
        "scipy>=1.11.4",
        "tabulate==0.9.0",
        "tqdm>=4.65.0",
    ]
    text = "\n".join(fitted.warnings)
    for pin, conflict in [
        ("protobuf==3.20.3 relaxed to protobuf>=3.20.3", "flwr=="),
        ("cffi==1.16.0 relaxed to cffi>=1.16.0", "flwr=="),
        ("tqdm==4.65.0 relaxed to tqdm>=4.65.0", "datasets>="),
        ("scipy==1.11.4 relaxed to scipy>=1.11.4", "numpy>=2"),
    ]:
        line = next(line for line in fitted.warnings if pin in line)
        assert f"it conflicts with the platform's {conflict}" in line, line
    assert "numpy==1.26.4 relaxed to the platform's numpy>=2" in text
    assert "scikit-learn==1.4.2 relaxed to the platform's scikit-learn" in text
    assert "mlflow==2.12.2 dropped" in text and "python=3.10 ignored" in text
    assert "tabulate" not in text
    assert int(fitted.versions["numpy"].split(".")[0]) >= 2


def test_tensorflow_2_12_is_relaxed_by_resolution(tmp_path: Path, configured_uv: Installer) -> None:
    """TensorFlow 2.12 needs protobuf<5 and NumPy<1.24: relaxed, resolved only (never installed here)."""
    (tmp_path / "requirements.txt").write_text("tensorflow==2.12.0\nnumpy==1.23.5\n")
    pins = PlatformPins.current()
    fitted = fit_by_resolution(read_dependencies(tmp_path, pins), pins, configured_uv.resolve, log=lambda _: None)
    assert fitted.requirements == ["numpy>=2", "tensorflow>=2.12.0"]
    line = fitted.warnings[-1]
    assert line.startswith("requirements.txt line 1: tensorflow==2.12.0 relaxed to tensorflow>=2.12.0, tensorflow ")
    assert "it conflicts with the platform's" in line and "tensorflow==2.12.0 depends on" in line


# --- the environment check: torch and torchvision must import together --------------------


def test_the_environment_check_catches_a_cuda_torchvision_beside_a_cpu_torch(tmp_path: Path) -> None:
    """The index's torchvision beside the platform's CPU torch: the check names the mismatch and the fix."""
    uv = builder_uv()
    if uv is None:
        pytest.skip("no uv next to this interpreter")
    import sysconfig

    import torch

    if not torch.__version__.endswith("+cpu"):
        pytest.skip("the platform's torch is not a CPU build here")
    series = torchvision_for(torch.__version__)
    env = tmp_path / "env"
    subprocess.run([str(uv), "venv", "-q", "--python", sys.executable, str(env)], check=True)
    python = env / "bin" / "python"
    # The platform's own torch (and NumPy) through a path entry, and the index's torchvision on top of it.
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "platform.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    index = IndexSettings.from_pip(os.environ).uv_args()
    done = subprocess.run(
        [str(uv), "pip", "install", "-q", "--no-deps", "--python", str(python), *index, f"torchvision=={series}.*"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    versions, problems = check_environment("learner", python, "requirements.txt")
    assert versions["torch"] == torch.__version__ and versions["torchvision"].startswith(series)
    vision = next(problem for problem in problems if "torchvision" in problem)
    if "+cpu" in versions["torchvision"]:
        pytest.fail(f"a CPU torchvision was found, the check must pass: {vision}")
    assert vision.startswith(f"torchvision {versions['torchvision']} does not work with torch {torch.__version__}")
    assert "torchvision::nms does not exist" in vision
    assert f"Fix: provide a CPU build of torchvision {series}" in vision
    # The platform is not installed there (its checkout is not looked at): named too.
    assert any(problem.startswith("import flops (the platform) fails: ModuleNotFoundError") for problem in problems)


# --- one real learner environment from a FLOps repository's conda.yaml ---------------------

# FLOPS_PINS without the pin nothing blames: the environment installs only what is relaxed or kept.
FLOPS_CONDA_YAML = FLOPS_PINS.replace("      - tabulate==0.9.0\n", "")


@pytest.mark.slow
def test_a_flops_conda_yaml_builds_a_learner_environment_that_imports_the_data_stack(tmp_path: Path) -> None:
    import time

    from image_builder.environments import ensure_environment, prepare_platform
    from image_builder.source import fetch_source
    from image_builder.stages import Stages
    from tests.test_image_builder import MODEL_MANAGER, git_repo

    repo = git_repo(tmp_path / "repo", files={"conda.yaml": FLOPS_CONDA_YAML, "model_manager.py": MODEL_MANAGER})
    cache = tmp_path / "cache"
    installer = Installer.detect(IndexSettings.from_pip(os.environ))
    started = time.monotonic()
    source = fetch_source(str(repo), None, cache, tmp_path / "copy", 2**20, Stages(), resolver=installer)
    resolved_s = time.monotonic() - started
    deps = source.dependencies
    relaxed = {line.split(": ")[1].split(" relaxed")[0] for line in deps.warnings if " relaxed to " in line}
    assert relaxed == {
        "numpy==1.26.4",
        "scikit-learn==1.4.2",
        "scipy==1.11.4",
        "tqdm==4.65.0",
        "protobuf==3.20.3",
        "cffi==1.16.0",
    }
    assert deps.requirements == [
        "cffi>=1.16.0",
        "numpy>=2",
        "protobuf>=3.20.3",
        "scikit-learn",
        "scipy>=1.11.4",
        "tqdm>=4.65.0",
    ]
    env = ensure_environment(prepare_platform(cache), "learner", deps.requirements, cache, installer, log=print)
    built_s = time.monotonic() - started
    print(f"dependencies resolved in {resolved_s:.1f} s, learner environment built in {built_s:.1f} s")
    probe = (
        "import json, numpy, pyarrow, datasets, scipy, sklearn, tqdm, cffi, google.protobuf as pb\n"
        "modules = (numpy, pyarrow, datasets, scipy, sklearn, tqdm, cffi, pb)\n"
        "print(json.dumps({m.__name__: m.__version__ for m in modules}))"
    )
    done = subprocess.run([str(env.python), "-I", "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    versions = {name: tuple(int(part) for part in value.split(".")[:2]) for name, value in _json(done.stdout).items()}
    assert versions["numpy"] >= (2, 0) and versions["scipy"] > (1, 11)
    assert versions["tqdm"] >= (4, 66) and versions["google.protobuf"] >= (5, 28) and versions["cffi"] >= (2, 0)


def _json(text: str) -> dict[str, str]:
    import json

    return dict(json.loads(text.strip().splitlines()[-1]))
