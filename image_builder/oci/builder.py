"""`--target oci`: the learner and aggregator images of a checked source, in a registry.

After the shared source stage (`image_builder.source`), one `images` stage builds or finds
the images (`image_builder.oci.fl_images`); its own steps are reported as `images.<step>`
stage durations. The result's `repo_dir` and interpreters are paths inside the images
(`flops.build.IMAGE_APP_DIR`, `IMAGE_PYTHON`), its `build_key` the image tag, and `oci`
says how the images were made.
"""

from flops.build import IMAGE_APP_DIR, IMAGE_PYTHON, BuildResult, OciBuildInfo
from image_builder.environments import Installer
from image_builder.files import tree_digest
from image_builder.oci.fl_images import build_fl_images
from image_builder.oci.options import OciOptions, repo_image_name
from image_builder.settings import BuilderSettings
from image_builder.source import BuildRequest, Source
from image_builder.stages import Stages, log_line


class OciBuilder:
    """Builds (or finds) the two FL-actor images of one source for one customer."""

    def __init__(
        self,
        request: BuildRequest,
        options: OciOptions,
        settings: BuilderSettings,
        customer: str,
        image_name: str | None,
        stages: Stages,
    ) -> None:
        self.request = request
        self.options = options
        self.settings = settings
        self.customer = customer
        self.image_name = image_name
        self.stages = stages

    def build(self, source: Source) -> BuildResult:
        commit = source.commit or "content-" + tree_digest(source.repo)[:12]
        with self.stages.timed("images"):
            build = build_fl_images(
                source.repo, commit, source.dependencies.requirements, self.options, self.customer,
                self.image_name or repo_image_name(source.url), self.request.cache,
                Installer.detect(self.settings.index, self.settings.force_pip), log=log_line,
            )  # fmt: skip
        self.stages.durations.update({f"images.{key}": value for key, value in build.durations.items()})
        return BuildResult(
            commit=source.commit,
            repo_dir=IMAGE_APP_DIR,
            learner_python=IMAGE_PYTHON,
            aggregator_python=IMAGE_PYTHON,
            images=build.images,
            build_key=build.tag,
            reused=build.reused,
            stage_durations=dict(self.stages.durations),
            oci=OciBuildInfo(
                tag=build.tag,
                config_digest=build.config_digest,
                platforms=list(self.options.platforms),
                base_image=self.options.base_image,
                engine=self.options.engine,
                cache=build.cache,
            ),
        )
