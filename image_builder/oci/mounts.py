"""Build mounts: what RUN steps read from read-only volumes and never write into a layer.

`build_settings` makes a folder mounted at `containerfiles.BUILD_MOUNT` holding a generated
pip.conf (index, extra CA bundle, find-links folders as seen inside the build), the same
settings as uv arguments, the builder's own uv (native platforms) and a `strip` bundle
(the host's strip with its loader and libraries), and removes it afterwards.
"""

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from image_builder import containerfiles
from image_builder.environments import builder_uv
from image_builder.files import remove_tree
from image_builder.oci.errors import OciBuildError
from image_builder.oci.options import OciOptions, arch_of


def host_arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def installer_uv(options: OciOptions, platform: str = "") -> Path | None:
    """The uv that RUN steps for `platform` install with (native platforms), or None: pip."""
    uv = builder_uv() if options.installer == "auto" else None
    return uv if uv is not None and (not platform or arch_of(platform) == host_arch()) else None


def host_strip(platform: str = "") -> Path | None:
    """This machine's `strip` (binutils), usable in RUN steps of native platforms, or None."""
    strip = shutil.which("strip")
    if strip is None or shutil.which("ldd") is None or (platform and arch_of(platform) != host_arch()):
        return None
    return Path(strip).resolve()


def strip_bundle(strip: Path, dest: Path) -> None:
    """`strip` with its shared libraries and loader, runnable in any root file system of this arch.

    Run as `dest/ld.so --library-path dest dest/strip`: the host's loader and libraries come
    along, so the base image's C library does not matter and nothing is installed in it.
    """
    dest.mkdir(parents=True)
    shutil.copy2(strip, dest / "strip")
    listed = subprocess.run(["ldd", str(strip)], capture_output=True, text=True, check=True).stdout
    for line in listed.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) > parts.index("=>") + 1 and parts[parts.index("=>") + 1].startswith("/"):
            library = Path(parts[parts.index("=>") + 1])
            shutil.copy2(library.resolve(), dest / library.name)
        elif parts and parts[0].startswith("/") and "ld-linux" in parts[0]:
            shutil.copy2(Path(parts[0]).resolve(), dest / "ld.so")
    if not (dest / "ld.so").is_file():
        raise OciBuildError(f"cannot find the dynamic loader of {strip} in `ldd` output")


@contextlib.contextmanager
def build_settings(options: OciOptions, platform: str = "") -> Iterator[list[tuple[str, str]]]:
    """Volumes (host, container) giving RUN steps the installer settings; removed afterwards.

    A generated pip.conf (and the same as uv arguments) names the index, the extra CA bundle
    and the find-links folders as they appear inside the build; for a native `platform` the
    builder's uv is mounted too. Nothing of it is written into a layer.
    """
    folder = Path(tempfile.mkdtemp(prefix="flops-build-settings-"))
    try:
        mount = containerfiles.BUILD_MOUNT
        lines = ["[global]"]
        volumes = [(str(folder), mount)]
        mounted: list[str] = []

        def index(url: str) -> str:
            """A file:// index is mounted (its parent too, for relative links to ../files)."""
            if not url.startswith("file://"):
                return url
            path = Path(url.removeprefix("file://"))
            if not path.is_dir():
                raise OciBuildError(f"package index {url} is not a folder here")
            inside = f"{mount}/index/{len(mounted)}"
            (folder / "index" / str(len(mounted))).mkdir(parents=True)
            volumes.append((str(path.parent.resolve()), inside))
            mounted.append(url)
            return f"file://{inside}/{path.name}"

        if options.pip_index_url:
            lines.append(f"index-url = {index(options.pip_index_url)}")
        if options.pip_extra_index_urls:
            lines.append("extra-index-url = " + " ".join(index(url) for url in options.pip_extra_index_urls))
        if options.ca_bundle:
            if not options.ca_bundle.is_file():
                raise OciBuildError(f"--ca-bundle {options.ca_bundle} is not a file")
            (folder / "ca.crt").touch()
            volumes.append((str(options.ca_bundle.resolve()), f"{mount}/ca.crt"))
            lines.append(f"cert = {mount}/ca.crt")
        links = []
        for number, source in enumerate(options.pip_find_links):
            if not source.is_dir():
                raise OciBuildError(f"--pip-find-links {source} is not a folder")
            (folder / "find-links" / str(number)).mkdir(parents=True)
            volumes.append((str(source.resolve()), f"{mount}/find-links/{number}"))
            links.append(f"{mount}/find-links/{number}")
        if links:
            lines.append("find-links = " + " ".join(links))
        (folder / "pip.conf").write_text("\n".join(lines) + "\n", encoding="utf-8")
        strip = host_strip(platform)
        if strip is not None:
            strip_bundle(strip, folder / "strip")
        uv = installer_uv(options, platform)
        if uv is not None:
            (folder / "uv").touch()
            volumes.append((str(uv.resolve()), f"{mount}/uv"))
            uv_args: list[str] = []
            for line in lines[1:]:
                key, _, value = line.partition(" = ")
                if key == "index-url":
                    uv_args += ["--index-url", value]
                elif key == "extra-index-url":
                    for url in value.split():
                        uv_args += ["--extra-index-url", url]
                elif key == "find-links":
                    for link in value.split():
                        uv_args += ["--find-links", link]
            if len(uv_args) > 2 or "--find-links" in uv_args:
                uv_args += ["--index-strategy", "unsafe-best-match"]  # pip's rule: best version of all
            (folder / "uv-args").write_text(" ".join(uv_args) + "\n", encoding="utf-8")
            env = ["UV_PYTHON_DOWNLOADS=never", "UV_NO_PROGRESS=1", "UV_LINK_MODE=copy"]
            if options.ca_bundle:
                env.append(f"SSL_CERT_FILE={mount}/ca.crt")
            (folder / "uv.env").write_text("".join(f"{item}\n" for item in env), encoding="utf-8")
        folder.chmod(0o755)
        yield volumes
    finally:
        remove_tree(folder)
