"""Server-side TLS: contexts for implicit TLS and STARTTLS, SNI, client certificates.

One :class:`ssl.SSLContext` serves both the implicit-TLS port (RFC 8314) and STARTTLS
(RFC 3207, via ``loop.start_tls``). SNI (RFC 6066 §3) picks a per-name context; client
certificates are requested only when a client CA is configured. With no certificate
configured, a self-signed one is generated and cached, and a warning says so: that is a
development convenience, never a production setup.

The server name a client sent is recorded by the SNI callback, because a server-side
``SSLObject.server_hostname`` is always ``None``. ``SSLObject`` (and ``SSLSocket``) can
be weakly referenced, so the name lives in a module-level ``WeakKeyDictionary`` keyed by
the very object that ``get_extra_info("ssl_object")`` returns, under both asyncio and
uvloop; an entry goes away with its connection.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import ipaddress
import logging
import os
import re
import ssl
import stat
import tempfile
import weakref
from collections.abc import Callable
from typing import cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..config import TlsConfig

__all__ = ["server_context", "generate_self_signed", "tls_facts"]

log = logging.getLogger(__name__)

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
_SERVER_NAMES: weakref.WeakKeyDictionary[ssl.SSLObject | ssl.SSLSocket, str] = weakref.WeakKeyDictionary()
# RFC 4514 §3 short names for what ``getpeercert()`` spells out; other attributes keep their long name.
_SHORT_NAMES = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "domainComponent": "DC",
}
_RENEW_MARGIN = datetime.timedelta(days=1)
_Rdns = tuple[tuple[tuple[str, str], ...], ...]  # getpeercert()'s "subject" and "issuer"


def server_context(config: TlsConfig, *, hostname: str = "localhost") -> ssl.SSLContext:
    """Build the server context for a listener, SNI contexts included.

    Args:
        config: The listener's TLS settings.
        hostname: Name put in a generated self-signed certificate.

    Returns:
        A context usable with ``start_server(ssl=...)`` and ``loop.start_tls``.

    Raises:
        ValueError: Inconsistent settings, or a file that cannot be read or does not match.
    """
    if (config.cert_file is None) != (config.key_file is None):
        raise ValueError("TLS cert_file and key_file must be set together (got only one of them)")
    if config.min_version not in _VERSIONS:
        raise ValueError(f"TLS min_version must be one of {sorted(_VERSIONS)}, not {config.min_version!r}")
    if config.require_client_cert and config.client_ca_file is None:
        raise ValueError("TLS require_client_cert needs client_ca_file to verify certificates against")
    if config.cert_file is not None and config.key_file is not None:
        cert_file, key_file = config.cert_file, config.key_file
    else:
        directory = config.self_signed_dir or _private_temp_dir()
        cert_file, key_file = generate_self_signed(directory, hostname)
        log.warning("no TLS certificate configured; using a self-signed certificate for %s at %s", hostname, cert_file)
    context = _new_context(config, cert_file, key_file)
    exact: dict[str, ssl.SSLContext] = {}
    wildcard: dict[str, ssl.SSLContext] = {}
    for name, (sni_cert, sni_key) in config.sni.items():
        key = name.rstrip(".").lower()
        table = exact
        if key.startswith("*."):
            key, table = key[2:], wildcard
        if not key or "*" in key:
            raise ValueError(f"TLS sni name {name!r}: only a leading '*.' wildcard is allowed")
        table[key] = _new_context(config, sni_cert, sni_key)
    context.sni_callback = _sni_callback(exact, wildcard)
    return context


def _new_context(config: TlsConfig, cert_file: str, key_file: str) -> ssl.SSLContext:
    # CLIENT_AUTH purpose with no cafile loads no system CAs (verify_mode is CERT_NONE),
    # so only client_ca_file is ever trusted for client certificates.
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = _VERSIONS[config.min_version]
    # No compression (CRIME); our cipher order; no client-initiated TLS 1.2
    # renegotiation, which costs the server a handshake per request.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    if config.ciphers is not None:
        try:
            context.set_ciphers(config.ciphers)
        except ssl.SSLError as exc:
            raise ValueError(f"TLS ciphers {config.ciphers!r} select no cipher: {exc}") from exc
    _check_readable(cert_file, key_file, config.client_ca_file)
    try:
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"cannot load TLS certificate {cert_file} with key {key_file}: {exc}") from exc
    if config.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=config.client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"cannot load TLS client CA file {config.client_ca_file}: {exc}") from exc
        context.verify_mode = ssl.CERT_REQUIRED if config.require_client_cert else ssl.CERT_OPTIONAL
    return context


def _check_readable(*paths: str | None) -> None:
    # OpenSSL's errors do not say which file was missing; the operator needs to know.
    for path in filter(None, paths):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ValueError(f"cannot read TLS file {path}: {exc.strerror or exc}") from exc


def _sni_callback(
    exact: dict[str, ssl.SSLContext], wildcard: dict[str, ssl.SSLContext]
) -> Callable[[ssl.SSLObject, str, ssl.SSLContext], int | None]:
    def callback(ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: object) -> None:
        if server_name is None:
            return None
        name = server_name.rstrip(".").lower()
        _SERVER_NAMES[ssl_object] = name
        chosen = exact.get(name)
        if chosen is None:
            label, dot, parent = name.partition(".")
            if label and dot:
                chosen = wildcard.get(parent)
        if chosen is not None:
            # Switching the context swaps only the certificate and key; the verify mode
            # and options were copied from the default context and are the same anyway.
            ssl_object.context = chosen
        return None

    return callback


def _private_temp_dir() -> str:
    # A stable per-user path, so restarts and sibling workers reuse one pair; refuse it
    # if someone else owns it or it is a symlink (shared /tmp), and fall back to mkdtemp.
    path = os.path.join(tempfile.gettempdir(), f"smtpfront-tls-{os.getuid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077:
        return path
    return tempfile.mkdtemp(prefix="smtpfront-tls-")


def generate_self_signed(directory: str, hostname: str = "localhost") -> tuple[str, str]:
    """Return a self-signed certificate and key for ``hostname``, generating them if needed.

    The pair is reused while it matches, names ``hostname`` and stays valid for more than a
    day; otherwise a new ECDSA P-256 pair valid for one year is written. The
    subjectAltName holds ``hostname``, ``localhost``, ``127.0.0.1`` and ``::1``.

    Args:
        directory: Cache directory, created (mode 0700) if missing.
        hostname: DNS name (``*.`` wildcards allowed) or IP address to certify.

    Returns:
        ``(cert_path, key_path)``.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    stem = os.path.join(directory, "selfsigned-" + re.sub(r"[^A-Za-z0-9.-]", "_", hostname))
    cert_path, key_path = stem + ".pem", stem + ".key"
    # Pre-forked workers may all start without a certificate: one generates, the rest reuse.
    lock = os.open(os.path.join(directory, ".selfsigned.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _reusable(cert_path, key_path, hostname):
            cert_pem, key_pem = _make_pair(hostname)
            _write_atomic(key_path, key_pem, 0o600)
            _write_atomic(cert_path, cert_pem, 0o644)
    finally:
        os.close(lock)
    return cert_path, key_path


def _alt_names(hostname: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for name in dict.fromkeys([hostname, "localhost", "127.0.0.1", "::1"]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    return names


def _reusable(cert_path: str, key_path: str, hostname: str) -> bool:
    try:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound):
        return False
    now = datetime.datetime.now(datetime.UTC)
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return (
        set(_alt_names(hostname)) <= set(san)
        and cert.not_valid_before_utc <= now
        and cert.not_valid_after_utc - now > _RENEW_MARGIN
        and cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)
    )


def _make_pair(hostname: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])])  # ub-common-name
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))  # tolerate clock skew
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(_alt_names(hostname)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write_atomic(path: str, data: bytes, mode: int) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def tls_facts(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> dict[str, str]:
    """Describe an established TLS session for logs, ``Received:`` and the envelope.

    Args:
        ssl_object: ``transport.get_extra_info("ssl_object")``, or ``None`` for plain text.

    Returns:
        Those of ``version``, ``cipher``, ``bits``, ``sni``, ``peer_cn``, ``peer_subject``,
        ``peer_issuer`` (RFC 4514 strings) and ``peer_fingerprint_sha256`` (lowercase hex
        of the DER) that apply; ``{}`` for ``None``.
    """
    if ssl_object is None:
        return {}
    facts: dict[str, str] = {}
    if version := ssl_object.version():
        facts["version"] = version
    if cipher := ssl_object.cipher():
        facts["cipher"], facts["bits"] = cipher[0], str(cipher[2])
    if sni := _SERVER_NAMES.get(ssl_object) or ssl_object.server_hostname:
        facts["sni"] = sni
    try:
        der, decoded = ssl_object.getpeercert(binary_form=True), ssl_object.getpeercert() or {}
    except ValueError:  # the handshake has not happened yet
        return facts
    if der is None:
        return facts
    # A presented certificate was verified against client_ca_file, so it is decoded too.
    subject, issuer = (cast(_Rdns, decoded.get(kind, ())) for kind in ("subject", "issuer"))
    if cn := [v for rdn in subject for k, v in rdn if k == "commonName"]:
        facts["peer_cn"] = cn[-1]
    if subject:
        facts["peer_subject"] = _rfc4514(subject)
    if issuer:
        facts["peer_issuer"] = _rfc4514(issuer)
    facts["peer_fingerprint_sha256"] = hashlib.sha256(der).hexdigest()
    return facts


def _rfc4514(rdns: _Rdns) -> str:
    # RFC 4514 §2.1: RDNs are written last-to-first, multi-valued RDNs joined by "+";
    # §2.4: escape the specials, a leading "#" or space and a trailing space.
    def escape(value: str) -> str:
        value = re.sub(r'([,+"\\<>;])', r"\\\1", value)
        if value.endswith(" "):
            value = value[:-1] + "\\ "
        return "\\" + value if value[:1] in ("#", " ") else value

    return ",".join("+".join(f"{_SHORT_NAMES.get(k, k)}={escape(v)}" for k, v in rdn) for rdn in reversed(rdns))
