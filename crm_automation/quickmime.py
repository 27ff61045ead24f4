"""The common shapes of mail read without the stdlib's feed parser, exactly as it reads them.

Why (issue #13): the feed parser and its ``Message`` were most of the cost
of reading a message. For a multipart message it compiles a new regular
expression for every boundary, and every header lookup or parameter
parse goes through several layers. Most customer mail has one of two
shapes: one text part, or one level of parts (``multipart/alternative``
with a text and an HTML part, ``multipart/mixed`` with attachments).
:func:`read` reads those shapes in one pass over the bytes and gives what
:mod:`crm_automation.parse` needs: the top-level headers, as
``Message.raw_items`` has them, and the part that gives the text, chosen as
``parse.body_text`` chooses it.

It follows the compat32 feed parser, not the RFCs: where the two differ
(a boundary followed by another, ``charset`` given twice), the answer must
be the stdlib's, because the log must read the same whichever way a
message is parsed. Whatever it is not sure of returns None, and the caller
uses the stdlib. That includes nested parts and attached messages, an mbox
``From`` line, header lines the feed parser calls defects, mixed or lone
CR/LF line ends, non-ASCII or RFC 2231 parameters, backslashes or angle
brackets in parameters, uuencode, and base64 that is not clean.
``tests/unit/test_parse_fast_paths.py`` compares the two readings on the
corpus and on thousands of generated messages.
"""

from __future__ import annotations

import base64
import binascii
import quopri
from dataclasses import dataclass

__all__ = ["QuickReading", "read"]

_UUENCODE = frozenset({"x-uuencode", "uuencode", "uue", "x-uue"})

Headers = dict[str, list[str]]


@dataclass(frozen=True, slots=True)
class QuickReading:
    """A message read without the feed parser.

    ``headers``: the top-level headers (lower-case names, raw values).
    ``parts``: how many parts the stdlib would count (the message and its
    parts), which ``parse`` holds to ``max_parts``. ``body``: the
    transfer-decoded bytes of the part that gives the text, or None when no
    part does; ``ctype`` and ``charset`` are that part's (``charset`` as
    ``Message.get_content_charset`` gives it). ``html``: the text is to be
    converted from HTML.
    """

    headers: Headers
    parts: int
    body: bytes | None
    ctype: str = "text/plain"
    charset: str | None = None
    html: bool = False


def read(raw: bytes) -> QuickReading | None:
    """Read ``raw`` if it has one of the common shapes; None to leave it to the stdlib."""
    first_end = raw.find(b"\n")
    crlf = first_end > 0 and raw[first_end - 1] == 13
    sep = b"\r\n" if crlf else b"\n"
    end = raw.find(sep + sep)
    if end <= 0:
        return None
    head = raw[:end]
    if (head.count(b"\r") != head.count(b"\n")) if crlf else (b"\r" in head):
        return None
    headers = _headers(head.decode("ascii", "surrogateescape").split("\r\n" if crlf else "\n"), crlf)
    if headers is None:
        return None
    ctype = _content_type(headers)
    if ctype is None:
        return None
    body = raw[end + 2 * len(sep):]
    kind, params = ctype
    if kind.startswith("multipart/"):
        return None if kind == "multipart/digest" else _multipart(headers, body, sep, params)
    if kind not in ("text/plain", "text/html"):
        return None
    data = _payload(headers, body)
    if data is None:
        return None
    # body_text: an HTML body is converted, unless it is an attachment (then its text is taken as it is).
    html = kind == "text/html"
    disposition = _disposition(headers) if html else ""
    if disposition is None:
        return None
    return QuickReading(headers, 1, data, kind, _charset(params), html and disposition != "attachment")


def _headers(lines: list[str], crlf: bool) -> Headers | None:
    """Header lines (without their ends) as compat32 stores them: name, and value with its folds."""
    headers: Headers = {}
    join = "\r\n" if crlf else "\n"
    name = ""
    value: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if not name:
                return None  # a continuation before any header: a defect
            value.append(line)
            continue
        if name:
            headers.setdefault(name.lower(), []).append(join.join(value))
        name, colon, rest = line.partition(":")
        # The feed parser's header name: printable ASCII but space (and colon), at least one.
        if not (colon and name and name.isascii() and name.isprintable() and " " not in name):
            return None  # "From ", ": x", a line with no colon: defects the stdlib handles its way
        value = [rest.lstrip(" \t")]
    if name:
        headers.setdefault(name.lower(), []).append(join.join(value))
    return headers


def _content_type(headers: Headers) -> tuple[str, dict[str, str]] | None:
    """``(get_content_type(), {param: get_param(param)})``, or None when a parameter is out of the plain shapes."""
    values = headers.get("content-type")
    if values is None:
        return "text/plain", {}
    value = values[0]
    if not value.isascii() or "\\" in value or "<" in value or ">" in value:
        return None
    pieces = value.split(";")
    if '"' in pieces[0] or "=" in pieces[0]:
        return None  # the feed parser would read a parameter (or a quoted ";") in the type itself
    kind = pieces[0].strip().lower()
    if kind.count("/") != 1:
        kind = "text/plain"  # RFC 2045: an invalid type is text/plain
    params: dict[str, str] = {}
    for piece in pieces[1:]:
        name, eq, val = piece.partition("=")
        name = name.strip().lower() if eq else piece.strip().lower()
        val = val.strip()
        quotes = val.count('"')
        if "*" in name or quotes not in (0, 2) or (quotes == 2 and not (val[0] == val[-1] == '"')) \
                or piece.count('"') != quotes:
            return None  # RFC 2231, or quotes the feed parser splits its own way
        params.setdefault(name, val[1:-1] if quotes else val)
    return kind, params


def _charset(params: dict[str, str]) -> str | None:
    charset = params.get("charset")
    return None if charset is None else charset.lower()


def _disposition(headers: Headers) -> str | None:
    values = headers.get("content-disposition")
    if not values:
        return ""
    if not values[0].isascii():
        return None
    return values[0].split(";", 1)[0].strip().lower()


def _payload(headers: Headers, body: bytes) -> bytes | None:
    """``get_payload(decode=True)`` of a one-part body, or None when the stdlib should decode it."""
    values = headers.get("content-transfer-encoding")
    if values is None:
        return body
    if not values[0].isascii():
        return None
    encoding = values[0].lower()
    if encoding == "quoted-printable":
        return quopri.decodestring(body)
    if encoding == "base64":
        try:  # strict: padding and alphabet; the stdlib's lenient retries are left to it
            return base64.b64decode(b"".join(body.splitlines()), validate=True)
        except binascii.Error:
            return None
    if encoding in _UUENCODE:
        return None
    return body


def _multipart(headers: Headers, body: bytes, sep: bytes, params: dict[str, str]) -> QuickReading | None:
    """One level of parts: split on the boundary as the feed parser does, then pick the text as body_text does."""
    boundary = params.get("boundary")
    if not boundary or not (boundary := boundary.rstrip()):
        return None
    if (body.count(b"\r") != body.count(b"\n") or body.count(b"\r\n") != body.count(b"\n")) if sep == b"\r\n" \
            else b"\r" in body:
        return None
    parts = _split_parts(body.split(sep), b"--" + boundary.encode("ascii"))
    if parts is None:
        return None
    return _text_part(headers, parts, sep)


def _split_parts(lines: list[bytes], dash: bytes) -> list[list[bytes]] | None:
    """The lines of each part between ``dash`` boundaries, as the feed parser splits them; None on a defect.

    Kept apart from choosing the text (:func:`_text_part`): this is where the
    compat32 feed parser's quirks live (issue #13). It skips a boundary right
    after a boundary, a close boundary before any part ends nothing, and a
    body without a close boundary is a defect; each is left to the stdlib. A
    last "" after the final line end is never read: the close boundary comes first.
    """
    parts: list[list[bytes]] = []
    current: list[bytes] | None = None  # None: still in the preamble
    after_boundary = False
    for line in lines:
        if line.startswith(dash):
            rest = line[len(dash):]
            close = rest[:2] == b"--"
            if not (rest[2:] if close else rest).strip(b" \t"):
                if after_boundary or (close and current is None):
                    return None  # the feed parser skips a boundary after a boundary; a close first ends nothing
                if current is not None:
                    parts.append(current)
                if close:
                    return parts
                current, after_boundary = [], True
                continue
        after_boundary = False
        if current is not None:
            current.append(line)
    return None  # no close boundary (or no part at all): a defect, left to the stdlib


def _text_part(headers: Headers, parts: list[list[bytes]], sep: bytes) -> QuickReading | None:
    """The reading of a one-level multipart: the first text/plain part that is not an attachment, else text/html.

    This is ``parse.body_text``'s choice, made on the split lines; a nested
    part, an attached message or a header out of the plain shapes leaves the
    whole message to the stdlib (None).
    """
    plain: tuple[Headers, bytes, dict[str, str]] | None = None
    html: tuple[Headers, bytes, dict[str, str]] | None = None
    for part in parts:
        try:
            blank = part.index(b"")
        except ValueError:
            blank = len(part)  # headers up to the boundary, and no body
        part_headers = _headers([x.decode("ascii", "surrogateescape") for x in part[:blank]], sep == b"\r\n")
        if part_headers is None or (ctype := _content_type(part_headers)) is None:
            return None
        kind, part_params = ctype
        if kind.startswith(("multipart/", "message/")):
            return None  # nested: the stdlib
        disposition = _disposition(part_headers)
        if disposition is None:
            return None
        if disposition == "attachment" or plain is not None:
            continue
        payload = sep.join(part[blank + 1:])  # the line end before the boundary belongs to the boundary
        if kind == "text/plain":
            plain = (part_headers, payload, part_params)
        elif kind == "text/html" and html is None:
            html = (part_headers, payload, part_params)
    chosen = plain or html
    if chosen is None:
        return QuickReading(headers, 1 + len(parts), None)
    part_headers, payload, part_params = chosen
    data = _payload(part_headers, payload)
    if data is None:
        return None
    kind = "text/plain" if chosen is plain else "text/html"
    return QuickReading(headers, 1 + len(parts), data, kind, _charset(part_params), chosen is html)
