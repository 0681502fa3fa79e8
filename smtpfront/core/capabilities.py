"""What an EHLO/LHLO reply offers (RFC 5321 §4.1.1.1): the extension keywords for a session.

It depends on the listener's features and limits and on the session's facts: STARTTLS only
before TLS, AUTH only when not authenticated yet and (unless the listener allows it) over TLS,
REQUIRETLS only over TLS, XCLIENT/XFORWARD only for trusted clients (``features``).
"""

from __future__ import annotations

from . import commands as C
from .options import Features, Limits

__all__ = ["ehlo_capabilities"]


def ehlo_capabilities(features: Features, limits: Limits, *, tls_active: bool, authenticated: bool,
                      auth_requires_tls: bool) -> list[str]:
    """The keywords, in the order the reply lists them."""
    f, lim = features, limits
    caps: list[str] = []
    if f.pipelining:
        caps.append("PIPELINING")
    if f.size:
        caps.append(f"SIZE {lim.max_message_size}")
    if f.eightbitmime:
        caps.append("8BITMIME")
    if f.smtputf8:
        caps.append("SMTPUTF8")
    if f.enhancedstatuscodes:
        caps.append("ENHANCEDSTATUSCODES")
    if f.chunking:
        caps.append("CHUNKING")
        if f.binarymime:
            caps.append("BINARYMIME")
    if f.dsn:
        caps.append("DSN")
    if f.starttls and not tls_active:
        caps.append("STARTTLS")
    if f.auth_mechanisms and not authenticated and (tls_active or not auth_requires_tls):
        caps.append("AUTH " + " ".join(f.auth_mechanisms))
    if f.requiretls and tls_active:
        caps.append("REQUIRETLS")
    caps.append(f"LIMITS RCPTMAX={lim.max_recipients}")  # RFC 9422
    if f.xclient:
        caps.append("XCLIENT " + " ".join(sorted(C.XCLIENT_ATTRIBUTES)))
    if f.xforward:
        caps.append("XFORWARD " + " ".join(sorted(C.XFORWARD_ATTRIBUTES)))
    return caps
