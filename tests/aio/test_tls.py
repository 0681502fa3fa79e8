"""Real TLS handshakes over loopback, under the default asyncio loop and under uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import os
import re
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from smtpfront.aio.tls import generate_self_signed, server_context, tls_facts
from smtpfront.config import TlsConfig

T = TypeVar("T")
TIMEOUT = 10
Run = Callable[[Callable[[], Awaitable[T]]], T]


@dataclass
class Certs:
    """Everything the tests trust or present, generated once per module."""

    dir: Path
    default: tuple[str, str]
    a: tuple[str, str]
    b: tuple[str, str]
    wild: tuple[str, str]
    trust: list[str]
    ca: str
    client: tuple[str, str]
    client_der: bytes
    stranger: tuple[str, str]  # a client certificate from a CA the server does not trust


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _make_ca_and_client(directory: Path, ca_cn: str) -> tuple[str, tuple[str, str], bytes]:
    """A tiny CA and one client certificate it signed (with an RFC 4514 special in O)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_cn)])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example, Inc"),
            x509.NameAttribute(NameOID.COMMON_NAME, "relay.client.test"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir()
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "client.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "client.key").write_bytes(_pem_key(key))
    der = cert.public_bytes(serialization.Encoding.DER)
    return str(directory / "ca.pem"), (str(directory / "client.pem"), str(directory / "client.key")), der


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("certs")
    default = generate_self_signed(str(d))
    a = generate_self_signed(str(d), "mail.a.test")
    b = generate_self_signed(str(d), "mail.b.test")
    wild = generate_self_signed(str(d), "*.wild.test")
    ca, client, der = _make_ca_and_client(d / "ca", "Test Client CA")
    _, stranger, _ = _make_ca_and_client(d / "other-ca", "Other CA")
    trust = [default[0], a[0], b[0], wild[0]]
    return Certs(d, default, a, b, wild, trust, ca, client, der, stranger)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run[Any]:
    """Run a coroutine function to completion on a fresh loop of the given kind."""
    factory = asyncio.new_event_loop if request.param == "asyncio" else uvloop.new_event_loop

    def runner(main: Callable[[], Awaitable[T]]) -> T:
        async def bounded() -> T:
            return await asyncio.wait_for(main(), TIMEOUT)

        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(bounded())

    return runner


def client_ctx(trust: list[str], *, check_hostname: bool = True, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    for path in trust:
        ctx.load_verify_locations(cafile=path)
    ctx.check_hostname = check_hostname
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


@dataclass
class Seen:
    server_facts: dict[str, str]
    peercert: dict[str, Any]
    server_der: bytes
    line: bytes


def alt_names(peercert: dict[str, Any]) -> set[str]:
    return {value for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS"}


def fingerprint(pem_path: str) -> str:
    cert = x509.load_pem_x509_certificate(Path(pem_path).read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex()


@contextlib.asynccontextmanager
async def tls_server(ctx: ssl.SSLContext) -> Any:
    """An implicit-TLS server that reports its session facts, then says hello."""
    facts: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        facts.set_result(tls_facts(writer.get_extra_info("ssl_object")))
        writer.write(b"hello\r\n")
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.drain()
            await reader.read()
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ctx)
    async with server:
        yield server.sockets[0].getsockname()[1], facts


async def handshake(server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str | None) -> Seen:
    async with tls_server(server) as (port, facts):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname=server_hostname)
        line = await reader.readline()
        ssl_object = writer.get_extra_info("ssl_object")
        # No greeting means the server refused the handshake and never saw a session.
        server_facts = await facts if line else {}
        seen = Seen(server_facts, writer.get_extra_info("peercert"), ssl_object.getpeercert(True), line)
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
        return seen


def refused(run: Run[Seen], server: ssl.SSLContext, client: ssl.SSLContext) -> bool:
    """Whether the server turned the client away (a handshake error, or EOF before hello)."""
    try:
        seen = run(lambda: handshake(server, client, "localhost"))
    except ssl.SSLCertVerificationError:
        raise  # the client refused the server: not what these tests are about
    except (ssl.SSLError, ConnectionError):
        return True
    return seen.line == b""


# -- self-signed generation ------------------------------------------------------------------


def test_self_signed_is_generated_once_and_reused(tmp_path: Path) -> None:
    first = generate_self_signed(str(tmp_path))
    stat = [os.stat(p) for p in first]
    second = generate_self_signed(str(tmp_path))
    assert first == second
    assert [os.stat(p).st_mtime_ns for p in second] == [s.st_mtime_ns for s in stat]
    assert fingerprint(first[0]) == fingerprint(second[0])
    assert os.stat(first[1]).st_mode & 0o077 == 0  # the key is private


def test_self_signed_names_and_validity(certs: Certs) -> None:
    cert = x509.load_pem_x509_certificate(Path(certs.a[0]).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mail.a.test", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=365) <= lifetime <= datetime.timedelta(days=366)


def test_self_signed_is_renewed_when_expiring_or_mismatched(tmp_path: Path) -> None:
    cert_path, key_path = generate_self_signed(str(tmp_path))
    original = fingerprint(cert_path)
    # A key that no longer matches the certificate forces a new pair.
    Path(key_path).write_bytes(_pem_key(ec.generate_private_key(ec.SECP256R1())))
    assert generate_self_signed(str(tmp_path)) == (cert_path, key_path)
    renewed = fingerprint(cert_path)
    assert renewed != original
    # So does a certificate with less than a day to live.
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    old = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    now = datetime.datetime.now(datetime.UTC)
    short = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(old.issuer)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(hours=12))
        .add_extension(old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value, False)
        .sign(key, hashes.SHA256())
    )
    Path(cert_path).write_bytes(short.public_bytes(serialization.Encoding.PEM))
    generate_self_signed(str(tmp_path))
    assert fingerprint(cert_path) not in (renewed, short.fingerprint(hashes.SHA256()).hex())


def test_server_context_without_cert_warns_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="smtpfront.aio.tls"):
        server_context(TlsConfig(), hostname="mx.example.test")
    [record] = caplog.records
    message = record.getMessage()
    assert "no TLS certificate configured; using a self-signed certificate for mx.example.test" in message
    [cache] = tmp_path.iterdir()
    assert cache.stat().st_mode & 0o077 == 0
    assert str(cache / "selfsigned-mx.example.test.pem") in message


# -- configuration errors --------------------------------------------------------------------


def test_cert_without_key_is_an_error(certs: Certs) -> None:
    with pytest.raises(ValueError, match="cert_file and key_file must be set together"):
        server_context(TlsConfig(cert_file=certs.a[0]))
    with pytest.raises(ValueError, match="cert_file and key_file must be set together"):
        server_context(TlsConfig(key_file=certs.a[1]))


def test_mismatched_cert_and_key_is_an_error(certs: Certs) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{certs.a[0]} with key {certs.b[1]}")):
        server_context(TlsConfig(cert_file=certs.a[0], key_file=certs.b[1]))


def test_unreadable_files_are_named(certs: Certs, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ValueError, match=re.escape(f"cannot read TLS file {missing}")):
        server_context(TlsConfig(cert_file=missing, key_file=certs.a[1]))
    with pytest.raises(ValueError, match=re.escape(f"cannot read TLS file {missing}")):
        server_context(TlsConfig(*certs.a, sni={"x.test": (certs.b[0], missing)}))
    with pytest.raises(ValueError, match=re.escape(f"client CA file {certs.b[1]}")):
        server_context(TlsConfig(*certs.a, client_ca_file=certs.b[1]))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (TlsConfig(min_version="TLSv1.1"), "min_version"),
        (TlsConfig(ciphers="NO-SUCH-CIPHER"), "select no cipher"),
        (TlsConfig(require_client_cert=True), "needs client_ca_file"),
        (TlsConfig(sni={"mail.*.test": ("c", "k")}), "leading"),
    ],
)
def test_bad_settings_are_errors(certs: Certs, config: TlsConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        server_context(replace(config, cert_file=certs.a[0], key_file=certs.a[1]))


# -- handshakes ------------------------------------------------------------------------------


def test_self_signed_verifies_for_localhost(certs: Certs, run: Run[Seen]) -> None:
    server = server_context(TlsConfig(self_signed_dir=str(certs.dir)))
    seen = run(lambda: handshake(server, client_ctx([certs.default[0]]), "localhost"))
    assert seen.line == b"hello\r\n"
    assert hashlib.sha256(seen.server_der).hexdigest() == fingerprint(certs.default[0])
    assert seen.server_facts["version"] in ("TLSv1.2", "TLSv1.3")
    assert seen.server_facts["sni"] == "localhost"
    assert int(seen.server_facts["bits"]) >= 128 and seen.server_facts["cipher"]
    assert not any(k.startswith("peer_") for k in seen.server_facts)


@pytest.mark.parametrize(
    ("name", "expected", "recorded"),
    [
        ("mail.a.test", "mail.a.test", "mail.a.test"),
        ("MAIL.B.test.", "mail.b.test", "mail.b.test"),  # case and a trailing dot are ignored
        ("x.wild.test", "*.wild.test", "x.wild.test"),
        ("a.b.wild.test", "localhost", "a.b.wild.test"),  # a wildcard covers one label only
        ("wild.test", "localhost", "wild.test"),
        ("unknown.test", "localhost", "unknown.test"),
    ],
)
def test_sni_picks_the_certificate(certs: Certs, run: Run[Seen], name: str, expected: str, recorded: str) -> None:
    config = TlsConfig(*certs.default, sni={"mail.a.test": certs.a, "Mail.B.Test": certs.b, "*.wild.test": certs.wild})
    seen = run(lambda: handshake(server_context(config), client_ctx(certs.trust, check_hostname=False), name))
    assert expected in alt_names(seen.peercert)
    assert seen.peercert["subject"] == ((("commonName", expected),),)
    assert seen.server_facts["sni"] == recorded


def test_sni_certificate_verifies_by_hostname(certs: Certs, run: Run[Seen]) -> None:
    server = server_context(TlsConfig(*certs.default, sni={"mail.a.test": certs.a}))
    seen = run(lambda: handshake(server, client_ctx(certs.trust), "mail.a.test"))
    assert seen.line == b"hello\r\n"


def test_no_sni_gets_the_default(certs: Certs, run: Run[Seen]) -> None:
    server = server_context(TlsConfig(*certs.default, sni={"mail.a.test": certs.a}))
    seen = run(lambda: handshake(server, client_ctx(certs.trust, check_hostname=False), None))
    assert "localhost" in alt_names(seen.peercert)
    assert "sni" not in seen.server_facts


def test_optional_client_cert_absent(certs: Certs, run: Run[Seen]) -> None:
    server = server_context(TlsConfig(*certs.default, client_ca_file=certs.ca))
    seen = run(lambda: handshake(server, client_ctx(certs.trust), "localhost"))
    assert seen.line == b"hello\r\n"
    assert {"version", "cipher", "bits", "sni"} <= seen.server_facts.keys()
    assert not any(k.startswith("peer_") for k in seen.server_facts)


def test_optional_client_cert_present(certs: Certs, run: Run[Seen]) -> None:
    server = server_context(TlsConfig(*certs.default, client_ca_file=certs.ca))
    seen = run(lambda: handshake(server, client_ctx(certs.trust, cert=certs.client), "localhost"))
    facts = seen.server_facts
    assert facts["peer_cn"] == "relay.client.test"
    assert facts["peer_subject"] == "CN=relay.client.test,O=Example\\, Inc"
    assert facts["peer_issuer"] == "CN=Test Client CA"
    assert facts["peer_fingerprint_sha256"] == hashlib.sha256(certs.client_der).hexdigest()


def test_client_cert_from_another_ca_is_rejected(certs: Certs, run: Run[Seen]) -> None:
    server = server_context(TlsConfig(*certs.default, client_ca_file=certs.ca))
    assert refused(run, server, client_ctx(certs.trust, cert=certs.stranger))


def test_required_client_cert(certs: Certs, run: Run[Seen]) -> None:
    server = server_context(TlsConfig(*certs.default, client_ca_file=certs.ca, require_client_cert=True))
    seen = run(lambda: handshake(server, client_ctx(certs.trust, cert=certs.client), "localhost"))
    assert seen.server_facts["peer_cn"] == "relay.client.test"
    # Without a certificate: under TLS 1.3 the client's handshake completes before the
    # server checks, so the refusal shows up on the first read, never as a greeting.
    assert refused(run, server, client_ctx(certs.trust))


def test_min_version_tls13_rejects_a_tls12_client(certs: Certs, run: Run[Seen]) -> None:
    server = server_context(TlsConfig(*certs.default, min_version="TLSv1.3"))
    client = client_ctx(certs.trust)
    assert run(lambda: handshake(server, client, "localhost")).server_facts["version"] == "TLSv1.3"
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    # The server sends a protocol_version alert and aborts the connection at once, so the
    # client sees either that alert or ECONNRESET, depending on timing.
    assert refused(run, server, client)


def test_ciphers_apply_to_tls12(certs: Certs, run: Run[Seen]) -> None:
    server = server_context(TlsConfig(*certs.default, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"))
    client = client_ctx(certs.trust)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    facts = run(lambda: handshake(server, client, "localhost")).server_facts
    assert (facts["version"], facts["cipher"], facts["bits"]) == ("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256", "128")


# -- STARTTLS --------------------------------------------------------------------------------


class PlainThenTls(asyncio.Protocol):
    """A line server that upgrades in place on ``STARTTLS``, as the SMTP adapter does."""

    def __init__(self, ctx: ssl.SSLContext, done: asyncio.Future[dict[str, str]]) -> None:
        self.ctx, self.done, self.buffer = ctx, done, b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass: cast, do not assert.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(b"220 ready\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.buffer == b"STARTTLS\r\n":
            self.buffer = b""
            asyncio.get_running_loop().create_task(self.upgrade())

    async def upgrade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"220 go ahead\r\n")
        loop = asyncio.get_running_loop()
        new = await loop.start_tls(self.transport, self, self.ctx, server_side=True)
        assert new is not None
        self.transport = new
        facts = tls_facts(new.get_extra_info("ssl_object"))
        new.write(f"250 {facts['version']} {facts.get('sni')}\r\n".encode())
        self.done.set_result(facts)


def test_starttls_upgrade(certs: Certs, run: Run[tuple[dict[str, str], list[bytes]]]) -> None:
    server_ctx = server_context(TlsConfig(*certs.default, sni={"mail.a.test": certs.a}))

    async def main() -> tuple[dict[str, str], list[bytes]]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[dict[str, str]] = loop.create_future()
        server = await loop.create_server(lambda: PlainThenTls(server_ctx, done), "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            lines = [await reader.readline()]
            assert writer.get_extra_info("ssl_object") is None
            writer.write(b"STARTTLS\r\n")
            lines.append(await reader.readline())
            await writer.start_tls(client_ctx(certs.trust), server_hostname="mail.a.test")
            lines.append(await reader.readline())
            peercert = writer.get_extra_info("peercert")
            assert "mail.a.test" in alt_names(peercert)
            facts = await done
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
            return facts, lines

    facts, lines = run(main)
    assert lines[:2] == [b"220 ready\r\n", b"220 go ahead\r\n"]
    assert lines[2] == f"250 {facts['version']} mail.a.test\r\n".encode()
    assert facts["sni"] == "mail.a.test"
    assert facts["version"] in ("TLSv1.2", "TLSv1.3")


def test_tls_facts_of_nothing() -> None:
    assert tls_facts(None) == {}


def test_tls_facts_before_the_handshake(certs: Certs) -> None:
    ctx = server_context(TlsConfig(*certs.default))
    obj = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    assert tls_facts(obj) == {}
