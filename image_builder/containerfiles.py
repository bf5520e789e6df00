"""Containerfile templates of the OCI target (rendered by `image_builder.oci`).

Layer order is what makes rebuilds fast: the base image, then the dependencies in a layer of
their own (keyed by the requirement files' contents), then the platform wheel, then the
image's configuration, and the ML repository's code last, so that a commit that only
changes code adds one small layer on top of cached ones.

Build-time settings (package index, extra CA bundle, find-links folders, the builder's uv)
reach the RUN steps through read-only volumes under BUILD_MOUNT holding a generated pip.conf:
they are never written into a layer, and changing them does not invalidate the cache.
Commands come from the orchestrator (no per-role CMD): every instruction is a layer commit,
which costs seconds with the vfs storage driver. No compiler is ever
left behind: optional build packages are installed and purged within the same RUN step, and
pip runs with --no-cache-dir.
"""

VENV = "/opt/flops"
APP_DIR = "/app"
MODEL_DIR = "/model"
BUILD_MOUNT = "/run/flops-build"
SHARE = "/usr/local/share/flops"
USER_ID = 10001
INFERENCE_PORT = 8080

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
    PYTHONDONTWRITEBYTECODE=1 \\
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
    and requirements, and neither keeps a cache. `build_packages` (Debian package names) are
    installed first and purged afterwards in the same command, so compilers never reach a layer.
    """
    install = (
        f"if [ -x {BUILD_MOUNT}/uv ]; then set -a && . {BUILD_MOUNT}/uv.env && set +a"
        f" && {BUILD_MOUNT}/uv pip install --no-cache --compile-bytecode --python {VENV}/bin/python"
        f" $(cat {BUILD_MOUNT}/uv-args) {arguments};"
        f" else PIP_CONFIG_FILE={BUILD_MOUNT}/pip.conf {VENV}/bin/pip install --no-cache-dir --prefer-binary"
        f" --no-warn-script-location {arguments}; fi"
    )
    if not build_packages:
        return install
    return (
        "apt-get update && apt-get install -y --no-install-recommends "
        f"{build_packages} && {install} && apt-get purge -y --auto-remove {build_packages}"
        " && rm -rf /var/lib/apt/lists/*"
    )


def deps_step(requirements: str, build_packages: str = "") -> str:
    """The venv, the user and the dependencies: one RUN, one cached layer."""
    install = pip_install(f"-c {SHARE}/constraints.txt -r {SHARE}/{requirements}", build_packages)
    return (
        f"RUN python3 -m venv {VENV} \\\n"
        f" && {_USER} \\\n"
        f" && {install} \\\n"
        " && rm -rf /root/.cache /tmp/* \\\n"
        f" && find {VENV}/lib -type d -name tests -path '*/site-packages/*' -prune -exec rm -rf {{}} + \\\n"
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
 && rm -rf /tmp/flops-wheel /root/.cache \\
 && if {venv}/bin/python -c 'import mlflow' 2>/dev/null; then echo 'no MLflow in learners' >&2; exit 1; fi
USER {uid}:{uid}
COPY repo/ {app}/

# Aggregator: the platform with the tracking extra (MLflow), its dependencies in a cached layer.
FROM deps AS aggregator-deps
RUN {install_tracking} \\
 && rm -rf /root/.cache /tmp/*

FROM aggregator-deps AS aggregator
COPY wheel/ /tmp/flops-wheel/
RUN {install_wheel_tracking} \\
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


def render_fl_actors(base_image: str, wheel_name: str, build_packages: str, format_version: int) -> str:
    wheel = f"/tmp/flops-wheel/{wheel_name}"
    return FL_ACTORS.format(
        format=format_version,
        base_image=base_image,
        env=_ENV,
        share=SHARE,
        deps_step=deps_step("requirements-base.txt", build_packages),
        install_wheel=pip_install(f"-c {SHARE}/constraints.txt {wheel}"),
        install_tracking=pip_install(
            f"-c {SHARE}/constraints.txt -r {SHARE}/requirements-tracking.txt", build_packages
        ),
        install_wheel_tracking=pip_install(f"-c {SHARE}/constraints.txt 'flops[tracking] @ file://{wheel}'"),
        venv=VENV,
        app=APP_DIR,
        uid=USER_ID,
    )


def render_inference(base_image: str, build_packages: str, format_version: int) -> str:
    return INFERENCE.format(
        format=format_version,
        base_image=base_image,
        env=_ENV,
        share=SHARE,
        deps_step=deps_step("requirements-inference.txt", build_packages),
        uid=USER_ID,
        port=INFERENCE_PORT,
        model=MODEL_DIR,
    )
