"""A minimal IPP/1.1 codec and client: how the CUPS driver reads a cupsd.

Only what the driver needs: encode a request, POST it to a cupsd over HTTP, decode the
answer (or a job control file `c#####` of a cupsd's spool, which is the same encoding)
into groups of attributes with plain Python values. Reading through IPP gives exact,
typed values, where `lpoptions` output cannot be parsed back unambiguously (it does not
escape quotes inside values). Writes go through `lpadmin`, never through here.

RFC 8010 section 3 is the encoding: a version, an operation or status code, a request
id, then attribute groups (a delimiter tag each) of (value tag, name, value) triples
ending with the end-of-attributes tag; an attribute's further values have an empty name;
collections nest between begCollection and endCollection.
"""

from __future__ import annotations

import http.client
import struct
from dataclasses import dataclass, field
from typing import Any

# Delimiter tags.
OPERATION, JOB, END, PRINTER, UNSUPPORTED_GROUP = 0x01, 0x02, 0x03, 0x04, 0x05
# Value tags.
UNSUPPORTED, UNKNOWN, NO_VALUE = 0x10, 0x12, 0x13
INTEGER, BOOLEAN, ENUM = 0x21, 0x22, 0x23
OCTETS, DATETIME, RESOLUTION, RANGE = 0x30, 0x31, 0x32, 0x33
BEG_COLLECTION, TEXT_LANG, NAME_LANG, END_COLLECTION = 0x34, 0x35, 0x36, 0x37
TEXT, NAME, KEYWORD, URI, URI_SCHEME = 0x41, 0x42, 0x44, 0x45, 0x46
CHARSET, LANGUAGE, MIME, MEMBER_NAME = 0x47, 0x48, 0x49, 0x4A

# Operations.
GET_PRINTER_ATTRIBUTES = 0x000B
CUPS_GET_DEFAULT = 0x4001
CUPS_GET_PRINTERS = 0x4002
CUPS_GET_CLASSES = 0x4005

STATUS_NOT_FOUND = 0x0406

_STRINGS = {TEXT, NAME, KEYWORD, URI, URI_SCHEME, CHARSET, LANGUAGE, MIME, MEMBER_NAME}


class IPPError(Exception):
    """An IPP exchange failed: no answer, not IPP, or a malformed message."""


@dataclass(frozen=True)
class Resolution:
    x: int
    y: int
    units: int  # 3: dots per inch, 4: dots per centimetre

    def __str__(self) -> str:
        unit = "dpi" if self.units == 3 else "dpcm"
        return f"{self.x}{unit}" if self.x == self.y else f"{self.x}x{self.y}{unit}"


@dataclass
class Message:
    """A decoded IPP message: its code (operation or status) and attribute groups."""

    version: tuple[int, int]
    code: int
    request_id: int
    groups: list[tuple[int, dict[str, list[Any]]]] = field(default_factory=list)

    def group(self, tag: int) -> list[dict[str, list[Any]]]:
        return [attrs for t, attrs in self.groups if t == tag]


# ----- encoding ---------------------------------------------------------------------------
def _attr(tag: int, name: str, values: list[Any]) -> bytes:
    out = b""
    for i, v in enumerate(values):
        n = name.encode() if i == 0 else b""
        if tag in (INTEGER, ENUM):
            raw = struct.pack(">i", v)
        elif tag == BOOLEAN:
            raw = b"\x01" if v else b"\x00"
        else:
            raw = str(v).encode()
        out += struct.pack(">bH", tag, len(n)) + n + struct.pack(">H", len(raw)) + raw
    return out


def encode_request(operation: int, attrs: list[tuple[int, str, list[Any]]],
                   request_id: int = 1) -> bytes:
    """An IPP/1.1 request whose operation group holds `attrs` after charset/language."""
    body = struct.pack(">bbhi", 1, 1, operation, request_id) + bytes([OPERATION])
    body += _attr(CHARSET, "attributes-charset", ["utf-8"])
    body += _attr(LANGUAGE, "attributes-natural-language", ["en"])
    for tag, name, values in attrs:
        body += _attr(tag, name, values)
    return body + bytes([END])


# ----- decoding ---------------------------------------------------------------------------
def _value(tag: int, raw: bytes) -> Any:
    if tag in (INTEGER, ENUM):
        return struct.unpack(">i", raw)[0] if len(raw) == 4 else None
    if tag == BOOLEAN:
        return raw != b"\x00"
    if tag == RESOLUTION and len(raw) == 9:
        x, y, units = struct.unpack(">iib", raw)
        return Resolution(x, y, units)
    if tag == RANGE and len(raw) == 8:
        return struct.unpack(">ii", raw)
    if tag in (TEXT_LANG, NAME_LANG) and len(raw) >= 4:
        (n,) = struct.unpack(">H", raw[:2])
        (m,) = struct.unpack(">H", raw[2 + n : 4 + n])
        return raw[4 + n : 4 + n + m].decode("utf-8", "replace")
    if tag in _STRINGS:
        return raw.decode("utf-8", "replace")
    if tag in (NO_VALUE, UNKNOWN, UNSUPPORTED):
        return None
    return raw  # octetString, dateTime and anything newer: raw bytes


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise IPPError(f"truncated IPP message (wanted {n} bytes at {self.pos})")
        raw = self.data[self.pos : self.pos + n]
        self.pos += n
        return raw

    def triple(self) -> tuple[int, str, bytes]:
        tag = self.take(1)[0]
        (n,) = struct.unpack(">H", self.take(2))
        name = self.take(n).decode("utf-8", "replace")
        (m,) = struct.unpack(">H", self.take(2))
        return tag, name, self.take(m)

    def collection(self) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        member = ""
        while True:
            tag, _name, raw = self.triple()
            if tag == END_COLLECTION:
                return out
            if tag == MEMBER_NAME:
                member = raw.decode("utf-8", "replace")
                out.setdefault(member, [])
            elif tag == BEG_COLLECTION:
                out.setdefault(member, []).append(self.collection())
            else:
                out.setdefault(member, []).append(_value(tag, raw))


def decode(data: bytes) -> Message:
    """Decode a whole IPP message; raises IPPError when it is not one."""
    if len(data) < 9:
        raise IPPError("not an IPP message (too short)")
    r = _Reader(data)
    major, minor, code, request_id = struct.unpack(">bbhi", r.take(8))
    msg = Message((major, minor), code, request_id)
    current: dict[str, list[Any]] | None = None
    last = ""
    while True:
        if r.pos >= len(data):
            raise IPPError("IPP message without end-of-attributes tag")
        tag = data[r.pos]
        if tag <= 0x0F:  # a delimiter
            r.pos += 1
            if tag == END:
                return msg
            current = {}
            msg.groups.append((tag, current))
            continue
        if current is None:
            raise IPPError("IPP attribute outside any group")
        tag, name, raw = r.triple()
        if name:
            last = name
            current.setdefault(last, [])
        value = r.collection() if tag == BEG_COLLECTION else _value(tag, raw)
        current.setdefault(last, []).append(value)


# ----- the client -------------------------------------------------------------------------
def request(host: str, port: int, operation: int, attrs: list[tuple[int, str, list[Any]]],
            path: str = "/", timeout: float = 5.0) -> Message:
    """POST one IPP request to a cupsd; returns the decoded answer (any status)."""
    body = encode_request(operation, attrs)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/ipp"})
        resp = conn.getresponse()
        data = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise IPPError(f"no IPP answer from {host}:{port}: {exc}") from None
    finally:
        conn.close()
    if resp.status != 200:
        raise IPPError(f"{host}:{port} answered HTTP {resp.status} to an IPP request")
    return decode(data)


def requesting(*names: str) -> tuple[int, str, list[Any]]:
    return (KEYWORD, "requested-attributes", list(names))


def user(name: str = "root") -> tuple[int, str, list[Any]]:
    return (NAME, "requesting-user-name", [name])
