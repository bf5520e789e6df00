"""Image-size probes for the benchmarks and the container tests: local size and pull size.

`image_size` asks podman for a local image's uncompressed size; `compressed_sizes` asks the
registry (skopeo) what a pull of each platform transfers. Both raise RuntimeError with the
tool's message when it cannot answer.
"""

import json
import subprocess
from pathlib import Path
from typing import Any


def image_size(ref: str, storage_driver: str | None = None) -> int:
    """Uncompressed size in bytes of a local image."""
    cmd = ["podman"] + (["--storage-driver", storage_driver] if storage_driver else [])
    result = subprocess.run(
        [*cmd, "image", "inspect", "--format", "{{.Size}}", ref], capture_output=True, text=True, check=False
    )
    if result.returncode:
        raise RuntimeError(f"cannot inspect {ref}: {result.stderr.strip()}")
    return int(result.stdout.strip().splitlines()[0])


def compressed_sizes(ref: str, tls_verify: bool = True, auth_file: Path | None = None) -> dict[str, int]:
    """Bytes a pull transfers, per platform of `ref` (layers + config, as the registry holds them)."""

    def raw(reference: str) -> dict[str, Any]:
        cmd = ["skopeo", "inspect", "--raw", f"--tls-verify={'true' if tls_verify else 'false'}"]
        if auth_file:
            cmd += ["--authfile", str(auth_file)]
        result = subprocess.run([*cmd, f"docker://{reference}"], capture_output=True, text=True, check=False)
        if result.returncode:
            raise RuntimeError(f"cannot inspect {reference}: {result.stderr.strip()[-300:]}")
        return dict(json.loads(result.stdout))

    index = raw(ref)
    name = ref.rsplit(":", 1)[0]
    entries = index.get("manifests") or [{"digest": "", "platform": {"os": "linux", "architecture": "?"}}]
    sizes = {}
    for entry in entries:
        manifest = raw(f"{name}@{entry['digest']}") if entry["digest"] else index
        platform = f"{entry['platform']['os']}/{entry['platform']['architecture']}"
        sizes[platform] = sum(int(layer["size"]) for layer in manifest["layers"]) + int(manifest["config"]["size"])
    return sizes
