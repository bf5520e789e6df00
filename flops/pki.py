"""Per-project PKI for the Flower links: a CA, the SuperLink's TLS certificate, SuperNode keys.

Every training (a manager project, a `flops train` run) gets its own certificate authority, so a
learner trusts only its own project's SuperLink and a SuperLink certificate of one project is
worthless for another. Under the project's run folder (`<run>/pki/`, 0700, every file 0600):

    ca/ca.pem, ca/ca.key            the project's CA (P-384); the key never leaves this folder
    superlink/                      what the aggregator is given, and nothing else:
      ca.pem, superlink.pem, superlink.key   its TLS certificate (SANs: every address learners dial)
      supernodes/<node>.pub                   the public keys of the project's learners, to register
    supernodes/<node>/              what one learner is given, and nothing else:
      ca.pem, supernode.key, supernode.pub    its identity key (P-384, OpenSSH format, as Flower wants)

Files, never argv or environment: launchers pass the paths, backends mount the folders. The
CA lives as long as the project's run folder; the SuperLink certificate is re-issued when the
addresses change or it nears its end, learner keys are made once per learner and kept (a
restarted learner keeps its registered identity).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import BaseModel, ConfigDict

PKI_DIR = "pki"
CA_DIR = "ca"
SUPERLINK_DIR = "superlink"
SUPERNODES_DIR = "supernodes"
CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SUPERLINK_CERT = "superlink.pem"
SUPERLINK_KEY = "superlink.key"
SUPERNODE_KEY = "supernode.key"
SUPERNODE_PUB = "supernode.pub"
# Names a SuperLink always answers to: the aggregator's own Control API calls and learners on its host.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# A project's CA and certificates outlive any training (at most a day by default); a project
# older than this gets a new CA at its next deployment.
DEFAULT_LIFETIME = timedelta(days=30)
# The SuperLink certificate is re-issued at deployment when less than this is left.
RENEW_BEFORE = timedelta(days=2)
CLOCK_SKEW = timedelta(minutes=5)
CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class PKIError(RuntimeError):
    """The project's key material cannot be made or read; the message names the file."""


class SuperLinkCredentials(BaseModel):
    """The files the aggregator's SuperLink is given (all in `folder`)."""

    model_config = ConfigDict(frozen=True)

    folder: Path
    ca_cert: Path
    cert: Path
    key: Path
    supernode_keys: Path  # a folder of <node>.pub: the learners to register


class SuperNodeCredentials(BaseModel):
    """The files one learner's SuperNode is given (all in `folder`)."""

    model_config = ConfigDict(frozen=True)

    folder: Path
    ca_cert: Path
    private_key: Path
    public_key: Path


def file_stem(name: str) -> str:
    """`name` if it is a safe file name, else a stable hash of it."""
    if _SAFE_NAME.match(name) and name not in (".", ".."):
        return name
    return "n" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` as 0600 (atomically: readers see the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def _san(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(h.strip().strip("[]") for h in hosts if h and h.strip()):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host.lower()))
    return names


def certificate_names(cert_file: Path) -> list[str]:
    """The DNS names and IP addresses a certificate's subjectAltName holds."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*extension.get_values_for_type(x509.DNSName), *map(str, extension.get_values_for_type(x509.IPAddress))]


def covers(cert_file: Path, host: str) -> bool:
    """Whether a client dialling `host` accepts this certificate's names (exact match, no wildcards)."""
    host = host.strip().strip("[]")
    try:
        wanted = str(ipaddress.ip_address(host))
    except ValueError:
        wanted = host.lower().rstrip(".")
    return wanted in certificate_names(cert_file)


class ProjectPKI:
    """The key material of one project under `root` (`<run folder>/pki`)."""

    def __init__(
        self,
        root: Path,
        project_id: str,
        *,
        lifetime: timedelta = DEFAULT_LIFETIME,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.root = root
        self.project_id = project_id
        self.lifetime = lifetime
        self.clock = clock

    # -- the CA ----------------------------------------------------------------------------------

    @property
    def ca_cert_file(self) -> Path:
        return self.root / CA_DIR / CA_CERT

    def _load_ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
        cert_file, key_file = self.ca_cert_file, self.root / CA_DIR / CA_KEY
        if not (cert_file.is_file() and key_file.is_file()):
            return None
        try:
            cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        except ValueError as error:
            raise PKIError(f"the project's CA in {cert_file.parent} is unreadable ({error}); remove it") from error
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PKIError(f"{key_file} is not an EC key; remove {cert_file.parent}")
        if cert.not_valid_after_utc - self.clock() < RENEW_BEFORE:
            return None  # a new CA: every certificate and registration is made again
        return cert, key

    def ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """The project's CA certificate and key, made on first use (or when it nears its end)."""
        _private_dir(self.root)
        loaded = self._load_ca()
        if loaded is not None:
            return loaded
        key = ec.generate_private_key(ec.SECP384R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FLOps"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"FLOps project CA {self.project_id}"[:64]),
            ]
        )
        now = self.clock()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + self.lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(CA_KEY_USAGE, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA384())
        )
        ca_dir = _private_dir(self.root / CA_DIR)
        write_private(ca_dir / CA_KEY, _pem_key(key))
        write_private(ca_dir / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
        return cert, key  # what the old CA signed fails `_current` and is issued again

    # -- the SuperLink ---------------------------------------------------------------------------

    def superlink(
        self, hosts: Sequence[str], supernodes: Sequence[str], cluster: str | None = None
    ) -> SuperLinkCredentials:
        """The aggregator's files: a certificate for `hosts` (loopback always) and the keys of `supernodes`.

        `cluster`: the files of that cluster's aggregator (hierarchical FL), beside the root's.
        """
        ca_cert, ca_key = self.ca()
        folder = _private_dir(
            self.root / (SUPERLINK_DIR if cluster is None else f"{SUPERLINK_DIR}-{file_stem(cluster)}")
        )
        wanted = sorted({str(n.value) for n in _san([*hosts, *LOOPBACK_HOSTS])})
        credentials = SuperLinkCredentials(
            folder=folder,
            ca_cert=folder / CA_CERT,
            cert=folder / SUPERLINK_CERT,
            key=folder / SUPERLINK_KEY,
            supernode_keys=folder / SUPERNODES_DIR,
        )
        if not self._current(credentials.cert, credentials.key, ca_cert, wanted):
            key = ec.generate_private_key(ec.SECP384R1())
            now = self.clock()
            cert = (
                x509.CertificateBuilder()
                .subject_name(
                    x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"FLOps SuperLink {self.project_id}"[:64])])
                )
                .issuer_name(ca_cert.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - CLOCK_SKEW)
                .not_valid_after(min(now + self.lifetime, ca_cert.not_valid_after_utc))
                .add_extension(x509.SubjectAlternativeName(_san([*hosts, *LOOPBACK_HOSTS])), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA384())
            )
            write_private(credentials.key, _pem_key(key))
            write_private(credentials.cert, cert.public_bytes(serialization.Encoding.PEM))
        write_private(credentials.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
        keys = _private_dir(credentials.supernode_keys)
        wanted_keys = {file_stem(name) for name in supernodes}
        for stale in keys.glob("*.pub"):
            if stale.stem not in wanted_keys:
                stale.unlink()
        for name in supernodes:
            write_private(keys / f"{file_stem(name)}.pub", self.supernode(name).public_key.read_bytes())
        return credentials

    def _current(self, cert_file: Path, key_file: Path, ca_cert: x509.Certificate, names: list[str]) -> bool:
        """Whether the SuperLink certificate on disk is signed by this CA, for exactly `names`, not ending soon."""
        if not (cert_file.is_file() and key_file.is_file()):
            return False
        try:
            cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
            cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        if cert.not_valid_after_utc - self.clock() < RENEW_BEFORE:
            return False
        return sorted(certificate_names(cert_file)) == names

    # -- SuperNodes ------------------------------------------------------------------------------

    def supernode(self, name: str) -> SuperNodeCredentials:
        """One learner's files: its own P-384 key pair (made once, then kept) and the project's CA."""
        ca_cert, _ = self.ca()
        folder = _private_dir(_private_dir(self.root / SUPERNODES_DIR) / file_stem(name))
        credentials = SuperNodeCredentials(
            folder=folder,
            ca_cert=folder / CA_CERT,
            private_key=folder / SUPERNODE_KEY,
            public_key=folder / SUPERNODE_PUB,
        )
        if not (credentials.private_key.is_file() and credentials.public_key.is_file()):
            private, public = supernode_key_pair()
            write_private(credentials.private_key, private)
            write_private(credentials.public_key, public)
        write_private(credentials.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
        return credentials


def supernode_key_pair() -> tuple[bytes, bytes]:
    """A SuperNode identity: a P-384 private key and its public key, both in OpenSSH format."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + b"\n"


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
