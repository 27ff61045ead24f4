"""Templates: sandbox, StrictUndefined, header safety, and the check for unmapped variables."""

from __future__ import annotations

import email
from datetime import UTC, datetime
from email.header import decode_header, make_header
from zoneinfo import ZoneInfo

import pytest

from crm_automation.errors import ConfigError, DataError
from crm_automation.templating import Rendered, Templates, build_message, header_safe

TZ = ZoneInfo("Asia/Shanghai")


def tpl(tmp_path, files: dict[str, str]) -> Templates:
    for k, v in files.items():
        (tmp_path / k).write_text(v, encoding="utf-8")
    return Templates(tmp_path, TZ)


def ctx(**customer):
    return {"customer": customer, "campaign": {"id": "c"}, "sender": {"name": "S"}, "unsubscribe": "u", "now": None}


def test_undefined_variable_is_an_error_not_blank(tmp_path):
    t = tpl(tmp_path, {"a.txt": "Subject: Hi {{ customer.name }}\n\n{{ customer.nickname }}\n"})
    with pytest.raises(DataError, match="nickname"):
        t.render("a", ctx(name="Bob"))


def test_check_finds_unmapped_fields_including_layouts(tmp_path):
    t = tpl(tmp_path, {"a.txt": "Subject: Hi {{ customer.name }}\n\nbody {{ customer['stage'] }}\n",
                       "a.html": "{% extends '_l.html' %}{% block b %}{{ customer.vip }}{% endblock %}",
                       "_l.html": "<p>{{ customer.region }}{{ mystery }}</p>{% block b %}{% endblock %}"})
    problems = t.check("a", {"name", "stage"})
    text = "\n".join(problems)
    assert "customer.vip" in text and "customer.region" in text and "{{ mystery }}" in text
    assert "customer.name" not in text and "customer.stage" not in text


def test_sheet_values_are_data_not_template_code(tmp_path):
    t = tpl(tmp_path, {"a.txt": "Subject: x\n\n{{ customer.name }}\n"})
    r = t.render("a", ctx(name="{{ 7*7 }}{% for x in range(3) %}y{% endfor %}"))
    assert "{{ 7*7 }}" in r.text and "49" not in r.text


def test_sandbox_blocks_unsafe_attribute_access(tmp_path):
    t = tpl(tmp_path, {"a.txt": "Subject: x\n\n{{ customer.__class__.__mro__ }}\n"})
    with pytest.raises(DataError):
        t.render("a", ctx())


def test_html_is_autoescaped_text_is_not(tmp_path):
    t = tpl(tmp_path, {"a.txt": "Subject: x\n\n{{ customer.name }}\n", "a.html": "<p>{{ customer.name }}</p>"})
    r = t.render("a", ctx(name="<b>Tom & Jerry</b>"))
    assert r.text.strip() == "<b>Tom & Jerry</b>"
    assert r.html == "<p>&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;</p>"


def test_template_format_errors_name_file_and_line(tmp_path):
    t = tpl(tmp_path, {"nosubj.txt": "Reply-To: a@b\n\nbody", "bad.txt": "Subject: x\nX-Evil: y\n\nbody",
                       "syntax.txt": "Subject: x\n\n{% if %}\n"})
    with pytest.raises(ConfigError, match="Subject: header line is required"):
        t.load("nosubj")
    with pytest.raises(ConfigError, match=r"bad.txt line 2: 'X-Evil: y' is not a header line"):
        t.load("bad")
    with pytest.raises(ConfigError, match="syntax error"):
        t.load("syntax")
    with pytest.raises(ConfigError, match="template not found"):
        t.load("missing")


def test_date_filter_uses_workspace_timezone(tmp_path):
    t = tpl(tmp_path, {"a.txt": "Subject: x\n\n{{ now | date('%Y-%m-%d %H:%M') }}\n"})
    r = t.render("a", {**ctx(), "now": datetime(2026, 11, 26, 20, 0, tzinfo=UTC)})
    assert r.text.strip() == "2026-11-27 04:00"


def test_no_crlf_from_data_reaches_a_header():
    r = Rendered(subject="Hi\r\nBcc: evil@x.com", text="t", html=None, reply_to=None)
    raw = build_message(r, sender="Sales <s@example.com>", to_name="Bob\r\nBcc: evil2@x.com",
                        to_email="bob@example.com", message_id="<1@example.com>", now=datetime.now(UTC))
    msg = email.message_from_bytes(raw)
    assert msg.get_all("Bcc") is None
    assert "evil2@x.com" in str(make_header(decode_header(msg["To"])))  # kept as display text, not a header
    assert header_safe("a\r\nb\nc\u2028d") == "a b c d"


def test_message_headers_and_utf8_parts():
    r = Rendered(subject="您好 张伟", text="正文", html="<p>正文</p>", reply_to=None)
    raw = build_message(r, sender="销售部 <sales@example.com>", to_name="张伟", to_email="z@example.cn",
                        message_id="<abc@example.com>", now=datetime(2026, 11, 27, tzinfo=UTC),
                        reply_to="sales@example.com", list_unsubscribe="<mailto:sales@example.com?subject=unsubscribe>, "
                        "<https://example.com/u/abc>", one_click=True)
    msg = email.message_from_bytes(raw)
    assert str(make_header(decode_header(msg["Subject"]))) == "您好 张伟"
    assert msg["Message-ID"] == "<abc@example.com>"
    assert msg["Date"] and msg["Reply-To"] == "sales@example.com"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg.get_content_type() == "multipart/alternative"
    parts = [p.get_payload(decode=True).decode(p.get_content_charset()) for p in msg.walk() if not p.is_multipart()]
    assert parts == ["正文", "<p>正文</p>"]
