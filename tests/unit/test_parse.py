"""parse.py: decoding rules on byte literals, the corpus, bounds and fuzzing."""

from __future__ import annotations

import base64
import hashlib
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from crm_automation.errors import MessageError
from crm_automation.parse import codec_for, decode_bytes, decode_header_value, parse, parse_with_message

CORPUS = Path(__file__).resolve().parents[1] / "data" / "eml"
READABLE = sorted(p for kind in ("email_in", "unsubscribe", "auto_reply", "bounce") for p in (CORPUS / kind).glob("*.eml"))
QUARANTINE = sorted((CORPUS / "quarantine").glob("*.eml"))


def mail(body: bytes, *, ctype: bytes = b"text/plain; charset=utf-8", cte: bytes = b"8bit", extra: bytes = b"") -> bytes:
    return (
        b"From: Alice <Alice@Example.ORG>\r\nTo: Sales <SALES@example.com>\r\nCc: bob@Example.net\r\n"
        b"Subject: hello\r\nDate: Tue, 24 Nov 2026 10:15:00 +0800\r\nMessage-ID: <m1@example.org>\r\n"
        + extra
        + b"MIME-Version: 1.0\r\nContent-Type: " + ctype + b"\r\nContent-Transfer-Encoding: " + cte + b"\r\n\r\n" + body
    )


def nested(depth: int) -> bytes:
    out = b"From: deep@example.net\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"
    for i in range(depth):
        out += b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
    out += b"Content-Type: text/plain\r\n\r\nhi\r\n"
    for i in reversed(range(depth)):
        out += b"--b%d--\r\n" % i
    return out


def many_parts(n: int) -> bytes:
    out = b'From: p@example.net\r\nSubject: p\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="p"\r\n\r\n'
    for i in range(n):
        out += b"--p\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i
    return out + b"--p--\r\n"


# -- body charsets -------------------------------------------------------------------


def test_gb2312_label_holding_gbk_characters_is_decoded_as_gb18030():
    text = "喆堃镕赟都是GBK字"  # not in GB2312
    raw = mail(base64.b64encode(text.encode("gbk")), ctype=b'text/plain; charset="GB2312"', cte=b"base64")
    assert parse(raw).text == text


def test_gbk_quoted_printable():
    import quopri

    text = "您好，报价收到。"
    raw = mail(quopri.encodestring(text.encode("gbk")), ctype=b"text/plain; charset=gbk", cte=b"quoted-printable")
    assert parse(raw).text == text


def test_gb18030_four_byte_characters():
    text = "䶮总😀"
    raw = mail(base64.b64encode(text.encode("gb18030")), ctype=b"text/plain; charset=gb18030", cte=b"base64")
    assert parse(raw).text == text


def test_big5_body():
    text = "報價已收到，我們下週回覆。"
    raw = mail(text.encode("big5"), ctype=b"text/plain; charset=big5")
    assert parse(raw).text == text


def test_utf8_quoted_printable_soft_breaks():
    raw = mail(b"=E4=BD=A0=E5=A5=BD=\r\n world", cte=b"quoted-printable")
    assert parse(raw).text == "你好 world"


def test_unknown_charset_label_falls_back_to_gb18030():
    raw = mail("你好".encode("gbk"), ctype=b"text/plain; charset=x-no-such-charset")
    assert parse(raw).text == "你好"


def test_unknown_charset_label_with_utf8_bytes():
    raw = mail("你好".encode(), ctype=b"text/plain; charset=x-no-such-charset")
    assert parse(raw).text == "你好"


def test_us_ascii_label_with_utf8_bytes():
    raw = mail("Müller".encode(), ctype=b"text/plain; charset=us-ascii")
    assert parse(raw).text == "Müller"


def test_undecodable_bytes_end_in_latin1_never_an_error():
    assert decode_bytes(b"\x80\xff\x80", "x-no-such") == "\x80\xff\x80"


@pytest.mark.parametrize(
    ("label", "codec"),
    [("gb2312", "gb18030"), ("GBK", "gb18030"), ('"GB2312"', "gb18030"), ("cp936", "gb18030"), ("big5", "cp950"),
     ("utf8", "utf-8"), ("UTF-8", "utf-8"), ("iso-8859-1", "iso8859-1"), ("base64", None), ("x-nope", None), (None, None)],
)
def test_codec_for(label, codec):
    assert codec_for(label) == codec


def test_charset_not_a_text_codec_is_ignored():
    raw = mail(b"plain words", ctype=b"text/plain; charset=rot13")
    assert parse(raw).text == "plain words"


# -- headers -----------------------------------------------------------------------


def test_rfc2047_b_and_q_words_and_plain_text_mixed():
    value = "=?gb2312?B?" + base64.b64encode("报价".encode("gbk")).decode() + "?= =?utf-8?Q?=E5=8D=95?= for 2027"
    assert decode_header_value(value) == "报价单 for 2027"


def test_rfc2047_gb2312_word_with_gbk_character():
    value = "=?gb2312?B?" + base64.b64encode("李堃".encode("gbk")).decode() + "?="
    assert decode_header_value(value) == "李堃"


@pytest.mark.parametrize("value", ["=?utf-8?B?###?=", "=?utf-8?B?5L2g5a?=", "=?utf-8?Q?=ZZ?=", "=?utf-8?X?abc?="])
def test_rfc2047_broken_words_do_not_raise(value):
    assert isinstance(decode_header_value(value), str)


def test_rfc2047_unknown_charset_falls_back():
    assert decode_header_value("=?x-no-such?B?5L2g5aW9?=") == "你好"


def test_folded_header_is_unfolded():
    assert decode_header_value("Re: a long\r\n subject") == "Re: a long subject"


@pytest.mark.parametrize("encoding", ["gbk", "utf-8"])
def test_raw_8bit_headers(encoding):
    raw = ("From: 冯先生 <Feng@Example.cn>\r\nTo: sales@example.com\r\nSubject: 回复: 合同\r\n\r\nbody\r\n").encode(encoding)
    msg = parse(raw)
    assert msg.from_name == "冯先生"
    assert msg.from_addr == "feng@example.cn"
    assert msg.subject == "回复: 合同"
    assert msg.headers["subject"] == "回复: 合同"


def test_encoded_from_name_and_lower_cased_addresses():
    raw = mail(b"hi", extra=b"Reply-To: x@example.org\r\n").replace(
        b"From: Alice <Alice@Example.ORG>", b"From: =?utf-8?B?" + base64.b64encode("王先生".encode()) + b"?= <Wang@QQ.example.cn>"
    )
    msg = parse(raw)
    assert msg.from_name == "王先生"
    assert msg.from_addr == "wang@qq.example.cn"
    assert msg.to_addrs == ("sales@example.com", "bob@example.net")


def test_headers_dict_has_lower_case_names_and_decoded_values():
    raw = mail(b"x", extra=b"Auto-Submitted: auto-replied\r\nX-Received-Secret: no\r\n")
    msg = parse(raw)
    assert msg.headers["auto-submitted"] == "auto-replied"
    assert msg.headers["content-type"] == "text/plain; charset=utf-8"
    assert "x-received-secret" not in msg.headers


# -- ids and dates -------------------------------------------------------------------


def test_message_id_in_angle_brackets():
    assert parse(mail(b"x")).message_id == "<m1@example.org>"


def test_message_id_without_brackets_is_wrapped():
    raw = mail(b"x").replace(b"Message-ID: <m1@example.org>", b"Message-ID: m2@example.org")
    assert parse(raw).message_id == "<m2@example.org>"


def test_missing_message_id_is_synthetic_and_stable():
    raw = mail(b"x").replace(b"Message-ID: <m1@example.org>\r\n", b"")
    expected = f"<{hashlib.sha256(raw).hexdigest()}@no-message-id.invalid>"
    assert parse(raw).message_id == expected
    assert parse(raw).message_id == expected
    assert parse(raw + b"more").message_id != expected


def test_raw_8bit_message_id_is_decoded_not_surrogates():
    raw = mail(b"x").replace(b"<m1@example.org>", "<编号1@example.cn>".encode("gbk"))
    assert parse(raw).message_id == "<编号1@example.cn>"


def test_references_and_in_reply_to():
    raw = mail(b"x", extra=b"In-Reply-To: <a@x> (comment)\r\nReferences: <r1@x>\r\n <r2@x>  <a@x>\r\n")
    msg = parse(raw)
    assert msg.in_reply_to == "<a@x>"
    assert msg.references == ("<r1@x>", "<r2@x>", "<a@x>")


def test_no_references():
    msg = parse(mail(b"x"))
    assert msg.in_reply_to is None
    assert msg.references == ()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"Tue, 24 Nov 2026 10:15:00 +0800", datetime(2026, 11, 24, 2, 15, tzinfo=UTC)),
        (b"Tue, 24 Nov 2026 10:15:00 -0000", datetime(2026, 11, 24, 10, 15, tzinfo=UTC)),
        (b"24 Nov 2026 10:15 GMT", datetime(2026, 11, 24, 10, 15, tzinfo=UTC)),
        (b"not a date", None),
        (b"Tue, 99 Nov 99999 99:99:99 +9999", None),
    ],
)
def test_date_is_aware_utc_or_none(value, expected):
    raw = mail(b"x").replace(b"Tue, 24 Nov 2026 10:15:00 +0800", value)
    got = parse(raw).date
    assert got == expected
    if got is not None:
        assert got.tzinfo is UTC


def test_missing_date_is_none():
    raw = mail(b"x").replace(b"Date: Tue, 24 Nov 2026 10:15:00 +0800\r\n", b"")
    assert parse(raw).date is None


# -- structure -----------------------------------------------------------------------


def test_html_only_becomes_text_without_links_or_images():
    html = (b'<html><body><p>Hello <b>Bob</b>, see <a href="https://example.com/very/long/link">our site</a>.'
            b'<img src="cid:logo.png" alt="logo"></p><blockquote>old text</blockquote></body></html>')
    msg = parse(mail(html, ctype=b"text/html; charset=utf-8"))
    assert "Hello Bob, see our site." in msg.text
    assert "https://" not in msg.text
    assert "logo" not in msg.text
    assert "> old text" in msg.text
    assert msg.reply == "Hello Bob, see our site."


def test_html_meta_charset_is_used_when_the_part_has_none():
    html = '<html><head><meta charset="gbk"></head><body>你好</body></html>'.encode("gbk")
    raw = mail(base64.b64encode(html), ctype=b"text/html", cte=b"base64")
    assert parse(raw).text == "你好"


def test_plain_part_preferred_and_attachments_and_attached_messages_skipped():
    raw = (
        b"From: a@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=m\r\n\r\n"
        b"--m\r\nContent-Type: text/plain; name=notes.txt\r\nContent-Disposition: attachment\r\n\r\nATTACHED\r\n"
        b"--m\r\nContent-Type: message/rfc822\r\n\r\nFrom: b@example.org\r\nSubject: inner\r\n\r\nINNER\r\n"
        b"--m\r\nContent-Type: multipart/alternative; boundary=a\r\n\r\n"
        b"--a\r\nContent-Type: text/html\r\n\r\n<p>HTML</p>\r\n--a\r\nContent-Type: text/plain\r\n\r\nPLAIN\r\n--a--\r\n"
        b"--m--\r\n"
    )
    assert parse(raw).text.strip() == "PLAIN"


def test_message_without_text_part_has_empty_text():
    raw = (b"From: a@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\nContent-Type: application/pdf\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n")
    msg = parse(raw)
    assert msg.text == ""
    assert msg.reply == ""


def test_parse_with_message_returns_the_stdlib_message():
    msg, mime = parse_with_message(mail(b"x"))
    assert msg.subject == mime["subject"] == "hello"


def test_raw_is_kept():
    raw = mail(b"x")
    assert parse(raw).raw == raw


# -- what cannot be understood --------------------------------------------------------


def test_over_max_bytes():
    with pytest.raises(MessageError, match="over the limit"):
        parse(mail(b"x" * 2000), max_bytes=1000)


def test_max_depth_boundary():
    assert parse(nested(20), max_depth=20).text.strip() == "hi"
    with pytest.raises(MessageError, match="nested deeper than 20"):
        parse(nested(21), max_depth=20)


def test_absurd_nesting_refused_before_the_parser_recurses():
    with pytest.raises(MessageError, match="more than 200 MIME parts"):
        parse(nested(5000))


def test_max_parts_boundary():
    assert parse(many_parts(10), max_parts=11).text.strip() == "part 0"
    with pytest.raises(MessageError, match="more than 10 MIME parts"):
        parse(many_parts(10), max_parts=10)


@pytest.mark.parametrize(
    "raw",
    [b"", b"   \r\n", b"just some words\r\nand more\r\n", b"\x89PNG\r\n\x1a\n\x00\x00IHDR" + bytes(range(256)),
     b"Subject: only a subject\r\n\r\n", b"X-Custom: 1\r\n\r\nbody"],
)
def test_not_an_email(raw):
    with pytest.raises(MessageError):
        parse(raw)


def test_not_bytes():
    with pytest.raises(MessageError, match="expected bytes"):
        parse("From: a@example.org\r\n\r\nx")  # type: ignore[arg-type]


def test_body_without_from_is_accepted():
    assert parse(b"Subject: s\r\nTo: a@example.org\r\n\r\nsome body").text == "some body"


def test_from_without_body_is_accepted():
    assert parse(b"From: a@example.org\r\nSubject: s\r\n\r\n").from_addr == "a@example.org"


@pytest.mark.parametrize("path", READABLE, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_corpus_message_parses(path):
    msg = parse(path.read_bytes())
    assert msg.message_id.startswith("<")
    assert msg.message_id.endswith(">")
    assert msg.from_addr == msg.from_addr.lower()
    assert "\ufffd" not in msg.subject + msg.from_name + msg.text
    assert msg.date is None or msg.date.tzinfo is UTC


@pytest.mark.parametrize("path", QUARANTINE, ids=lambda p: p.stem)
def test_corpus_quarantine_raises(path):
    with pytest.raises(MessageError):
        parse(path.read_bytes())


def test_fuzz_only_message_error_escapes():
    """Random, truncated and mutated bytes: parse either works or raises MessageError."""
    rng = random.Random(20261124)
    sources = [p.read_bytes() for p in READABLE]
    outcomes = {"parsed": 0, "refused": 0}
    for _ in range(1200):
        src = rng.choice(sources)
        op = rng.random()
        if op < 0.35:
            data = src[: rng.randrange(len(src) + 1)]
        elif op < 0.7:
            buf = bytearray(src)
            for _ in range(rng.randrange(1, 40)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            data = bytes(buf)
        else:
            data = rng.randbytes(rng.randrange(400))
        try:
            msg = parse(data)
        except MessageError:
            outcomes["refused"] += 1
        else:
            outcomes["parsed"] += 1
            # Every text field must be storable: no lone surrogates from raw bytes.
            fields = [msg.message_id, msg.from_addr, msg.from_name, msg.subject, msg.text, msg.reply,
                      msg.in_reply_to or "", *msg.to_addrs, *msg.references, *msg.headers.values()]
            for value in fields:
                value.encode("utf-8")
    # Both paths were exercised, so the test can tell them apart.
    assert outcomes["parsed"] > 100
    assert outcomes["refused"] > 100


def test_an_attachment_named_in_raw_8bit_bytes_does_not_stop_the_text():
    """Some clients send a Chinese file name as raw UTF-8 in Content-Disposition; the text is still read."""
    raw = ("From: a@b.c\r\nSubject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
           '--b\r\nContent-Type: application/pdf; name="报价.pdf"\r\n'
           'Content-Disposition: attachment; filename="报价.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA\r\n'
           "--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Disposition: inline; filename=\"说明.txt\"\r\n"
           "\r\n您好\r\n--b--\r\n").encode()
    assert parse(raw).text == "您好"
