"""Raw message bytes to a :class:`~crm_automation.models.ParsedMessage`.

Speed decides the fetch budget (issue #4: ``email.policy.default`` costs
about 2.4 ms a message, ``compat32`` about 0.29 ms), so the message is
parsed with the stdlib's ``compat32`` policy and decoded here. The common
shapes (one text part, or one level of parts) are split by
:mod:`crm_automation.quickmime` instead, with the same result, in a
fraction of the time (issue #13). Either way:

- RFC 2047 encoded words with :func:`email.header.decode_header`; raw 8-bit
  headers (Chinese clients still send them) are tried as UTF-8, GB18030,
  Big5 and Latin-1 in that order.
- Bodies in base64 or quoted-printable. GB2312 and GBK labels are decoded as
  GB18030, their superset: mail labelled GB2312 often holds GBK characters
  (issue #4 item 3). Big5 labels are decoded as CP950, the Windows superset.
  An unknown or wrong label falls back to UTF-8, GB18030, Big5, then
  Latin-1.
- HTML-only mail is turned into text with ``html2text`` (links and images
  dropped: they are noise in an activity log).

Anything that cannot be understood raises :class:`MessageError` with the
reason; the worker quarantines it whole (SPEC §9). No other exception
escapes, whatever the bytes.
"""

from __future__ import annotations

import codecs
import email
import email.errors
import email.utils
import hashlib
import re
from datetime import UTC, datetime, timedelta
from email.header import decode_header
from email.message import Message

import html2text

from crm_automation import quickmime, reply_text
from crm_automation.errors import MessageError
from crm_automation.models import ParsedMessage

__all__ = [
    "body_text",
    "codec_for",
    "decode_bytes",
    "decode_header_value",
    "getaddresses",
    "html_to_text",
    "parse",
    "parse_with_message",
    "parseaddr",
]

DEFAULT_MAX_BYTES = 25 * 1024 * 1024

# Headers kept (decoded) in ParsedMessage.headers: what classify.py reads.
_KEPT_HEADERS = (
    "subject",
    "from",
    "to",
    "cc",
    "delivered-to",
    "return-path",
    "content-type",
    "auto-submitted",
    "x-autoreply",
    "x-autorespond",
    "x-auto-response-suppress",
    "x-auto-reply",
    "precedence",
    "x-failed-recipients",
    "list-id",
    "list-unsubscribe",
    "x-mailer",
    "user-agent",
)

# Headers of which at least one makes a byte string an email at all.
_EMAIL_HEADERS = frozenset(
    {"from", "to", "cc", "subject", "date", "message-id", "received", "mime-version", "content-type",
     "return-path", "delivered-to", "sender", "reply-to"}
)

_FALLBACK_CODECS = ("utf-8", "gb18030", "cp950")

_NOT_AN_EMAIL = "message: no email headers found (expected From, To, Subject, Date ...); not an email"

# Label -> codec for the labels that lie or that Python does not know.
_ALIASES = {
    "gb2312": "gb18030",
    "gb_2312": "gb18030",
    "gb_2312-80": "gb18030",
    "gb2312-80": "gb18030",
    "csgb2312": "gb18030",
    "euc-cn": "gb18030",
    "euccn": "gb18030",
    "x-euc-cn": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cp936": "gb18030",
    "ms936": "gb18030",
    "windows-936": "gb18030",
    "chinese": "gb18030",
    "gb18030": "gb18030",
    "big5": "cp950",
    "big-5": "cp950",
    "x-big5": "cp950",
    "csbig5": "cp950",
    "cn-big5": "cp950",
    "big5-hkscs": "big5hkscs",
    "us-ascii": "utf-8",
    "ascii": "utf-8",
    "utf8": "utf-8",
    "unicode-1-1-utf-8": "utf-8",
}

_MSGID = re.compile(r"<([^<>\s]+)>")
_MULTIPART_HEADER = re.compile(rb"(?im)^content-type:[ \t]*multipart/")
_MD_ESCAPE = re.compile(r"\\([-+#.!*_`\[\]()])")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_HTML_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.IGNORECASE)

# What the stdlib parser and decoders raise on bytes they cannot make sense of.
_PARSE_FAILURES = (
    ValueError,
    LookupError,
    TypeError,
    AttributeError,
    IndexError,
    AssertionError,
    RecursionError,
    UnicodeError,
    email.errors.MessageError,
)


def parse(
    raw: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_parts: int = 200,
    max_depth: int = 20,
) -> ParsedMessage:
    """Decode one message; raise :class:`MessageError` when it cannot be understood.

    ``max_bytes``, ``max_parts`` and ``max_depth`` bound the work done on
    hostile input (issue #4 item 8): a message over any of them is
    quarantined instead of parsed.
    """
    raw = _checked(raw, max_bytes, max_parts)
    # The common shapes without the feed parser (issue #13: most of the cost of reading a message),
    # the rest with it; both read a message the same way (see quickmime).
    try:
        quick = quickmime.read(raw)
    except _PARSE_FAILURES:  # never seen; the stdlib's reading is the reference anyway
        quick = None
    if quick is None or quick.parts > max_parts or (quick.parts > 1 and max_depth < 1):
        return _stdlib_parse(raw, max_parts, max_depth)[0]
    if not quick.headers.keys() & _EMAIL_HEADERS:
        raise MessageError(_NOT_AN_EMAIL)
    text = "" if quick.body is None else _decoded_text(quick.body, quick.charset, quick.ctype)
    return _build(raw, quick.headers, html_to_text(text) if quick.html else text)


def parse_with_message(
    raw: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_parts: int = 200,
    max_depth: int = 20,
) -> tuple[ParsedMessage, Message]:
    """Like :func:`parse`, also returning the stdlib ``Message`` (compat32).

    ``flufl.bounce`` needs a ``Message``; a caller that classifies many
    bounces can pass this one along instead of parsing twice.
    """
    return _stdlib_parse(_checked(raw, max_bytes, max_parts), max_parts, max_depth)


def _stdlib_parse(raw: bytes, max_parts: int, max_depth: int) -> tuple[ParsedMessage, Message]:
    """The message read by the stdlib's feed parser (compat32), once the bytes passed :func:`_checked`."""
    try:
        msg = email.message_from_bytes(raw)
        _check_structure(msg, max_parts=max_parts, max_depth=max_depth)
        # raw_items() keeps raw 8-bit bytes as surrogates; msg.get() would turn
        # them into U+FFFD through compat32's unknown-8bit Header.
        raw_headers: dict[str, list[str]] = {}
        for name, value in msg.raw_items():
            raw_headers.setdefault(name.lower(), []).append(value if isinstance(value, str) else str(value))
        return _build(raw, raw_headers, body_text(msg)), msg
    except MessageError:
        raise
    except _PARSE_FAILURES as exc:
        raise MessageError(f"message: cannot be parsed ({type(exc).__name__}: {exc})") from exc


def _checked(raw: bytes, max_bytes: int, max_parts: int) -> bytes:
    """The bytes, when they are bytes within the limits; else why not (whichever way they are parsed)."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise MessageError(f"message: got {type(raw).__name__}, expected bytes")
    raw = bytes(raw)
    if len(raw) > max_bytes:
        raise MessageError(f"message: {len(raw)} bytes is over the limit (expected at most {max_bytes})")
    if not raw.strip():
        raise MessageError("message: empty (expected RFC 5322 headers and a body)")
    # The stdlib parser recurses once per nesting level: refuse absurd
    # nesting before it runs instead of waiting for a RecursionError.
    rough = raw.count(b"ultipart/") + raw.count(b"ULTIPART/")
    multiparts = len(_MULTIPART_HEADER.findall(raw)) if rough > max_parts else 0
    if multiparts > max_parts:
        raise MessageError(
            f"message: {multiparts} multipart Content-Type headers, more than {max_parts} MIME parts "
            f"(limit max_parts={max_parts})"
        )
    return raw


def _check_structure(msg: Message, *, max_parts: int, max_depth: int) -> None:
    """Refuse what is not an email, or nested or split beyond the bounds."""
    keys = {k.lower() for k in msg}
    if not keys & _EMAIL_HEADERS:
        raise MessageError(_NOT_AN_EMAIL)
    parts = 0
    stack: list[tuple[Message, int]] = [(msg, 0)]
    while stack:
        part, depth = stack.pop()
        parts += 1
        if parts > max_parts:
            raise MessageError(f"message: more than {max_parts} MIME parts (limit max_parts={max_parts})")
        if depth > max_depth:
            raise MessageError(f"message: MIME nested deeper than {max_depth} levels (limit max_depth={max_depth})")
        if part.is_multipart():  # get_payload() of a leaf part reads its headers again: 3 us a message
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend((p, depth + 1) for p in payload if isinstance(p, Message))


def _build(raw: bytes, raw_headers: dict[str, list[str]], text: str) -> ParsedMessage:
    """The message from its raw headers (lower-case names, values as ``Message.raw_items``) and its text."""

    def first(name: str) -> str:
        # Decoded, so that no lone surrogate (raw 8-bit byte) reaches SQLite.
        values = raw_headers.get(name)
        return decode_header_value(values[0]) if values else ""

    raw_from = raw_headers.get("from", [""])[0]
    from_name, from_addr = parseaddr(raw_from)
    from_addr = decode_header_value(from_addr).strip().lower()
    from_name = decode_header_value(from_name).strip()
    if not from_addr and not text.strip():
        raise MessageError("message: no From address and no body text (expected at least one)")

    to_addrs: list[str] = []
    for name in ("to", "cc"):
        for _n, addr in getaddresses(raw_headers.get(name, [])):
            addr = decode_header_value(addr).strip().lower()
            if addr and addr not in to_addrs:
                to_addrs.append(addr)

    headers = {}
    for name in _KEPT_HEADERS:
        if name in raw_headers:
            headers[name] = decode_header_value(raw_headers[name][0])

    in_reply_to = _MSGID.search(first("in-reply-to"))
    return ParsedMessage(
        message_id=_message_id(raw, first("message-id")),
        from_addr=from_addr,
        from_name=from_name,
        to_addrs=tuple(to_addrs),
        subject=headers.get("subject", "").strip(),
        date=_date(first("date")),
        in_reply_to=f"<{in_reply_to.group(1)}>" if in_reply_to else None,
        references=tuple(f"<{m}>" for m in _MSGID.findall(first("references"))),
        headers=headers,
        text=text,
        reply=reply_text.extract(text),
        raw=raw,
    )


# The shapes nearly every mail client writes: ``local@domain``, ``Name <local@domain>``, ``"Name" <...>``.
# For these the stdlib's address parser (pure Python, a fifth of parsing a message, issue #13) is not
# needed: a regex gives the same answer (tests/unit/test_parse_fast_paths.py compares the two on the
# corpus and on thousands of generated headers). Anything else - comments, groups, routes, dots or
# specials in a bare name, escapes - goes to the stdlib.
_ATOM = r"""[^\s()<>@,:;."\[\]\\]+"""
_DOT_ATOM = rf"{_ATOM}(?:\.{_ATOM})*"
_ADDR_SPEC = rf"{_DOT_ATOM}@{_DOT_ATOM}"
_MAILBOX = re.compile(
    rf"""[ \t]*(?:(?P<bare>{_ADDR_SPEC})|(?:(?P<name>{_ATOM}(?:[ \t]+{_ATOM})*)|"(?P<quoted>[^"\\\r\n]*)")?"""
    rf"""[ \t]*<(?P<addr>{_ADDR_SPEC})>)[ \t]*"""
)
_LWS = re.compile(r"[ \t]+")


def _simple(m: re.Match[str]) -> tuple[str, str]:
    if m["bare"] is not None:
        return "", m["bare"]
    if m["quoted"] is not None:
        return m["quoted"], m["addr"]
    return (_LWS.sub(" ", m["name"]) if m["name"] else ""), m["addr"]


def parseaddr(value: str) -> tuple[str, str]:
    """``email.utils.parseaddr``, answered without it for the common shapes."""
    m = _MAILBOX.fullmatch(value)
    return _simple(m) if m is not None else email.utils.parseaddr(value)


def getaddresses(values: list[str]) -> list[tuple[str, str]]:
    """``email.utils.getaddresses``, answered without it when every address has a common shape."""
    joined = ", ".join(values)
    out: list[tuple[str, str]] = []
    pos, end = 0, len(joined)
    while True:
        m = _MAILBOX.match(joined, pos)
        if m is None:
            return email.utils.getaddresses(values)
        out.append(_simple(m))
        pos = m.end()
        if pos == end:
            return out
        if joined[pos] != ",":
            return email.utils.getaddresses(values)
        pos += 1


def _message_id(raw: bytes, value: str) -> str:
    """The Message-ID as ``<id>``, or a stable synthetic one from the bytes.

    The synthetic id lets the same id-less message fetched twice still be
    deduplicated (SPEC §9).
    """
    m = _MSGID.search(value)
    if m:
        return f"<{m.group(1)}>"
    bare = value.strip().strip("<>").strip()
    if bare and not re.search(r"\s", bare):
        return f"<{bare}>"
    return f"<{hashlib.sha256(raw).hexdigest()}@no-message-id.invalid>"


# The canonical RFC 5322 date nearly every client writes ("Tue, 24 Nov 2026 10:15:00 +0800"), read
# without the stdlib's general parser (3 us a message, issue #13); anything else goes to it.
_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
                                        "dec"), start=1)}
_RFC5322_DATE = re.compile(
    r"[ \t]*(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun),[ \t]*)?(\d{1,2})[ \t]+([A-Za-z]{3})[ \t]+([1-9]\d{3})[ \t]+"
    r"(\d{2}):(\d{2})(?::(\d{2}))?[ \t]+([+-])([01]\d|2[0-3])([0-5]\d)[ \t]*")


def _date(value: str) -> datetime | None:
    """Aware UTC datetime, or None; a date without a zone is taken as UTC."""
    m = _RFC5322_DATE.fullmatch(value)
    if m is not None and (month := _MONTHS.get(m[2].lower())) is not None:
        try:
            local = datetime(int(m[3]), month, int(m[1]), int(m[4]), int(m[5]), int(m[6] or 0), tzinfo=UTC)
            offset = (-1 if m[7] == "-" else 1) * (int(m[8]) * 3600 + int(m[9]) * 60)
            return local - timedelta(seconds=offset)
        except (ValueError, OverflowError):
            pass  # no such day or time: the stdlib decides
    return _stdlib_date(value)


def _stdlib_date(value: str) -> datetime | None:
    """:func:`_date` for any shape, by ``email.utils``: aware UTC, a date without a zone taken as UTC."""
    if not value.strip():
        return None
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        return dt.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def codec_for(label: str | None) -> str | None:
    """The Python codec to use for a MIME charset label, or None when unknown."""
    if not label:
        return None
    label = label.strip().strip("\"'").lower().split("*", 1)[0]
    if label in _ALIASES:
        return _ALIASES[label]
    try:
        name = codecs.lookup(label).name
    except LookupError:
        return None
    # Only text codecs: "base64", "rot13" and friends are not charsets.
    if name in {"base64", "hex", "quopri", "uu", "zlib", "bz2", "rot-13"} or name.endswith("_codec"):
        return None
    return _ALIASES.get(name, name)


def decode_bytes(data: bytes, label: str | None = None) -> str:
    """Decode body or header bytes labelled ``label``, falling back when the label lies.

    The declared codec is tried strictly first, then UTF-8, GB18030 and
    Big5 (CP950), and finally Latin-1, which never fails.
    """
    tried: list[str] = []
    first = codec_for(label)
    for name in (first, *_FALLBACK_CODECS):
        if name is None or name in tried:
            continue
        tried.append(name)
        try:
            return data.decode(name)
        except (UnicodeDecodeError, LookupError):
            continue
    return data.decode("latin-1")


def decode_header_value(value: str) -> str:
    """Decode an unfolded header: RFC 2047 words and raw 8-bit bytes, any mix."""
    if not value:
        return ""
    if "\n" not in value and "=?" not in value and value.isascii():
        return value  # most values: nothing to unfold or decode (9 a message, issue #13)
    value = _FOLD.sub("", value)
    try:
        data = value.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        data = None
    if data is not None and not data.isascii():
        value = decode_bytes(data)
    elif data is None:
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if "=?" not in value:
        return value
    try:
        parts = decode_header(value)
    except (email.errors.HeaderParseError, ValueError, LookupError, UnicodeError):
        return value
    out: list[str] = []
    for part, charset in parts:
        if isinstance(part, str):
            out.append(part)
        elif charset is None:
            out.append(part.decode("raw-unicode-escape", "replace"))
        else:
            out.append(decode_bytes(part, charset))
    return "".join(out)


def body_text(msg: Message) -> str:
    """The message's readable text: the first inline text/plain part, else HTML as text.

    Parts inside an attached ``message/rfc822`` or ``message/global`` (a
    bounce's returned original, a forwarded mail) are not the sender's
    words and are skipped.
    """
    plain, html = _find_text_parts(msg)
    if plain is not None:
        return _part_text(plain)
    if html is not None:
        return html_to_text(_part_text(html))
    if not msg.is_multipart() and msg.get_content_maintype() in {"text", ""}:
        return _part_text(msg)
    return ""


# An attached message: its text is someone else's. ``message/global`` is an internationalized one (RFC 6532
# §3.7: UTF-8 headers), which a reply may forward and a bounce returns (issue #17).
_ATTACHED_MESSAGES = frozenset({"message/rfc822", "message/global"})


def _find_text_parts(msg: Message) -> tuple[Message | None, Message | None]:
    plain: Message | None = None
    html: Message | None = None
    stack = [msg]
    while stack:
        part = stack.pop()
        if part.is_multipart():
            if part.get_content_type() in _ATTACHED_MESSAGES and part is not msg:
                continue
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend(reversed([p for p in payload if isinstance(p, Message)]))
            continue
        # str(): a value with raw 8-bit bytes (a Chinese file name) comes back as a Header object.
        disposition = str(part.get("content-disposition") or "").split(";", 1)[0].strip().lower()
        if disposition == "attachment":
            continue
        ctype = part.get_content_type()
        if ctype == "text/plain" and plain is None:
            plain = part
            break
        if ctype == "text/html" and html is None:
            html = part
    return plain, html


def _part_text(part: Message) -> str:
    data = part.get_payload(decode=True)
    if data is None:
        payload = part.get_payload()
        return payload if isinstance(payload, str) else ""
    if not isinstance(data, bytes):
        return str(data)
    return _decoded_text(data, part.get_content_charset(), part.get_content_type())


def _decoded_text(data: bytes, label: str | None, ctype: str) -> str:
    """A part's transfer-decoded bytes as text: its charset label, else (HTML) its meta tag, else guessed."""
    if label is None and ctype == "text/html":
        m = _HTML_CHARSET.search(data[:2048])
        label = m.group(1).decode("ascii") if m else None
    return decode_bytes(data, label).replace("\r\n", "\n").replace("\r", "\n")


def html_to_text(html: str) -> str:
    """HTML as readable text: blockquotes become ``>`` lines, links and images are dropped."""
    converter = html2text.HTML2Text()
    converter.ignore_links = True
    converter.ignore_images = True
    converter.ignore_emphasis = True
    converter.ignore_tables = True
    converter.body_width = 0
    converter.unicode_snob = True
    text = converter.handle(html)
    # html2text escapes Markdown ("\\-" for a QQ divider); we want plain text.
    return _MD_ESCAPE.sub(r"\1", text).replace("\xa0", " ").strip()


def content_digest(msg: ParsedMessage) -> str:
    """A digest of what a message says: sender, subject, date and text (SHA-256, hex).

    Why not the raw bytes: the same message delivered twice (CC and BCC, or
    in two folders) differs in its ``Received``/``Delivered-To`` headers but
    is one message, logged once. Two messages that share a Message-ID but
    differ here are two messages (issue #9: a mailer that reuses ids).
    """
    h = hashlib.sha256()
    date = msg.date.isoformat() if msg.date is not None else ""
    for part in (msg.from_addr, msg.subject, date, msg.text):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


_FROM_LINE = re.compile(rb"^From:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


def sender_of(raw: bytes) -> str | None:
    """The From address of a message that could not be parsed, when its header block still shows one.

    Used for quarantined messages, so one from a customer counts as their
    contact (issue #9). Reads only the header block (up to the first blank
    line, at most 64 KiB) and never raises.
    """
    head = raw[:65536]
    end = re.search(rb"\r?\n\r?\n", head)
    if end is not None:
        head = head[:end.start()]
    m = _FROM_LINE.search(head)
    if m is None:
        return None
    value = m.group(1).decode("utf-8", "replace")
    addr = email.utils.parseaddr(re.sub(r"\s+", " ", value))[1].strip().lower()
    return addr if "@" in addr and " " not in addr else None
