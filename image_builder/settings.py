"""The image builder's configuration from its environment, read once in `main()`.

    FLOPS_BUILDAH_STORAGE_DRIVER   buildah/podman storage driver (default: storage.conf's)
    FLOPS_BUILDER_INSTALLER        "pip" forces pip where the builder's uv would be used
    PIP_* and pip.conf files       the package index the builds install from
    FLOPS_MQTT_*                   the broker builder events go to (none: no events)

Library code receives a `BuilderSettings` and never looks at `os.environ` itself (the
environment of child processes aside).
"""

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flops.mqtt import MqttSettings
from image_builder.environments import IndexSettings, pip_config_files

STORAGE_DRIVER_ENV = "FLOPS_BUILDAH_STORAGE_DRIVER"
INSTALLER_ENV = "FLOPS_BUILDER_INSTALLER"


@dataclass(frozen=True)
class BuilderSettings:
    """What the environment tells the builder: storage driver, installer, package index."""

    storage_driver: str | None = None  # None: storage.conf decides (overlay where possible, else vfs)
    force_pip: bool = False
    index: IndexSettings = field(default_factory=IndexSettings)
    pip_cert: str | None = None  # the CA bundle pip is configured with (PIP_CERT or pip.conf `cert`)
    mqtt: MqttSettings | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "BuilderSettings":
        environ = dict(os.environ if environ is None else environ)
        return cls(
            storage_driver=environ.get(STORAGE_DRIVER_ENV) or None,
            force_pip=environ.get(INSTALLER_ENV) == "pip",
            index=IndexSettings.from_pip(environ),
            pip_cert=environ.get("PIP_CERT") or _pip_cert_from_config(environ),
            mqtt=MqttSettings.from_env(environ),
        )

    def host_pip_options(self) -> dict[str, Any]:
        """This machine's pip settings as `OciOptions` fields, to pass them into image builds."""
        return {
            "pip_index_url": self.index.index_url,
            "pip_extra_index_urls": self.index.extra_index_urls,
            "pip_find_links": tuple(Path(link) for link in self.index.find_links if Path(link).is_dir()),
            "ca_bundle": Path(self.pip_cert) if self.pip_cert and Path(self.pip_cert).is_file() else None,
        }


def _pip_cert_from_config(environ: Mapping[str, str]) -> str | None:
    parser = configparser.RawConfigParser()
    parser.read([str(path) for path in pip_config_files(environ)], encoding="utf-8")
    for section in ("install", "global"):
        if parser.has_option(section, "cert"):
            return parser.get(section, "cert").strip() or None
    return None
