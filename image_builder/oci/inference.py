"""Inference-server images from a registered MLflow model; `python -m image_builder.inference`.

    python -m image_builder.inference --tracking-uri http://127.0.0.1:7027 \\
        --model-uri models:/digits/3 --registry HOST:PORT --customer acme --project digits \\
        [--result-file PATH] [--force] [every OCI option of the image builder]

`build_inference_image` builds and pushes `<registry>/<customer>/<project>/inference:<model
version>` (skipped when the registry has it, unless --force): MLflow (skinny) and the
model's requirements in a cached layer, the model's artefacts in the last one, served with
MLflow's scoring protocol on port 8080 (`GET /ping`, `POST /invocations`). The command
prints the reference and writes `{"image": REF}` (or `{"error": MESSAGE}`) to --result-file.
"""

import argparse
import contextlib
import importlib.metadata
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from flops.build import InferenceBuildOutcome
from image_builder import containerfiles
from image_builder.environments import Log
from image_builder.files import remove_tree, write_json_atomic
from image_builder.oci.constraints import constraints_for, requirement_names
from image_builder.oci.context import OCI_FORMAT, add_slimming, file_lines, normalise_modes
from image_builder.oci.engines import BuildStep, engine_mounts, make_engine
from image_builder.oci.mounts import host_strip, installer_uv
from image_builder.oci.options import OciOptions, add_oci_arguments, arch_of, image_component, options_from_args
from image_builder.oci.registry import registry_has
from image_builder.settings import BuilderSettings
from image_builder.stages import describe_error

_MLFLOW_PACKAGES = frozenset({"mlflow", "mlflow-skinny", "mlflow-tracing"})


def resolve_model_version(tracking_uri: str, model_uri: str) -> tuple[str, str]:
    """(name, version) of `models:/NAME/VERSION` or `models:/NAME@ALIAS`."""
    from mlflow.tracking import MlflowClient

    match = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@([\w-]+))", model_uri)
    if not match:
        raise ValueError(f"expected models:/NAME/VERSION or models:/NAME@ALIAS, not {model_uri!r}")
    name, version, alias = match.groups()
    if alias:
        version = MlflowClient(tracking_uri).get_model_version_by_alias(name, alias).version
    return name, str(version)


@contextlib.contextmanager
def _mlflow_uris(uri: str) -> Iterator[None]:
    """MLflow's tracking and registry URIs set to `uri` for the block (models:/ URIs need both)."""
    import mlflow

    previous = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


def inference_requirements(model_dir: Path) -> list[str]:
    """The model's own requirements with MLflow replaced by the serving-only mlflow-skinny."""
    mlflow_version = importlib.metadata.version("mlflow")
    requirements = [f"mlflow-skinny=={mlflow_version}", "pandas"]
    path = model_dir / "requirements.txt"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    for line in lines:
        text = line.split("#", 1)[0].strip()
        if not text or text.startswith("-"):
            continue
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if str(canonicalize_name(req.name)) in _MLFLOW_PACKAGES:
            mlflow_version = next((s.version for s in req.specifier if s.operator == "=="), mlflow_version)
            requirements[0] = f"mlflow-skinny=={mlflow_version}"
            continue
        requirements.append(text)
    # What the flavour loads with but MLflow does not always list (skops-serialised sklearn).
    names = requirement_names(requirements)
    for package in _flavor_packages(model_dir / "MLmodel"):
        if package not in names:
            requirements.append(package)
    return requirements


def _flavor_packages(mlmodel: Path) -> list[str]:
    import yaml

    try:
        flavors = (yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}).get("flavors", {})
    except (OSError, yaml.YAMLError):
        return []
    packages = []
    for flavor in flavors.values():
        if isinstance(flavor, dict) and flavor.get("serialization_format") in ("skops", "cloudpickle"):
            packages.append(str(flavor["serialization_format"]))
    return packages


def build_inference_image(
    tracking_uri: str,
    model_uri: str,
    registry: str,
    customer: str,
    project: str,
    options: OciOptions | None = None,
    cache_dir: Path | None = None,
    log: Log = print,
    force: bool = False,
) -> str:
    """Build and push `<registry>/<customer>/<project>/inference:<model version>`; its reference.

    The model's artefacts are downloaded from the tracking server into the build context and
    copied into the last layer; MLflow (skinny) and the model's requirements sit in a cached
    layer below, shared by every model with the same requirements.
    """
    import mlflow.artifacts

    options = replace(options, registry=registry) if options else OciOptions(registry=registry)
    name, version = resolve_model_version(tracking_uri, model_uri)
    ref = f"{registry}/{image_component(customer)}/{image_component(project)}/inference:{version}"
    if not force and registry_has(ref, options.tls_verify, options.registry_auth_file):
        log(f"the registry has {ref}: build skipped")
        return ref
    engine = make_engine(options, log)
    work = (cache_dir or Path(tempfile.gettempdir())) / "oci-work"
    work.mkdir(parents=True, exist_ok=True)
    context = Path(tempfile.mkdtemp(dir=work, prefix="inference-"))
    try:
        log(f"downloading models:/{name}/{version} from {tracking_uri}")
        with _mlflow_uris(tracking_uri):
            downloaded = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{name}/{version}", dst_path=str(context / "download")
                )
            )
        os.rename(downloaded, context / "model")
        remove_tree(context / "download")
        requirements = inference_requirements(context / "model")
        pins = constraints_for(options, requirements, requirements[2:])
        folder = context / "requirements"
        folder.mkdir()
        (folder / "requirements-inference.txt").write_text(file_lines(requirements))
        (folder / "constraints.txt").write_text(file_lines(pins))
        add_slimming(folder, requirements[2:])
        normalise_modes(context)
        manifest = f"localhost/flops-build/{image_component(customer)}/{image_component(project)}/inference:{version}"
        engine.remove_manifest(manifest)
        for platform_name in options.platforms:
            containerfile = context / f"Containerfile.{arch_of(platform_name)}"
            containerfile.write_text(
                containerfiles.render_inference(
                    options.base_for(platform_name),
                    options.build_packages_text,
                    OCI_FORMAT,
                    with_pip=installer_uv(options, platform_name) is None,
                    strip=host_strip(platform_name) is not None,
                ),
                encoding="utf-8",
            )
            with engine_mounts(engine, options, platform_name) as volumes:
                engine.build(BuildStep(context, containerfile, "inference", platform_name, manifest, volumes))
        engine.push(manifest, ref)
        engine.remove_manifest(manifest)
        log(f"pushed {ref}")
    finally:
        remove_tree(context)
    return ref


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m image_builder.inference", description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--model-uri", required=True, help="models:/NAME/VERSION or models:/NAME@ALIAS")
    parser.add_argument("--project", required=True, help="third part of the image name")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--result-file", type=Path, default=None)
    parser.add_argument("--force", action="store_true", help="build even when the registry has the tag")
    add_oci_arguments(parser)
    args = parser.parse_args(argv)
    settings = BuilderSettings.from_env()
    try:
        options = options_from_args(args, settings)
        ref = build_inference_image(
            args.tracking_uri, args.model_uri, options.registry, args.customer, args.project, options,
            cache_dir=args.cache_dir, force=args.force,
        )  # fmt: skip
    except Exception as error:  # one paragraph for the manager, whatever failed (MLflow, buildah, registry)
        message = describe_error(error)
        print(f"inference image: {message}", file=sys.stderr)
        if args.result_file:
            write_json_atomic(args.result_file, InferenceBuildOutcome(error=message).model_dump(exclude_none=True))
        return 1
    if args.result_file:
        write_json_atomic(args.result_file, InferenceBuildOutcome(image=ref).model_dump(exclude_none=True))
    print(ref)
    return 0
