"""`flops-image-builder`: one build (or one check) of an ML repository, then exit.

    flops-image-builder --project-id P --repo-url URL [--ref REF] [--cache-dir DIR]
                        [--result-file PATH] [--max-repo-mb 200] [--check-only]
                        [--target local|oci --registry HOST:PORT ...]  (OCI: see image_builder.oci)

The shared source stage (`image_builder.source`: fetch, validate, dependencies) runs first,
then the target: `local` (`image_builder.local`: cached environments) or `oci`
(`image_builder.oci.builder`: images in a registry). `--check-only` stops after the source
stage, builds nothing and publishes no event; its result names the commit and the checkout
(`repo_dir`).

The result file (--result-file) is a `flops.build.BuildOutcome`: `{"result": BuildResult}`
or `{"failure": {"stage": ..., "error": ...}}`, the error the whole reason in one paragraph
(a resolver's included, uncut). `BuildResult.dependency_warnings` lists what the dependency
stage changed (relaxed pins and why), for a check-only run too.
Events go to MQTT when a broker is configured: builder/started, then builder/succeeded with
the BuildResult, or builder/failed with the stage (the envelope's `error` is the reason).
Exit status: 0 built, reused or checked; 1 failed.
"""

import argparse
import sys
import time
from pathlib import Path

from pydantic import BaseModel

from flops.build import BuildOutcome, BuildResult
from flops.config import flops_home
from flops.events import BuilderFailed, BuilderStarted, Component, EventName, make_event
from flops.mqtt import publish_once
from image_builder.environments import Installer
from image_builder.files import write_json_atomic
from image_builder.local import LocalBuilder
from image_builder.settings import BuilderSettings
from image_builder.source import BuildRequest, Target, private_source
from image_builder.stages import Stages, describe_error, progress


def publish(
    settings: BuilderSettings, project_id: str, event: EventName, payload: BaseModel, error: str | None = None
) -> None:
    """Publish a builder event when a broker is configured; a broker problem only warns."""
    try:
        publish_once(make_event(project_id, Component.BUILDER, event, payload, error=error), settings.mqtt)
    except Exception as failure:
        progress(f"warning: could not publish builder/{event}: {describe_error(failure)}")


def write_outcome(path: Path, outcome: BuildOutcome) -> None:
    """The result file: `{"result": ...}` or `{"failure": ...}`, whichever the outcome holds."""
    write_json_atomic(path, {key: value for key, value in outcome.model_dump(mode="json").items() if value is not None})


def parse_args(argv: list[str] | None, settings: BuilderSettings | None = None) -> argparse.Namespace:
    # The OCI target's modules load only when its options are asked for (a local build needs none).
    from image_builder.oci.options import add_oci_arguments, options_from_args

    parser = argparse.ArgumentParser(
        prog="flops-image-builder",
        description="Build (or reuse) the code snapshot and Python environments of an ML repository.",
    )
    parser.add_argument("--project-id", required=True, help="project the build belongs to (event topics)")
    parser.add_argument("--repo-url", required=True, help="git URL or local path of the ML repository")
    parser.add_argument("--ref", default=None, help="branch, tag or commit (default: the default branch)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="build cache (default: FLOPS_HOME/builds)")
    parser.add_argument("--result-file", type=Path, default=None, help="write the BuildOutcome JSON here")
    parser.add_argument("--max-repo-mb", type=float, default=200.0, help="largest repository accepted (MB)")
    parser.add_argument(
        "--check-only", action="store_true", help="fetch and check the repository, build nothing, publish nothing"
    )
    parser.add_argument(
        "--target", choices=["local", "oci"], default="local", help="local environments, or OCI images in a registry"
    )
    add_oci_arguments(parser)
    args = parser.parse_args(argv)
    if args.cache_dir is None:
        args.cache_dir = flops_home() / "builds"
    if args.max_repo_mb <= 0:
        parser.error("--max-repo-mb must be positive")
    if args.target == "oci":
        try:
            args.oci_options = options_from_args(args, settings)
        except ValueError as error:
            parser.error(str(error))
    return args


def make_target(args: argparse.Namespace, request: BuildRequest, settings: BuilderSettings, stages: Stages) -> Target:
    if args.target == "oci":
        from image_builder.oci.builder import OciBuilder

        return OciBuilder(request, args.oci_options, settings, args.customer, args.image_name, stages)
    return LocalBuilder(request, settings, stages)


def main(argv: list[str] | None = None) -> int:
    settings = BuilderSettings.from_env()
    args = parse_args(argv, settings)
    request = BuildRequest(
        project_id=args.project_id,
        repo_url=args.repo_url,
        ref=args.ref,
        cache=Path(args.cache_dir).expanduser().resolve(),
        max_repo_bytes=int(args.max_repo_mb * 2**20),
    )
    started = time.monotonic()
    verb = "checking" if args.check_only else "building"
    progress(f"project {args.project_id}: {verb} {args.repo_url}" + (f" at {args.ref}" if args.ref else ""))
    events = not args.check_only
    if events:
        publish(settings, args.project_id, EventName.STARTED, BuilderStarted(repo_url=args.repo_url, ref=args.ref))
    stages = Stages()
    # uv resolves whenever it is there (pip's resolver backtracks for minutes over the same
    # question), also where FLOPS_BUILDER_INSTALLER=pip has pip install.
    resolver = Installer.detect(settings.index)
    try:
        with private_source(request, stages, resolver) as source:
            if args.check_only:
                result = BuildResult(
                    commit=source.commit, repo_dir=str(source.checkout), stage_durations=dict(stages.durations)
                )
            else:
                result = make_target(args, request, settings, stages).build(source)
            result = result.model_copy(update={"dependency_warnings": list(source.dependencies.warnings)})
    except Exception as error:
        failed = stages.failed(error)
        progress(f"FAILED at {failed.stage}: {failed.message}")
        if args.result_file:
            write_outcome(args.result_file, BuildOutcome(failure=failed.failure()))
        if events:
            publish(
                settings,
                args.project_id,
                EventName.FAILED,
                BuilderFailed(stage=failed.stage, transient=failed.transient),
                error=failed.message,
            )
        return 1
    if args.result_file:
        write_outcome(args.result_file, BuildOutcome(result=result))
    elapsed = time.monotonic() - started
    if args.check_only:
        progress(f"checked {source.url}" + (f" at {result.commit}" if result.commit else "") + f" in {elapsed:.1f} s")
        return 0
    if result.images:
        made = ", ".join(f"{role} {ref}" for role, ref in result.images.items())
    else:
        made = f"learner {result.learner_python}, aggregator {result.aggregator_python}"
    progress(f"{'reused' if result.reused else 'built'} {result.build_key} in {elapsed:.1f} s: {made}")
    publish(settings, args.project_id, EventName.SUCCEEDED, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
