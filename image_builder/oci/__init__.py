"""OCI target of the image builder: learner, aggregator and inference-server images.

    flops-image-builder --target oci --registry HOST:PORT --project-id P --repo-url URL
        [--platforms linux/amd64,linux/arm64] [--base-image IMAGE] [--ca-bundle FILE]
        [--pip-index-url URL] [--pip-find-links DIR] [--tls-verify/--no-tls-verify]
        [--registry-auth-file FILE] [--engine buildah|docker]

Images are tagged `<registry>/<customer>/<repo>/{learner,aggregator}:<commit12>-<config12>`:
the commit of the ML repository and a digest of everything else that decides the images
(base image, platforms, requirements, constraints, platform source, template). A build
whose two tags the registry already has is skipped. Otherwise the builder renders a
Containerfile (see `image_builder.containerfiles`) into a private build context and builds
every platform into one manifest list with `buildah bud --isolation chroot --layers`
(unprivileged: no container runtime, no privileged container), then pushes it with
`buildah manifest push --all`. Non-native platforms (linux/arm64 on amd64) build under
QEMU user emulation (qemu-user-static with binfmt-support).

The base image is `python:3.11-slim` unless told otherwise; an air-gapped site makes its
own with debootstrap (`python -m image_builder.oci base-image`). A base
image name may contain `{arch}` (`localhost/flops/python:3.11-{arch}`) to use one local image
per architecture.

An inference-server image is made from a registered MLflow model:
`<registry>/<customer>/<project>/inference:<model version>`, serving MLflow's scoring
protocol (`/ping`, `/invocations`) on port 8080; `python -m image_builder.inference`.

Modules, one concept each:

    options      OciOptions and the `--target oci` arguments; image names
    constraints  which versions images install (`--pip-constraints`)
    mounts       build mounts: pip.conf, uv, strip bundle (never in a layer)
    context      build-context files (slim.py, requirement lists) and their modes
    engines      the Engine interface with buildah and Docker Engine side by side
    registry     does the registry hold a reference (skopeo, or Registry v2 with auth)
    fl_images    learner and aggregator images of one repository at one commit
    builder      OciBuilder, the `--target oci` target over the shared source stage
    inference    inference-server images (`python -m image_builder.inference`)
    base_image   debootstrap base images for air-gapped sites
    errors       OciBuildError

The package imports no module of its parent's entry point (`image_builder.main`).
"""

from image_builder.oci.errors import OciBuildError
from image_builder.oci.options import OciOptions, add_oci_arguments, options_from_args

__all__ = ["OciBuildError", "OciOptions", "add_oci_arguments", "options_from_args"]
