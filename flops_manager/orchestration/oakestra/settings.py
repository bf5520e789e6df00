"""How to reach and log in to Oakestra's system manager: `OakestraSettings`, from FLOPS_OAKESTRA_*."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator

from flops.net import is_loopback
from flops_manager.orchestration.addresses import DEFAULT_POOL
from flops_manager.orchestration.base import OrchestratorError

ENV_PREFIX = "FLOPS_OAKESTRA_"
# Any of these set means the operator wants the backend: it is then configured in full or refused.
ENABLING_VARIABLES = tuple(ENV_PREFIX + name for name in ("URL", "USERNAME", "PASSWORD", "PASSWORD_FILE"))
DEFAULT_VOLUME_CONFIG = {"source": "{source}", "read_only": "true"}


class OakestraConfigError(OrchestratorError):
    """The Oakestra backend is not configured (or configured unsafely); the message says how to fix it."""


class OakestraSettings(BaseModel):
    """How to reach and log in to Oakestra's system manager. No credential has a default."""

    url: str = Field(description="system manager base URL, e.g. https://oakestra.example:10000")
    username: str = Field(min_length=1)
    password: SecretStr
    organization: str | None = None
    ca_file: Path | None = None
    insecure: bool = False
    timeout_s: float = Field(default=30.0, gt=0)
    # Renew the access token when less than this is left (Oakestra's tokens last 10 minutes).
    refresh_margin_s: float = Field(default=60.0, ge=0)
    # Assumed access token lifetime when the token does not carry an `exp` claim.
    token_lifetime_s: float = Field(default=600.0, gt=0)
    address_pool: str = DEFAULT_POOL
    # Accept Oakestra access tokens as API credentials (the original `oak` CLI sends them).
    accept_user_tokens: bool = False
    # FLOps node name -> Oakestra placement ("cluster", "cluster1,cluster2" or "cluster/worker").
    placement: dict[str, str] = Field(default_factory=dict)
    # CSI driver (advertised by the workers) that mounts the folders a service needs, its TLS
    # certificates and keys first; None: services with mounts are refused. Config: the driver's
    # string map, `{source}` standing for the folder's path on the manager.
    volume_csi_driver: str | None = None
    volume_config: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_VOLUME_CONFIG))

    @model_validator(mode="after")
    def _safe_transport(self) -> OakestraSettings:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"FLOPS_OAKESTRA_URL must be an http(s) URL, not {self.url!r}")
        self.url = self.url.rstrip("/")
        loopback = is_loopback(parts.hostname)
        if self.insecure and not loopback:
            raise ValueError(
                "FLOPS_OAKESTRA_INSECURE=1 is only accepted for a system manager on this machine (loopback); "
                f"for {parts.hostname} give its CA certificate in FLOPS_OAKESTRA_CA_FILE"
            )
        if parts.scheme == "http" and not loopback:
            raise ValueError(
                f"refusing to send Oakestra credentials in clear text to {parts.hostname}: put the system manager "
                "behind TLS (a reverse proxy, see docs/oakestra.md) and use an https:// URL, or reach it through "
                "an SSH tunnel on 127.0.0.1"
            )
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ValueError(f"FLOPS_OAKESTRA_CA_FILE {self.ca_file} is not a file")
        return self

    @property
    def verify(self) -> bool | str:
        """What `requests` gets as `verify`: on by default, the CA file if one is given."""
        if self.insecure:
            return False
        return str(self.ca_file) if self.ca_file is not None else True

    @staticmethod
    def wanted(env: Mapping[str, str]) -> bool:
        """Whether `env` asks for the Oakestra backend (any of `ENABLING_VARIABLES` set)."""
        return any(env.get(name, "").strip() for name in ENABLING_VARIABLES)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OakestraSettings:
        """Settings from the FLOPS_OAKESTRA_* variables of `env`; `OakestraConfigError` names what is missing."""

        def get(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name, "").strip()
            return value or None

        url, username = get("URL"), get("USERNAME")
        password, password_file = get("PASSWORD"), get("PASSWORD_FILE")
        missing = [ENV_PREFIX + name for name, value in (("URL", url), ("USERNAME", username)) if value is None]
        if password is None and password_file is None:
            missing.append(f"{ENV_PREFIX}PASSWORD or {ENV_PREFIX}PASSWORD_FILE")
        if missing:
            raise OakestraConfigError(f"the oakestra backend needs {', '.join(missing)} (there are no defaults)")
        if password is not None and password_file is not None:
            raise OakestraConfigError(f"set only one of {ENV_PREFIX}PASSWORD and {ENV_PREFIX}PASSWORD_FILE")
        if password_file is not None:
            try:
                password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as error:
                raise OakestraConfigError(f"cannot read {ENV_PREFIX}PASSWORD_FILE {password_file}: {error}") from error
            if not password:
                raise OakestraConfigError(f"{ENV_PREFIX}PASSWORD_FILE {password_file} is empty")
        placement: dict[str, str] = {}
        if get("PLACEMENT"):
            try:
                placement = json.loads(get("PLACEMENT") or "{}")
            except json.JSONDecodeError as error:
                raise OakestraConfigError(f"{ENV_PREFIX}PLACEMENT is not a JSON object: {error}") from error
        volume_config: dict[str, str] = dict(DEFAULT_VOLUME_CONFIG)
        if get("VOLUME_CONFIG"):
            try:
                loaded = json.loads(get("VOLUME_CONFIG") or "{}")
            except json.JSONDecodeError as error:
                raise OakestraConfigError(f"{ENV_PREFIX}VOLUME_CONFIG is not a JSON object: {error}") from error
            if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
                raise OakestraConfigError(f"{ENV_PREFIX}VOLUME_CONFIG must map names to strings (a CSI config)")
            volume_config = loaded
        fields: dict[str, Any] = {
            "url": url,
            "username": username,
            "password": password,
            "organization": get("ORGANIZATION"),
            "ca_file": get("CA_FILE"),
            "insecure": (get("INSECURE") or "0").lower() in ("1", "true", "yes"),
            "accept_user_tokens": (get("USER_TOKENS") or "0").lower() in ("1", "true", "yes"),
            "placement": placement,
            "volume_csi_driver": get("VOLUME_CSI_DRIVER"),
            "volume_config": volume_config,
        }
        for name, field in (("TIMEOUT", "timeout_s"), ("ADDRESS_POOL", "address_pool")):
            if get(name):
                fields[field] = get(name)
        try:
            return cls.model_validate(fields)
        except ValidationError as error:
            reasons = "; ".join(str(problem["msg"]).removeprefix("Value error, ") for problem in error.errors())
            raise OakestraConfigError(f"invalid Oakestra settings: {reasons}") from error
