"""parse's fast paths answer exactly as the stdlib does (issue #13): addresses, dates, plain messages.

They answer common shapes with one regex and hand everything else to
``email.utils``; these tests compare the two on every From/To/Cc header of
the corpus and on thousands of generated headers built from the fragments
that trip address parsers: comments, quotes with commas and escapes, dots
and specials in names, encoded words, CJK, raw 8-bit bytes (as the parser's
surrogates), tabs, runs of spaces, folded lines, groups, routes, empty list
members. A plain one-part message read without the feed parser is compared
with the stdlib's reading of the same bytes, on the corpus and on generated
messages built from what trips header and MIME parsers.
"""

from __future__ import annotations

import base64
import email
import email.utils
import quopri
import random
from pathlib import Path

import pytest

from crm_automation import parse, quickmime
from crm_automation.errors import MessageError
from crm_automation.parse import _MAILBOX, getaddresses, parseaddr

CORPUS = Path(__file__).resolve().parents[1] / "data" / "eml"

NAMES = ["Name", "John Smith", "John   Smith", "王先生", "=?utf-8?B?546L5YWI55Sf?=", "J. Smith", "Smith, J",
         "a\\\"b", "O'Brien", "客户 3 号", "\udcc4\udce3", "x@y", "", "(note)", "A\tB", "Mr.", "<odd>", "a;b",
         "\u3000name", "name\r\n folded"]
LOCALS = ["a", "a.b", "a..b", ".a", "a.", "first+tag", "user_9", "\udcc4\udce3", "x\"y", "o'hara", "a b", "中文",
          "UPPER"]
DOMAINS = ["example.com", "b", "163.example.cn", "x..y", ".y", "y.", "[1.2.3.4]", "ex ample.com", "EXAMPLE.COM"]
SPACES = ["", " ", "  ", "\t", " \t "]


def addr(rng: random.Random) -> str:
    return f"{rng.choice(LOCALS)}@{rng.choice(DOMAINS)}"


def mailbox(rng: random.Random) -> str:
    sp = lambda: rng.choice(SPACES)  # noqa: E731
    shape = rng.randrange(7)
    if shape == 0:
        return f"{sp()}{addr(rng)}{sp()}"
    if shape == 1:
        return f"{sp()}{rng.choice(NAMES)}{sp()}<{addr(rng)}>{sp()}"
    if shape == 2:
        return f'{sp()}"{rng.choice(NAMES)}"{sp()}<{addr(rng)}>{sp()}'
    if shape == 3:
        return f"{addr(rng)} ({rng.choice(NAMES)})"
    if shape == 4:
        return f"{rng.choice(NAMES)} <@route.example:{addr(rng)}>"
    if shape == 5:
        return f"group: {addr(rng)}, {addr(rng)};"
    return rng.choice(["", " ", "<>", "<", "@", "plain words", '"unterminated <a@b>', "a@b <c@d>"])


def test_the_fast_path_answers_as_the_stdlib_on_generated_headers():
    rng = random.Random(13)
    fast = 0
    for _ in range(6000):
        one = mailbox(rng)
        assert parseaddr(one) == email.utils.parseaddr(one), repr(one)
        fast += _MAILBOX.fullmatch(one) is not None
        values = [", ".join(mailbox(rng) for _ in range(rng.randrange(1, 4))) for _ in range(rng.randrange(1, 3))]
        assert getaddresses(values) == email.utils.getaddresses(values), values
    assert fast > 400  # the fast path was really taken, not only the fallback


def test_the_fast_path_answers_as_the_stdlib_on_the_corpus():
    seen = 0
    for path in sorted(CORPUS.rglob("*.eml")):
        msg = email.message_from_bytes(path.read_bytes())
        for name in ("from", "to", "cc"):
            values = [str(v) for v in msg.get_all(name, [])]
            if values:
                seen += 1
                assert parseaddr(values[0]) == email.utils.parseaddr(values[0]), (path.name, values[0])
                assert getaddresses(values) == email.utils.getaddresses(values), (path.name, values)
    assert seen > 100


def test_common_shapes_take_the_fast_path():
    for value in ("c1@customer.example.com", "Sales Team <sales@example.com>", '"王先生"<wang@163.example.cn>',
                  "=?utf-8?B?546L5YWI55Sf?= <customer1@example.cn>", "<a@b.c>"):
        assert _MAILBOX.fullmatch(value), value


def test_dates_read_by_the_fast_path_are_what_the_stdlib_reads():
    """Impossible days and times, 2-digit and 0-padded years, odd zones, names and spacing, both ways."""
    rng = random.Random(3)
    days = ["Mon, ", "Tue,", "Sun, ", "", "Xyz, ", "mon, "]
    months = ["Jan", "Feb", "may", "DEC", "Foo", "Sep"]
    years = ["2026", "1999", "26", "0001", "0999", "1000", "9999", "10000"]
    zones = ["+0800", "-0000", "+0000", "-0530", "+2359", "+2400", "+0860", "GMT", "UT", "EST", "+08:00", "",
             " (CST)"]
    fast = 0
    for _ in range(20000):
        seconds = rng.choice(["", f":{rng.randrange(0, 62):02d}"])
        value = (f"{rng.choice(['', ' ', chr(9)])}{rng.choice(days)}{rng.randrange(0, 33)} {rng.choice(months)} "
                 f"{rng.choice(years)} {rng.randrange(0, 25):02d}:{rng.randrange(0, 61):02d}{seconds} "
                 f"{rng.choice(zones)}{rng.choice(['', ' '])}")
        ours = parse._date(value)
        assert ours == parse._stdlib_date(value), value
        assert ours is None or ours.utcoffset().total_seconds() == 0
        fast += parse._RFC5322_DATE.fullmatch(value) is not None
    assert fast > 2000
    for path in sorted(CORPUS.rglob("*.eml")):
        value = str(email.message_from_bytes(path.read_bytes()).get("date", ""))
        assert parse._date(value) == parse._stdlib_date(value), (path.name, value)


def _either(fn, raw):
    try:
        return fn(raw)
    except MessageError as e:
        return f"MessageError: {e}"


def _stdlib(raw):
    return parse.parse_with_message(raw)[0]


def test_plain_messages_read_without_the_feed_parser_are_what_the_stdlib_reads_in_the_corpus():
    fast = 0
    for path in sorted(CORPUS.rglob("*.eml")):
        raw = path.read_bytes()
        assert _either(parse.parse, raw) == _either(_stdlib, raw), path.name
        fast += quickmime.read(raw) is not None
    assert fast >= 10  # the corpus's one-part replies take the fast path


HEADER_LINES = [
    "From: Customer <c1@example.com>", "From: =?gb2312?B?zfXPyMn6?= <wang@163.example.cn>", "To: sales@example.com",
    "Subject: Re: 报价", "Subject: =?utf-8?B?5oql5Lu3?=", "Subject:", "Subject:   spaced  ", "Subject:\tx",
    "Date: Fri, 27 Nov 2026 09:00:00 +0800", "Date: yesterday", "Message-ID: <m1@example.com>", "Message-ID:",
    "In-Reply-To: <out-1@example.com>", "References: <a@b> <c@d>", "Cc: a@b.c, Someone <d@e.f>",
    "X-Mailer: Foxmail 7.2", "Auto-Submitted: auto-replied", "MIME-Version: 1.0", "Received: from x by y",
    "Subject: \udcc4\udce3\udcba\udcc3", "X-Odd:: colon", "x-lower: v", "X-Empty:", "X-Trail: v  ",
]
BAD_LINES = ["From nobody Mon Jan  1 00:00:00 2026", ": no name", "No colon here", "Subject : spaced name",
             " leading continuation", "Bad Name: x"]
CONTENT_TYPES = [
    None, "text/plain", "text/plain; charset=utf-8", "TEXT/PLAIN; CHARSET=UTF-8", 'text/plain; charset="gb2312"',
    "text/plain; charset=gbk; format=flowed", "text/plain; format=flowed; delsp=yes; charset=big5",
    "text/plain;charset=utf-8", "text/plain ; charset = utf-8 ", "text/plain; charset=utf-8;",
    "text/plain; charset*=utf-8''x", "text/plain; charset=nonsense", 'text/plain; charset=""', "text/plain; name=a b",
    "text/html; charset=utf-8", "multipart/alternative; boundary=b", "message/rfc822", "text", "plain",
    "text/plain; charset=utf-8 (comment)", "text/plain; CHARSET=big5", "text/plain; Charset=ISO-8859-1",
    "text/plain; charset=big5; charset=utf-8", "charset=big5", 'text/plain "x"; charset=big5', "text/plain; charset*=''big5", "text/plain;\r\n charset=utf-8", "text/plain; charset=\udcc4",
]
ENCODINGS = [None, "7bit", "8bit", "quoted-printable", "Quoted-Printable", "base64", "BASE64", " base64 ", "base64 ",
             "uuencode", "x-uue", "binary", "\udcc4"]
BODIES = ["Hello,\r\nthanks.", "Café déjà vu, 客户", "您好，报价单已收到。\r\n\r\n> 原文", "", "line\rwith lone CR", "tab\tand  spaces  ",
          "a=3D1 soft=\r\nbreak", "=E4=BD=A0=E5=A5=BD", "=XX bad qp", "x" * 200]


def _encode_body(rng: random.Random, text: str, encoding: str | None, charset: str) -> bytes:
    data = text.encode(charset, "replace")
    enc = (encoding or "").strip().lower()
    if enc == "base64":
        b = base64.b64encode(data)
        shape = rng.randrange(5)
        if shape == 0:
            b = b"\r\n".join(b[i:i + 76] for i in range(0, len(b), 76))
        elif shape == 1:
            b = b.rstrip(b"=")  # unpadded
        elif shape == 2:
            b = b[:len(b) // 2] + b"!!" + b[len(b) // 2:]  # a character outside the alphabet
        elif shape == 3:
            b = b[:-1] if len(b) > 1 else b"A"  # one too few
        return b
    if enc == "quoted-printable" and rng.random() < 0.5:
        return quopri.encodestring(data)
    return data


def generated(rng: random.Random) -> bytes:
    lines = rng.sample(HEADER_LINES, rng.randrange(0, 8))
    if rng.random() < 0.08:
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(BAD_LINES))
    if rng.random() < 0.2 and lines:
        i = rng.randrange(len(lines))
        lines[i] = lines[i] + rng.choice(["\r\n\tfolded", "\r\n  more", "\r\n\t", "\r\n "])
    ctype = rng.choice(CONTENT_TYPES)
    if ctype is not None:
        lines.append(f"Content-Type: {ctype}")
        if rng.random() < 0.05:
            lines.append("Content-Type: text/plain")
    encoding = rng.choice(ENCODINGS)
    if encoding is not None:
        lines.append(f"Content-Transfer-Encoding: {encoding}")
        if rng.random() < 0.05:
            lines.append("Content-Transfer-Encoding: 8bit")
    rng.shuffle(lines)
    # The body in the labelled charset, so that a label read wrong shows (Big5 and Latin-1 bytes often
    # decode as GB18030 too, to other characters).
    charset = next((c for label, c in (("gb", "gb18030"), ("big5", "big5"), ("8859", "latin-1"))
                    if ctype and label in ctype.lower()), "utf-8")
    head = "\r\n".join(lines).encode("utf-8", "surrogateescape")  # raw 8-bit headers, as some clients send
    raw = head + b"\r\n\r\n" + _encode_body(rng, rng.choice(BODIES), encoding, charset)
    shape = rng.randrange(10)
    if shape == 0:
        raw = raw.replace(b"\r\n", b"\n")  # Unix line ends
    elif shape == 1:
        raw = raw.replace(b"\r\n", b"\n", 1)  # mixed
    elif shape == 2:
        raw = raw.replace(b"\r\n\r\n", b"\r\n")  # no blank line
    elif shape == 3:
        raw = raw.replace(b"\r\n", b"\r", 1)  # a lone CR
    elif shape == 4:
        raw = raw.replace(b"\r\n", b"\n", 1).replace(b"\r\n\r\n", b"\n\n", 1)  # LF first and last, CRLF between
    return raw


def test_the_quick_reading_takes_what_mail_clients_send():
    zh = "您好，报价单已收到。"
    b64 = base64.encodebytes(zh.encode("gb18030")).replace(b"\n", b"\r\n").decode()
    qp = quopri.encodestring(zh.encode("utf-8")).replace(b"\n", b"\r\n").decode()
    html = f"<div>{zh}</div>"
    shapes = {
        "one part, 8bit": f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{zh}",
        "one part, GBK base64": f'Content-Type: text/plain;\r\n\tcharset="gbk"\r\nContent-Transfer-Encoding: base64\r\n'
                                f"\r\n{b64}",
        "QQ Mail / Foxmail": (
            'Content-Type: multipart/alternative;\r\n\tboundary="----=_NextPart_5F3A_0B1C"\r\n\r\n'
            "This is a multi-part message in MIME format.\r\n\r\n------=_NextPart_5F3A_0B1C\r\n"
            'Content-Type: text/plain;\r\n\tcharset="gb18030"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
            f"{b64}\r\n------=_NextPart_5F3A_0B1C\r\nContent-Type: text/html;\r\n\tcharset=\"gb18030\"\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\nPGRpdj4=\r\n\r\n------=_NextPart_5F3A_0B1C--\r\n\r\n"),
        "Gmail / Outlook": (
            'Content-Type: multipart/alternative; boundary="000000000000a1b2c3"\r\n\r\n--000000000000a1b2c3\r\n'
            'Content-Type: text/plain; charset="UTF-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
            f"{qp}\r\n--000000000000a1b2c3\r\nContent-Type: text/html; charset=\"UTF-8\"\r\n\r\n{html}\r\n"
            "--000000000000a1b2c3--\r\n"),
        "HTML only": (
            "Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/html; charset=utf-8"
            f"\r\n\r\n{html}\r\n--b--\r\n"),
        "with an attachment": (
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/pdf; name=q.pdf\r\n"
            "Content-Disposition: attachment; filename=q.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA\r\n"
            f"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{zh}\r\n--b--\r\n"),
    }
    for shape, rest in shapes.items():
        raw = f"From: a@b.c\r\nSubject: x\r\nMIME-Version: 1.0\r\n{rest}".encode()
        assert quickmime.read(raw) is not None, shape
        assert parse.parse(raw).text == zh, shape
        assert parse.parse(raw) == _stdlib(raw), shape


def test_the_plain_reading_keeps_the_limits():
    """A one-part message is held to the same limits: size, and the multipart headers counted in its bytes."""
    body = b"".join(b"Content-Type: multipart/mixed; boundary=x%d\r\n" % i for i in range(5))
    raw = b"From: a@b.c\r\nSubject: quoted MIME\r\nContent-Type: text/plain\r\n\r\n" + body
    assert quickmime.read(raw) is not None
    for limits in ({"max_parts": 3}, {"max_bytes": 100}):
        with pytest.raises(MessageError) as fast:
            parse.parse(raw, **limits)
        with pytest.raises(MessageError) as slow:
            parse.parse_with_message(raw, **limits)
        assert str(fast.value) == str(slow.value)
    assert parse.parse(raw, max_parts=5).text == body.decode().replace("\r\n", "\n")


BOUNDARY_PARAMS = [
    ("b1", "boundary=b1"), ("----=_NextPart_000_0001", 'boundary="----=_NextPart_000_0001"'),
    ("x y", 'BOUNDARY="x y"'), ("abc", "boundary=abc  "), ("abc", 'boundary="abc "'), ("a:b=c?d", "boundary=a:b=c?d"),
    ("b1", ';\r\n\tboundary="b1"'), ("b1", "boundary=b1; boundary=b2"), ("b1", "boundary*=utf-8''b1"),
    ("b1", "boundary=<b1>"), ("b1", 'boundary=""'), ("b1", ""), ("b1", 'boundary="b1";'), ("b1", "charset=x; boundary=b1"),
]
PART_TYPES = [
    None, "text/plain", "text/plain; charset=utf-8", 'text/plain; charset="GB2312"', "text/plain; charset=big5",
    "text/html", "text/html; charset=utf-8", "TEXT/HTML; charset=gbk", "application/pdf; name=q.pdf",
    'application/pdf; name="报价.pdf"', "image/png", "text", "message/rfc822", "multipart/alternative; boundary=inner",
    "text/plain; charset*=utf-8''x", "text/plain; charset=utf-8 (c)",
]
DISPOSITIONS = [None, "inline", "attachment", "ATTACHMENT; filename=a.txt", 'attachment; filename="报价.pdf"', ""]
PART_BODIES = ["Hello,\r\nthanks.", "您好，报价单已收到。\r\n\r\n> 原文", "", "<p>Hi <b>there</b></p>", "\r\n\r\nlate start",
               "--b1x not a boundary", "Café", '<meta charset="big5"><p>客户</p>']


NICE_TYPES = [t for t in PART_TYPES if t is None or ("*" not in t and "报" not in t and not t.startswith(("m", "te")))]
NICE_TYPES += ["text/plain; charset=utf-8", "text/html; charset=utf-8", 'text/plain; charset="GB2312"']
NICE_ENCODINGS = [None, "7bit", "8bit", "quoted-printable", "base64", "Base64"]


def multipart(rng: random.Random) -> bytes:
    """A generated multipart message: two in five hostile (any fragment), the rest as clients write them."""
    hostile = rng.random() < 0.4
    boundary, param = rng.choice(BOUNDARY_PARAMS if hostile else BOUNDARY_PARAMS[:8])
    subtype = rng.choice(["alternative", "mixed", "related", "alternative", "digest", "report"] if hostile else
                         ["alternative", "mixed", "related"])
    lines = rng.sample(HEADER_LINES, rng.randrange(1, 6))
    lines.append(f"Content-Type: multipart/{subtype}; {param}" if param[:1] != ";" else
                 f"Content-Type: multipart/{subtype}{param}")
    if rng.random() < 0.1:
        lines.append(f"Content-Transfer-Encoding: {rng.choice(['7bit', 'base64'])}")
    rng.shuffle(lines)
    out = ["\r\n".join(lines), ""]
    out += rng.choice([[], ["This is a multi-part message in MIME format.", ""], [f"--{boundary}x", ""]])
    if hostile and rng.random() < 0.1:
        out.append(f"--{boundary}--")  # a close before any part
    for _ in range(rng.randrange(0 if hostile else 1, 4)):
        out.append(f"--{boundary}" + rng.choice(["", "", "", " ", "\t ", "x", "-", "---", " --"]))
        if hostile and rng.random() < 0.1:
            out.append(f"--{boundary}")  # two in a row
        head = []
        ctype = rng.choice(PART_TYPES if hostile else NICE_TYPES)
        if ctype is not None:
            head.append(f"Content-Type: {ctype}")
        disposition = rng.choice(DISPOSITIONS if hostile else DISPOSITIONS[:4])
        if disposition is not None:
            head.append(f"Content-Disposition: {disposition}")
        charset = next((c for label, c in (("gb", "gb18030"), ("big5", "big5")) if ctype and label in ctype.lower()),
                       "utf-8")
        encoding = rng.choice(ENCODINGS if hostile else NICE_ENCODINGS)
        if encoding is not None:
            head.append(f"Content-Transfer-Encoding: {encoding}")
        if hostile and rng.random() < 0.2:
            head.insert(rng.randrange(len(head) + 1), rng.choice(BAD_LINES))
        body = _encode_body(rng, rng.choice(PART_BODIES), encoding, charset)
        if not hostile:
            body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        shape = rng.randrange(12)
        if shape == 0:
            out += head  # headers up to the boundary, no body
        elif shape == 1:
            out += ["", body.decode("utf-8", "surrogateescape")]  # no headers at all
        else:
            out += [*head, "", body.decode("utf-8", "surrogateescape")]
    if not hostile or rng.random() < 0.7:
        out.append(f"--{boundary}--" + rng.choice(["", "", " ", "x"]))
    out += rng.choice([[""], ["", "epilogue"], []])
    raw = "\r\n".join(out).encode("utf-8", "surrogateescape")
    if hostile:
        shape = rng.randrange(4)
        if shape == 0:
            raw = raw.replace(b"\r\n", b"\n")
        elif shape == 1:
            raw = raw.replace(b"\r\n", b"\n", 3)
        elif shape == 2:
            raw = raw[:-rng.randrange(1, 20)]  # cut short
    elif rng.random() < 0.2:
        raw = raw.replace(b"\r\n", b"\n")
    return raw


@pytest.mark.parametrize(("make", "seed", "least"), [(generated, 17, 800), (multipart, 23, 1500)],
                         ids=["one part", "multipart"])
def test_messages_read_without_the_feed_parser_are_what_the_stdlib_reads_when_generated(make, seed, least):
    rng = random.Random(seed)
    fast = 0
    for _ in range(6000):
        raw = make(rng)
        assert _either(parse.parse, raw) == _either(_stdlib, raw), raw
        fast += quickmime.read(raw) is not None
    assert least < fast < 5000  # both ways were really taken
