"""Containerfile templates of the OCI target (rendered by `image_builder.oci.fl_images` and `.inference`).

Layer order is what makes rebuilds fast: the base image, then the dependencies in a layer of
their own (keyed by the requirement files' contents), then the platform wheel, then the
image's configuration, and the ML repository's code last, so that a commit that only
changes code adds one small layer on top of cached ones.

Build-time settings (package index, extra CA bundle, find-links folders, the builder's uv)
reach the RUN steps through read-only volumes under BUILD_MOUNT holding a generated pip.conf:
they are never written into a layer, and changing them does not invalidate the cache.
Commands come from the orchestrator (no per-role CMD): every instruction is a layer commit,
which costs seconds with the vfs storage driver. No compiler is ever left behind: optional
build packages are installed and purged within the same RUN step, and nothing keeps a cache.

Every install step ends with `slim.py` (see `image_builder.slim`) in the same RUN: it prunes
what no actor runs and compiles bytecode only for what the actors import, into PYCACHE,
which the image's user owns, so any other module is compiled once per container.
"""

from flops.build import IMAGE_APP_DIR, IMAGE_MODEL_DIR, IMAGE_VENV_DIR

VENV = IMAGE_VENV_DIR
APP_DIR = IMAGE_APP_DIR
MODEL_DIR = IMAGE_MODEL_DIR
BUILD_MOUNT = "/run/flops-build"
SHARE = "/usr/local/share/flops"
SLIM = f"{SHARE}/slim.py"
PYCACHE = "/home/flops/.cache/pycache"
USER_ID = 10001
INFERENCE_PORT = 8080

# What each image's processes import at start, compiled at build time (see image_builder.slim):
# data handling in the shared layer, then each role's Flower processes and FLOps modules.
SHARED_MODULES = ("numpy", "pandas", "pyarrow.parquet", "datasets", "pydantic", "paho.mqtt.client", "yaml")
LEARNER_MODULES = (
    "flwr.supernode.cli", "flwr.supercore.cli", "flwr.clientapp",
    "learner.main", "learner.client_app", "flops.data.node_data", "flops.data.node_dataset", "flops_utils",
)  # fmt: skip
TRACKING_MODULES = ("mlflow", "mlflow.tracking", "mlflow.models", "mlflow.sklearn", "mlflow.pyfunc")
AGGREGATOR_MODULES = (
    "flwr.superlink.cli", "flwr.supercore.cli", "flwr.serverapp",
    "aggregator.main", "aggregator.server_app", "aggregator.tracking",
    # a cluster aggregator (hierarchical FL) is also a SuperNode of the root, with its own ClientApp
    "flwr.supernode.cli", "learner.main", "learner.warm_clientapp", "aggregator.cluster_client",
)  # fmt: skip
INFERENCE_MODULES = ("mlflow.pyfunc", "mlflow.pyfunc.scoring_server", "mlflow.models")

# The non-root user, written directly: minimal bases (debootstrap minbase) may lack useradd.
_USER = (
    f"printf 'flops:x:{USER_ID}:{USER_ID}:FLOps:/home/flops:/usr/sbin/nologin\\n' >> /etc/passwd"
    f" && printf 'flops:x:{USER_ID}:\\n' >> /etc/group"
    f" && mkdir -p /home/flops && chown {USER_ID}:{USER_ID} /home/flops && chmod 0750 /home/flops"
)

_ENV = f"""\
ENV PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    VIRTUAL_ENV={VENV} \\
    LANG=C.UTF-8 \\
    PYTHONUNBUFFERED=1 \\
    PYTHONPYCACHEPREFIX={PYCACHE} \\
    PIP_DISABLE_PIP_VERSION_CHECK=1 \\
    PIP_NO_CACHE_DIR=1 \\
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \\
    FLWR_TELEMETRY_ENABLED=0 \\
    FLWR_DISABLE_UPDATE_CHECK=1 \\
    HOME=/home/flops"""


def pip_install(arguments: str, build_packages: str = "") -> str:
    """A shell command installing into the venv, build settings from BUILD_MOUNT.

    The builder's own uv runs when it is mounted (native platforms: a fast resolver and
    parallel downloads), else the venv's pip; both get the same index settings, constraints
    and requirements, neither keeps a cache nor compiles bytecode (slim.py compiles what is
    used). `build_packages` (Debian package names) are installed first and purged afterwards
    in the same command, so compilers never reach a layer.
    """
    install = (
        f"if [ -x {BUILD_MOUNT}/uv ]; then set -a && . {BUILD_MOUNT}/uv.env && set +a"
        f" && {BUILD_MOUNT}/uv pip install --no-cache --python {VENV}/bin/python"
        f" $(cat {BUILD_MOUNT}/uv-args) {arguments};"
        f" else PIP_CONFIG_FILE={BUILD_MOUNT}/pip.conf {VENV}/bin/pip install --no-cache-dir --no-compile"
        f" --prefer-binary --no-warn-script-location {arguments}; fi"
    )
    if not build_packages:
        return install
    return (
        "apt-get update && apt-get install -y --no-install-recommends "
        f"{build_packages} && {install} && apt-get purge -y --auto-remove {build_packages}"
        " && rm -rf /var/lib/apt/lists/*"
    )


def slim(modules: tuple[str, ...], compile_dists_from: str = "", first_layer: bool = False, strip: bool = False) -> str:
    """The slim.py call closing an install step (see image_builder.slim)."""
    args = [f"--venv {VENV}", f"--owner {USER_ID}", *(f"--import {module}" for module in modules)]
    if compile_dists_from:
        args.append(f"--compile-dists-from {SHARE}/{compile_dists_from}")
    if first_layer:
        args.append("--dedupe")
    if strip:
        args.append(f"--strip-bundle {BUILD_MOUNT}/strip")
    return f"{VENV}/bin/python {SLIM} {' '.join(args)}"


def deps_step(
    requirements: str, modules: tuple[str, ...], build_packages: str = "", with_pip: bool = True, strip: bool = False
) -> str:
    """The venv, the user and the dependencies: one RUN, one cached layer.

    Where the builder's uv installs (native platforms) the venv has no pip: nothing uses it.
    """
    install = pip_install(f"-c {SHARE}/constraints.txt -r {SHARE}/{requirements}", build_packages)
    return (
        f"RUN python3 -m venv {'' if with_pip else '--without-pip '}{VENV} \\\n"
        f" && {_USER} \\\n"
        f" && {install} \\\n"
        f" && {slim(modules, compile_dists_from='requirements-user.txt', first_layer=True, strip=strip)} \\\n"
        " && rm -rf /root/.cache /tmp/* \\\n"
        f" && {VENV}/bin/python -c 'import sys; print(sys.version)'"
    )


FL_ACTORS = """\
# FLOps FL-actor images (learner, aggregator), rendered by image_builder.oci, format {format}.
FROM {base_image} AS deps
{env}
WORKDIR {app}
COPY requirements/ {share}/
{deps_step}

# Learner: the platform without MLflow.
FROM deps AS learner
COPY wheel/ /tmp/flops-wheel/
RUN {install_wheel} \\
 && {slim_learner} \\
 && rm -rf /tmp/flops-wheel /root/.cache \\
 && if {venv}/bin/python -c 'import mlflow' 2>/dev/null; then echo 'no MLflow in learners' >&2; exit 1; fi
USER {uid}:{uid}
COPY repo/ {app}/

# Aggregator: the platform with the tracking extra (MLflow), its dependencies in a cached layer.
FROM deps AS aggregator-deps
RUN {install_tracking} \\
 && {slim_tracking} \\
 && rm -rf /root/.cache /tmp/*

FROM aggregator-deps AS aggregator
COPY wheel/ /tmp/flops-wheel/
RUN {install_wheel_tracking} \\
 && {slim_aggregator} \\
 && rm -rf /tmp/flops-wheel /root/.cache \\
 && {venv}/bin/python -c 'import mlflow, aggregator'
USER {uid}:{uid}
COPY repo/ {app}/
"""

INFERENCE = """\
# FLOps inference server for a registered MLflow model, rendered by image_builder.oci, format {format}.
# Serves MLflow's scoring protocol: GET /ping, POST /invocations on port {port}.
FROM {base_image} AS inference-deps
{env}
WORKDIR /home/flops
COPY requirements/ {share}/
{deps_step}

FROM inference-deps AS inference
USER {uid}:{uid}
EXPOSE {port}
CMD ["mlflow", "models", "serve", "-m", "{model}", "-h", "0.0.0.0", "-p", "{port}", "--env-manager", "local"]
COPY model/ {model}/
"""


def render_fl_actors(
    base_image: str,
    wheel_name: str,
    build_packages: str,
    format_version: int,
    with_pip: bool = True,
    strip: bool = False,
) -> str:
    wheel = f"/tmp/flops-wheel/{wheel_name}"
    return FL_ACTORS.format(
        format=format_version,
        base_image=base_image,
        env=_ENV,
        share=SHARE,
        deps_step=deps_step("requirements-base.txt", SHARED_MODULES, build_packages, with_pip, strip),
        install_wheel=pip_install(f"-c {SHARE}/constraints.txt {wheel}"),
        slim_learner=slim(LEARNER_MODULES),
        install_tracking=pip_install(
            f"-c {SHARE}/constraints.txt -r {SHARE}/requirements-tracking.txt", build_packages
        ),
        slim_tracking=slim(TRACKING_MODULES, strip=strip),
        install_wheel_tracking=pip_install(f"-c {SHARE}/constraints.txt 'flops[tracking] @ file://{wheel}'"),
        slim_aggregator=slim(AGGREGATOR_MODULES),
        venv=VENV,
        app=APP_DIR,
        uid=USER_ID,
    )


def render_inference(
    base_image: str, build_packages: str, format_version: int, with_pip: bool = True, strip: bool = False
) -> str:
    return INFERENCE.format(
        format=format_version,
        base_image=base_image,
        env=_ENV,
        share=SHARE,
        deps_step=deps_step("requirements-inference.txt", INFERENCE_MODULES, build_packages, with_pip, strip),
        uid=USER_ID,
        port=INFERENCE_PORT,
        model=MODEL_DIR,
    )
