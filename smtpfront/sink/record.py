"""The queue record: how one accepted message is stored in a Redis stream entry.

Format version 1 (the ``v`` field). One stream entry per message, fields:

``v``
    ``"1"``.
``envelope``
    orjson object: ``id`` (this server's transaction id), ``mail_from`` (string, ``""``
    for the null sender), ``mail_params`` (``size``, ``body``, ``smtputf8``, ``ret``,
    ``envid``, ``auth``, ``requiretls``), ``rcpt_to`` (list of ``{"address", "notify",
    "orcpt"}``), ``client`` (``address``, ``port``, ``name``), ``helo``, ``protocol``
    (RFC 3848 keyword base), ``tls`` (version, cipher, sni, peer facts) or null, ``user``
    (authenticated name) or null, ``proxy`` (PROXY header facts) or null,
    ``received_at`` (float seconds since the epoch), ``size`` (body octets, trace not
    counted).
``body``
    the message as received (dot-unstuffed, CRLF line endings) with this server's
    ``Received:`` trace field (RFC 5321 §4.4) prepended.

A consumer must refuse a record whose ``v`` it does not know (it may come from a newer
server); new optional envelope keys do not change the version.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..core.events import Address
from .base import Envelope

__all__ = ["FORMAT_VERSION", "envelope_fields", "decode_record", "RecordError"]

FORMAT_VERSION = b"1"


class RecordError(ValueError):
    """A stream entry that is not a record of a known format version."""


def _address(address: Address) -> str:
    return "" if address.is_null else str(address)


def envelope_json(envelope: Envelope) -> bytes:
    """The ``envelope`` field: the transaction facts as one orjson object."""
    params = envelope.mail_params
    return orjson.dumps({
        "id": envelope.id,
        "mail_from": _address(envelope.mail_from),
        "mail_params": {
            "size": params.size, "body": params.body, "smtputf8": params.smtputf8, "ret": params.ret,
            "envid": params.envid, "auth": params.auth, "requiretls": params.requiretls,
        },
        "rcpt_to": [
            {"address": _address(r.address), "notify": list(r.params.notify) if r.params.notify else None,
             "orcpt": list(r.params.orcpt) if r.params.orcpt else None}
            for r in envelope.recipients
        ],
        "client": {"address": envelope.client_address, "port": envelope.client_port, "name": envelope.client_name},
        "helo": envelope.helo,
        "protocol": envelope.protocol,
        "tls": envelope.tls,
        "user": envelope.user,
        "proxy": envelope.proxy,
        "received_at": envelope.received_at,
        "size": envelope.size,
    })


def envelope_fields(envelope: Envelope) -> list[tuple[bytes, bytes]]:
    """The entry's fields except the body (which the sink streams as parts)."""
    return [(b"v", FORMAT_VERSION), (b"envelope", envelope_json(envelope))]


def decode_record(fields: dict[bytes, bytes]) -> tuple[dict[str, Any], bytes]:
    """A stream entry's fields → (envelope dict, body). Raises RecordError if unknown."""
    version = fields.get(b"v")
    if version != FORMAT_VERSION:
        raise RecordError(f"unknown record format version {version!r}")
    try:
        envelope = orjson.loads(fields[b"envelope"])
        body = fields[b"body"]
    except (KeyError, orjson.JSONDecodeError) as exc:
        raise RecordError(f"malformed record: {exc}") from None
    if not isinstance(envelope, dict):
        raise RecordError("malformed record: envelope is not an object")
    return envelope, body
