"""The registry protocol: does a registry hold an image, with which credentials.

`registry_has` asks with skopeo when it is installed, else over the Registry v2 HTTP API
(HEAD of the manifest, basic auth from a containers auth.json, a bearer token when the
registry asks for one); it answers True or False, and raises `OciBuildError` when the
registry cannot be asked (unreachable, refused, an unexpected status).
"""

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

from image_builder.oci.errors import OciBuildError, RegistryUnavailable

# What skopeo, buildah and podman say when a registry is away for now, not when it refuses.
UNREACHABLE = re.compile(
    r"connection refused|no such host|i/o timeout|timeout exceeded|deadline exceeded|TLS handshake timeout|"
    r"\b50[234]\b|service unavailable|bad gateway",
    re.IGNORECASE,
)


def registry_error(message: str) -> OciBuildError:
    """The error for a registry call that failed with `message`: `RegistryUnavailable` if it was away."""
    return (RegistryUnavailable if UNREACHABLE.search(message) else OciBuildError)(message)


def auth_for(ref: str, auth_file: Path | None) -> dict[str, str] | None:
    """Username and password for `ref`'s registry from a containers auth.json, if any."""
    if auth_file is None:
        return None
    try:
        auths = json.loads(auth_file.read_text(encoding="utf-8")).get("auths", {})
    except (OSError, ValueError) as error:
        raise OciBuildError(f"cannot read --registry-auth-file {auth_file}: {error}") from error
    host = ref.split("/", 1)[0]
    entry = auths.get(host) or auths.get(f"https://{host}")
    if not entry or "auth" not in entry:
        return None
    user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
    return {"username": user, "password": password}


def registry_has(ref: str, tls_verify: bool = True, auth_file: Path | None = None, timeout: float = 30) -> bool:
    """Whether the registry holds `ref` (skopeo when installed, else the Registry v2 API)."""
    if shutil.which("skopeo"):
        cmd = ["skopeo", "inspect", "--raw", f"--tls-verify={'true' if tls_verify else 'false'}"]
        if auth_file:
            cmd += ["--authfile", str(auth_file)]
        result = subprocess.run([*cmd, f"docker://{ref}"], capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode == 0:
            return True
        if re.search(r"manifest unknown|not found|name unknown|404", result.stderr, re.IGNORECASE):
            return False
        raise registry_error(f"cannot ask the registry about {ref}: {' '.join(result.stderr.split())}")
    return _registry_has_http(ref, tls_verify, auth_file, timeout)


def _registry_has_http(ref: str, tls_verify: bool, auth_file: Path | None, timeout: float) -> bool:
    import requests

    host, _, rest = ref.partition("/")
    name, _, tag = rest.rpartition(":")
    accept = ", ".join(
        [
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        ]
    )
    auth = auth_for(ref, auth_file)
    basic = (auth["username"], auth["password"]) if auth else None
    for scheme in ("https", "http") if not tls_verify else ("https",):
        url = f"{scheme}://{host}/v2/{name}/manifests/{tag}"
        try:
            response = requests.head(url, headers={"Accept": accept}, auth=basic, verify=tls_verify, timeout=timeout)
        except requests.exceptions.SSLError:
            continue
        except (requests.ConnectionError, requests.Timeout) as error:
            raise RegistryUnavailable(f"cannot reach the registry {host}: {error}") from error
        except requests.RequestException as error:
            raise OciBuildError(f"cannot reach the registry {host}: {error}") from error
        if response.status_code == 401 and "bearer" in response.headers.get("WWW-Authenticate", "").lower():
            token = _bearer_token(response.headers["WWW-Authenticate"], basic, tls_verify, timeout)
            response = requests.head(
                url, headers={"Accept": accept, "Authorization": f"Bearer {token}"}, verify=tls_verify, timeout=timeout
            )
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        kind = RegistryUnavailable if response.status_code >= 500 else OciBuildError
        raise kind(f"registry {host} answered {response.status_code} for {name}:{tag}")
    raise OciBuildError(f"cannot reach the registry {host} over TLS (set FLOPS_REGISTRY_TLS_VERIFY=0 for plain HTTP)")


def _bearer_token(challenge: str, basic: tuple[str, str] | None, tls_verify: bool, timeout: float) -> str:
    import requests

    fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    realm = fields.pop("realm", "")
    response = requests.get(realm, params=fields, auth=basic, verify=tls_verify, timeout=timeout)
    response.raise_for_status()
    body = response.json()
    return str(body.get("token") or body.get("access_token") or "")
