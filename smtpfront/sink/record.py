"""The queue record: how one accepted message is stored in a Redis stream entry.

One stream entry per message. Format version 1 (the ``v`` field is ``"1"``), fields:

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

Format version 2 (``v`` is ``"2"``) is a *large* message (body octets past the sink's
``large_threshold``, or sent early because the worker's memory budget was full): the same
``envelope``, and instead of ``body`` a reference to it:

``body_key``
    the prefix of the chunk keys: the body is the concatenation of the strings
    ``<body_key>:0`` … ``<body_key>:<body_chunks - 1>`` (:func:`chunk_keys`), written
    before the entry and in the same hash slot as its stream.
``body_chunks``
    the number of chunk keys (decimal).
``body_size``
    the body's length in octets, trace included (decimal).

Small messages stay version 1. Large ones are version 2, not version 1 with optional
fields, because they lack ``body``: a version-1 reader that ignored unknown fields would
hand on an empty body, while every reader of this format refuses a version it does not
know (it may come from a newer server). New optional envelope keys do not change the version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ..core.events import Address
from .base import Envelope

__all__ = [
    "FORMAT_VERSION", "LARGE_VERSION", "BodyRef", "RecordError", "chunk_keys", "decode_entry", "decode_record",
    "envelope_fields",
]

FORMAT_VERSION = b"1"
LARGE_VERSION = b"2"


class RecordError(ValueError):
    """A stream entry that is not a record of a known format version."""


@dataclass(frozen=True, slots=True)
class BodyRef:
    """Where a large (version 2) record's body is: ``chunks`` keys under ``key``, ``size`` octets."""

    key: bytes
    chunks: int
    size: int

    def chunk_keys(self) -> list[bytes]:
        return chunk_keys(self.key, self.chunks)


def chunk_keys(body_key: bytes, chunks: int) -> list[bytes]:
    """The chunk keys of a large body, in order: ``<body_key>:0`` … ``<body_key>:<chunks-1>``."""
    return [b"%b:%d" % (body_key, n) for n in range(chunks)]


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


def envelope_fields(envelope: Envelope, body: BodyRef | None = None) -> list[tuple[bytes, bytes]]:
    """The entry's fields except an inline body (which the sink streams as parts).

    With ``body``, the fields of a large (version 2) record, the reference included.
    """
    if body is None:
        return [(b"v", FORMAT_VERSION), (b"envelope", envelope_json(envelope))]
    return [(b"v", LARGE_VERSION), (b"envelope", envelope_json(envelope)), (b"body_key", body.key),
            (b"body_chunks", b"%d" % body.chunks), (b"body_size", b"%d" % body.size)]


def decode_entry(fields: dict[bytes, bytes]) -> tuple[dict[str, Any], bytes | BodyRef]:
    """A stream entry's fields → (envelope dict, the body or, version 2, where it is).

    Raises RecordError for an unknown version or a malformed record.
    """
    version = fields.get(b"v")
    if version not in (FORMAT_VERSION, LARGE_VERSION):
        raise RecordError(f"unknown record format version {version!r}")
    try:
        envelope = orjson.loads(fields[b"envelope"])
        if version == FORMAT_VERSION:
            body: bytes | BodyRef = fields[b"body"]
        else:
            key, chunks, size = fields[b"body_key"], int(fields[b"body_chunks"]), int(fields[b"body_size"])
            if not key or chunks < 1 or size < 0:
                raise ValueError(f"bad body reference {key!r}, {chunks} chunks, {size} octets")
            body = BodyRef(key, chunks, size)
    except KeyError as exc:
        raise RecordError(f"malformed record: no {exc.args[0].decode(errors='replace')} field") from None
    except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
        raise RecordError(f"malformed record: {exc}") from None
    if not isinstance(envelope, dict):
        raise RecordError("malformed record: envelope is not an object")
    return envelope, body


def decode_record(fields: dict[bytes, bytes]) -> tuple[dict[str, Any], bytes]:
    """A version-1 entry's fields → (envelope dict, body). Raises RecordError otherwise
    (a large record's body is not in the entry: use :func:`decode_entry`)."""
    envelope, body = decode_entry(fields)
    if isinstance(body, BodyRef):
        raise RecordError("large record: its body is in chunk keys (decode_entry, or the consumer, reads it)")
    return envelope, body
