"""SASL mechanisms for SMTP AUTH: happy paths, RFC test vectors, cancels, malformed input."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from contextlib import AbstractContextManager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpfront.core import replies
from smtpfront.core.errors import LocalProtocolError
from smtpfront.core.events import SaslCredentials
from smtpfront.core.sasl import (
    MECHANISMS,
    Challenge,
    Done,
    Mechanism,
    NeedSecret,
    ScramSecret,
    Step,
    new_mechanism,
    scram_secret_from_password,
    verify_cram_md5,
)


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def mech(name: str, nonce: str | None = None, hostname: str = "mx.example.com") -> Mechanism:
    return new_mechanism(name, hostname=hostname, nonce=nonce)


def raises(reply: replies.Reply) -> AbstractContextManager[pytest.ExceptionInfo[LocalProtocolError]]:
    return pytest.raises(LocalProtocolError, match=re.escape(reply.text))


# -- RFC test vectors -----------------------------------------------------------------

# RFC 2195 §2
CRAM_HOST = "postoffice.reston.mci.net"
CRAM_NONCE = "1896.697170952"
CRAM_CHALLENGE = b"<1896.697170952@postoffice.reston.mci.net>"
CRAM_CHALLENGE_B64 = "PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+"
CRAM_RESPONSE_B64 = "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw"  # "tim b913a6..."
CRAM_DIGEST = "b913a602c7eda7a495b4e6e7334d3890"

# RFC 7677 §3
SCRAM_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
SCRAM_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
SCRAM_CLIENT_FIRST = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
SCRAM_SERVER_FIRST = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
SCRAM_CLIENT_FINAL = (
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
SCRAM_SERVER_FINAL = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
PENCIL = scram_secret_from_password("pencil", SCRAM_SALT, 4096)

# Google's XOAUTH2 documentation example.
XOAUTH2_B64 = (
    "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNr"
    "QmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
)


def scram_client_final(password: str, client_first: str, server_first: str) -> str:
    """The client side of RFC 5802 §3, to test proofs other than the RFC vector's."""
    gs2_header, bare = re.fullmatch(r"([ny],[^,]*,)(.*)", client_first).groups()  # type: ignore[union-attr]
    fields = dict(f.split("=", 1) for f in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    without_proof = f"c={b64(gs2_header)},r={fields['r']}"
    auth_message = f"{bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    return f"{without_proof},p={b64(proof)}"


def scram_until_final(client_first: str, secret: ScramSecret | None) -> tuple[Mechanism, str]:
    m = mech("SCRAM-SHA-256", nonce=SCRAM_SERVER_NONCE)
    assert isinstance(m.start(b64(client_first)), NeedSecret)
    step = m.supply_secret(secret)
    assert isinstance(step, Challenge)
    return m, step.payload.decode()


# -- PLAIN -----------------------------------------------------------------------------


def test_plain_initial_response() -> None:
    step = mech("PLAIN").start(b64("\0alice\0s3cret"))
    assert step == Done(SaslCredentials("PLAIN", "alice", password="s3cret"))


def test_plain_without_initial_response() -> None:
    m = mech("PLAIN")
    assert m.start(None) == Challenge(b"")
    assert m.respond(b64("\0alice\0s3cret")) == Done(SaslCredentials("PLAIN", "alice", password="s3cret"))


def test_plain_authzid_and_utf8() -> None:
    step = mech("PLAIN").start(b64("admin\0jösé\0pässwörd"))
    assert step == Done(SaslCredentials("PLAIN", "jösé", authzid="admin", password="pässwörd"))


@pytest.mark.parametrize(
    "data",
    [b"alice\0secret", b"\0\0secret", b"\0alice\0", b"a\0b\0c\0d", b"\0al\xffice\0pw", b"\0a\nb\0pw", b""],
)
def test_plain_malformed(data: bytes) -> None:
    with raises(replies.AUTH_MALFORMED):
        mech("PLAIN").start(b64(data) if data else "=")


# -- LOGIN -----------------------------------------------------------------------------


def test_login_without_initial_response() -> None:
    m = mech("LOGIN")
    assert m.start(None) == Challenge(b"Username:")
    assert m.respond(b64("alice")) == Challenge(b"Password:")
    assert m.respond(b64("s3cret")) == Done(SaslCredentials("LOGIN", "alice", password="s3cret"))


def test_login_initial_response_is_username() -> None:
    m = mech("LOGIN")
    assert m.start(b64("alice")) == Challenge(b"Password:")
    assert m.respond("") == Done(SaslCredentials("LOGIN", "alice", password=""))


@pytest.mark.parametrize("username", [b"", b"\xff", b"al\x00ice"])
def test_login_malformed_username(username: bytes) -> None:
    m = mech("LOGIN")
    m.start(None)
    with raises(replies.AUTH_MALFORMED):
        m.respond(b64(username))


# -- CRAM-MD5 --------------------------------------------------------------------------


def test_cram_md5_rfc2195_example() -> None:
    m = mech("CRAM-MD5", nonce=CRAM_NONCE, hostname=CRAM_HOST)
    step = m.start(None)
    assert step == Challenge(CRAM_CHALLENGE)
    assert b64(step.payload) == CRAM_CHALLENGE_B64
    done = m.respond(CRAM_RESPONSE_B64)
    assert done == Done(SaslCredentials("CRAM-MD5", "tim", challenge=CRAM_CHALLENGE, response=CRAM_DIGEST))
    assert verify_cram_md5("tanstaaftanstaaf", CRAM_CHALLENGE, CRAM_DIGEST)
    assert verify_cram_md5("tanstaaftanstaaf", CRAM_CHALLENGE, CRAM_DIGEST.upper())
    assert not verify_cram_md5("tanstaaf", CRAM_CHALLENGE, CRAM_DIGEST)
    assert not verify_cram_md5("tanstaaftanstaaf", CRAM_CHALLENGE, "ü" * 32)


def test_cram_md5_uppercase_digest_and_spaced_username() -> None:
    m = mech("CRAM-MD5", nonce=CRAM_NONCE, hostname=CRAM_HOST)
    m.start(None)
    done = m.respond(b64(f"tim smith {CRAM_DIGEST.upper()}"))
    assert isinstance(done, Done)
    assert (done.credentials.username, done.credentials.response) == ("tim smith", CRAM_DIGEST)


def test_cram_md5_fresh_challenges() -> None:
    first, second = (mech("CRAM-MD5").start(None) for _ in range(2))
    assert isinstance(first, Challenge) and isinstance(second, Challenge)
    assert re.fullmatch(rb"<\d+\.\d+@mx\.example\.com>", first.payload)
    assert first != second


def test_cram_md5_refuses_initial_response() -> None:
    with raises(replies.AUTH_MALFORMED):
        mech("CRAM-MD5").start(CRAM_RESPONSE_B64)


@pytest.mark.parametrize(
    "text",
    ["tim", f"tim{CRAM_DIGEST}", "tim b9", f"tim {CRAM_DIGEST}0", f" {CRAM_DIGEST}", f"t\x01 {CRAM_DIGEST}"],
)
def test_cram_md5_malformed(text: str) -> None:
    m = mech("CRAM-MD5")
    m.start(None)
    with raises(replies.AUTH_MALFORMED):
        m.respond(b64(text))


# -- XOAUTH2 ---------------------------------------------------------------------------

XOAUTH2_DONE = Done(
    SaslCredentials("XOAUTH2", "someuser@example.com", token="ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg")
)


def test_xoauth2_initial_response() -> None:
    assert mech("XOAUTH2").start(XOAUTH2_B64) == XOAUTH2_DONE


def test_xoauth2_without_initial_response() -> None:
    m = mech("XOAUTH2")
    assert m.start(None) == Challenge(b"")
    assert m.respond(XOAUTH2_B64) == XOAUTH2_DONE


@pytest.mark.parametrize(
    "text",
    [
        "user=u\x01auth=Bearer t\x01",  # one ^A at the end
        "user=u\x01auth=Basic t\x01\x01",
        "user=u\x01auth=Bearer \x01\x01",
        "auth=Bearer t\x01\x01",
        "user=u\x01\x01",
        "user=u\x01user=v\x01auth=Bearer t\x01\x01",
        "user=u\x01junk\x01auth=Bearer t\x01\x01",
    ],
)
def test_xoauth2_malformed(text: str) -> None:
    with raises(replies.AUTH_MALFORMED):
        mech("XOAUTH2").start(b64(text))


# -- SCRAM-SHA-256 ---------------------------------------------------------------------


def test_scram_rfc7677_vector() -> None:
    m = mech("SCRAM-SHA-256", nonce=SCRAM_SERVER_NONCE)
    assert m.start(b64(SCRAM_CLIENT_FIRST)) == NeedSecret("user")
    assert m.supply_secret(PENCIL) == Challenge(SCRAM_SERVER_FIRST.encode())
    assert m.respond(b64(SCRAM_CLIENT_FINAL)) == Challenge(SCRAM_SERVER_FINAL.encode())
    assert m.respond("") == Done(SaslCredentials("SCRAM-SHA-256", "user", verified=True))


def test_scram_without_initial_response() -> None:
    m = mech("SCRAM-SHA-256", nonce=SCRAM_SERVER_NONCE)
    assert m.start(None) == Challenge(b"")
    assert m.respond(b64(SCRAM_CLIENT_FIRST)) == NeedSecret("user")
    assert m.supply_secret(PENCIL) == Challenge(SCRAM_SERVER_FIRST.encode())
    assert m.respond(b64(SCRAM_CLIENT_FINAL)) == Challenge(SCRAM_SERVER_FINAL.encode())
    assert m.respond("") == Done(SaslCredentials("SCRAM-SHA-256", "user", verified=True))


def test_scram_y_flag_authzid_and_escaped_username() -> None:
    client_first = "y,a=ad=3Dmin,n=us=2Cer=3D,r=abc,x=ignored-extension"
    m, server_first = scram_until_final(client_first, PENCIL)
    assert server_first.startswith("r=abc" + SCRAM_SERVER_NONCE + ",")
    step = m.respond(b64(scram_client_final("pencil", client_first, server_first)))
    assert isinstance(step, Challenge) and step.payload.startswith(b"v=")
    assert m.respond("") == Done(SaslCredentials("SCRAM-SHA-256", "us,er=", authzid="ad=min", verified=True))


def test_scram_wrong_password() -> None:
    m, server_first = scram_until_final(SCRAM_CLIENT_FIRST, PENCIL)
    step = m.respond(b64(scram_client_final("crayon", SCRAM_CLIENT_FIRST, server_first)))
    assert step == Done(SaslCredentials("SCRAM-SHA-256", "user", verified=False))
    with pytest.raises(RuntimeError):
        m.respond("")


def test_scram_unknown_user_fails_like_wrong_password() -> None:
    m, server_first = scram_until_final(SCRAM_CLIENT_FIRST, None)
    _, again = scram_until_final(SCRAM_CLIENT_FIRST, None)
    _, other = scram_until_final("n,,n=someone-else,r=rOprNGfwEbeRWgbNEkqO", None)
    assert server_first == again != other  # a stable salt per username, as for real users
    match = re.fullmatch(r"r=rOprNGfwEbeRWgbNEkqO(.+),s=(.+),i=4096", server_first)
    assert match and match[1] == SCRAM_SERVER_NONCE and len(base64.b64decode(match[2])) == 16
    step = m.respond(b64(scram_client_final("pencil", SCRAM_CLIENT_FIRST, server_first)))
    assert step == Done(SaslCredentials("SCRAM-SHA-256", "user", verified=False))


def test_scram_random_server_nonce() -> None:
    payloads = []
    for _ in range(2):
        m = mech("SCRAM-SHA-256")
        m.start(b64(SCRAM_CLIENT_FIRST))
        step = m.supply_secret(PENCIL)
        assert isinstance(step, Challenge)
        payloads.append(step.payload)
    assert payloads[0] != payloads[1]


@pytest.mark.parametrize(
    "client_first",
    [
        "p=tls-unique,,n=user,r=abc",  # channel binding we do not offer
        "n,,m=ext,n=user,r=abc",  # mandatory extension (RFC 5802 §5.1)
        "x,,n=user,r=abc",
        "n,,r=abc,n=user",
        "n,,n=user",
        "n,,n=user,r=",
        "n,,n=,r=abc",
        "n,,n=us=2Xer,r=abc",
        "n,,n=us\x00er,r=abc",
        "n,b=x,n=user,r=abc",
        "n,,n=user,r=abc,bad",
        "n,n=user,r=abc",
        "",
    ],
)
def test_scram_malformed_client_first(client_first: str) -> None:
    m = mech("SCRAM-SHA-256")
    with raises(replies.AUTH_MALFORMED):
        m.start(b64(client_first) if client_first else "=")


FINAL_NONCE = "rOprNGfwEbeRWgbNEkqO" + SCRAM_SERVER_NONCE
GOOD_PROOF = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="


@pytest.mark.parametrize(
    "client_final",
    [
        f"c=eSws,r={FINAL_NONCE},p={GOOD_PROOF}",  # "y,," binding after "n,,"
        f"c=biws,r=rOprNGfwEbeRWgbNEkqO,p={GOOD_PROOF}",  # nonce without the server part
        f"c=biws,r={FINAL_NONCE}x,p={GOOD_PROOF}",
        f"c=biws,r={FINAL_NONCE},p=AAAA",  # proof of the wrong length
        f"c=biws,r={FINAL_NONCE},p=not base64",
        f"c=biws,r={FINAL_NONCE}",
        f"r={FINAL_NONCE},c=biws,p={GOOD_PROOF}",
        f"c=biws,r={FINAL_NONCE},junk,p={GOOD_PROOF}",
        f"p={GOOD_PROOF}",
        "",
    ],
)
def test_scram_malformed_client_final(client_final: str) -> None:
    m, _ = scram_until_final(SCRAM_CLIENT_FIRST, PENCIL)
    with raises(replies.AUTH_MALFORMED):
        m.respond(b64(client_final))


def test_scram_client_final_extension_is_ignored() -> None:
    m, _ = scram_until_final(SCRAM_CLIENT_FIRST, PENCIL)
    # The extension is part of the signed AuthMessage, so the RFC proof no longer holds.
    step = m.respond(b64(f"c=biws,r={FINAL_NONCE},x=1,p={GOOD_PROOF}"))
    assert step == Done(SaslCredentials("SCRAM-SHA-256", "user", verified=False))


def test_scram_nonempty_response_after_server_final() -> None:
    m, _ = scram_until_final(SCRAM_CLIENT_FIRST, PENCIL)
    m.respond(b64(SCRAM_CLIENT_FINAL))
    with raises(replies.AUTH_MALFORMED):
        m.respond(b64("v=whatever"))


def test_scram_secret_from_password() -> None:
    secret = scram_secret_from_password("pencil")
    assert len(secret.salt) == 16 and secret.iterations == 4096
    assert scram_secret_from_password("pencil", secret.salt) == secret
    with pytest.raises(ValueError):
        ScramSecret(b"", 4096, bytes(32), bytes(32))
    with pytest.raises(ValueError):
        ScramSecret(b"salt", 0, bytes(32), bytes(32))
    with pytest.raises(ValueError):
        ScramSecret(b"salt", 4096, bytes(20), bytes(32))


# -- every step: cancel, bad base64, lifecycle -----------------------------------------

# For each mechanism, started without an initial response, the happy path's responses.
HAPPY: dict[str, tuple[str, ...]] = {
    "PLAIN": (b64("\0alice\0s3cret"),),
    "LOGIN": (b64("alice"), b64("s3cret")),
    "CRAM-MD5": (CRAM_RESPONSE_B64,),
    "XOAUTH2": (XOAUTH2_B64,),
    "SCRAM-SHA-256": (b64(SCRAM_CLIENT_FIRST), b64(SCRAM_CLIENT_FINAL), ""),
}
STEPS = [(name, k) for name, lines in HAPPY.items() for k in range(len(lines))]


def happy_mech(name: str) -> Mechanism:
    nonce = {"CRAM-MD5": CRAM_NONCE, "SCRAM-SHA-256": SCRAM_SERVER_NONCE}.get(name)
    return mech(name, nonce=nonce, hostname=CRAM_HOST)


def drive(m: Mechanism, lines: tuple[str, ...]) -> Step:
    """Start without initial response, then send ``lines``, supplying SCRAM's secret."""
    step = m.start(None)
    for line in lines:
        assert isinstance(step, Challenge)
        step = m.respond(line)
        if isinstance(step, NeedSecret):
            step = m.supply_secret(PENCIL)
    return step


def test_happy_table_completes() -> None:
    for name, lines in HAPPY.items():
        step = drive(happy_mech(name), lines)
        assert isinstance(step, Done) and step.credentials.mechanism == name


@pytest.mark.parametrize(("name", "k"), STEPS)
@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("*", replies.AUTH_CANCELLED),
        ("not base64!", replies.AUTH_MALFORMED),
        ("YQ", replies.AUTH_MALFORMED),
        ("=", replies.AUTH_MALFORMED),
        ("é", replies.AUTH_MALFORMED),
    ],
)
def test_every_step_cancel_and_bad_base64(name: str, k: int, line: str, reply: replies.Reply) -> None:
    m = happy_mech(name)
    drive(m, HAPPY[name][:k])
    with raises(reply):
        m.respond(line)
    with pytest.raises(RuntimeError):  # the exchange is over
        m.respond(HAPPY[name][k])


@pytest.mark.parametrize("name", MECHANISMS)
@pytest.mark.parametrize(
    ("initial", "reply"),
    [("*", replies.AUTH_CANCELLED), ("not base64!", replies.AUTH_MALFORMED), ("YQ", replies.AUTH_MALFORMED)],
)
def test_initial_response_cancel_and_bad_base64(name: str, initial: str, reply: replies.Reply) -> None:
    with raises(reply):
        happy_mech(name).start(initial)


@pytest.mark.parametrize("name", MECHANISMS)
def test_lifecycle_misuse_is_a_bug(name: str) -> None:
    m = happy_mech(name)
    with pytest.raises(RuntimeError):
        m.respond(HAPPY[name][0])
    with pytest.raises(RuntimeError):
        m.supply_secret(PENCIL)
    m.start(None)
    with pytest.raises(RuntimeError):
        m.start(None)
    assert isinstance(drive(happy_mech(name), HAPPY[name]), Done)


def test_scram_respond_while_secret_pending_is_a_bug() -> None:
    m = mech("SCRAM-SHA-256")
    m.start(b64(SCRAM_CLIENT_FIRST))
    with pytest.raises(RuntimeError):
        m.respond("")
    m.supply_secret(None)
    with pytest.raises(RuntimeError):
        m.supply_secret(None)


def test_new_mechanism() -> None:
    for name in MECHANISMS:
        assert mech(name).name == name
    assert mech("scram-sha-256").name == "SCRAM-SHA-256"
    with pytest.raises(KeyError):
        mech("GSSAPI")
    with pytest.raises(ValueError):
        mech("SCRAM-SHA-256", nonce="has,comma")


# -- property: no client input escapes as anything but a Step or LocalProtocolError ----

lines = st.one_of(
    st.text(max_size=60),
    st.binary(max_size=60).map(b64),
    st.text(max_size=60).map(b64),
    st.lists(
        st.sampled_from(
            [
                "n",
                "y",
                "p=x",
                "",
                "a=u",
                "n=user",
                "n=u=2C",
                "r=abc",
                "m=1",
                "c=biws",
                "c=eSws",
                f"r={FINAL_NONCE}",
                f"p={GOOD_PROOF}",
                "p=AAAA",
                "x=1",
                "=",
                "user=u\x01auth=Bearer t\x01\x01",
                "\0",
                "tim",
                CRAM_DIGEST,
                "é",
            ]
        ),
        max_size=6,
    ).map(lambda parts: b64(",".join(parts))),
)


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(MECHANISMS),
    initial=st.one_of(st.none(), st.just("="), lines),
    responses=st.lists(lines, max_size=5),
    known=st.booleans(),
)
def test_random_client_input(name: str, initial: str | None, responses: list[str], known: bool) -> None:
    m = happy_mech(name)
    try:
        step = m.start(initial)
        for line in responses:
            if isinstance(step, NeedSecret):
                step = m.supply_secret(PENCIL if known else None)
            assert isinstance(step, Challenge | NeedSecret | Done)
            if isinstance(step, Done):
                break
            step = m.respond(line)
        assert isinstance(step, Challenge | NeedSecret | Done)
    except LocalProtocolError as exc:
        assert exc.reply in (replies.AUTH_CANCELLED, replies.AUTH_MALFORMED)


@settings(max_examples=200, deadline=None)
@given(client_final=lines, known=st.booleans())
def test_random_scram_client_final(client_final: str, known: bool) -> None:
    m, _ = scram_until_final(SCRAM_CLIENT_FIRST, PENCIL if known else None)
    try:
        step = m.respond(client_final)
    except LocalProtocolError as exc:
        assert exc.reply in (replies.AUTH_CANCELLED, replies.AUTH_MALFORMED)
    else:
        assert step == Done(SaslCredentials("SCRAM-SHA-256", "user", verified=False)) or (
            known and client_final == b64(SCRAM_CLIENT_FINAL)
        )
