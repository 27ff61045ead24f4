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


# -- issue #9: any error while rendering is a DataError naming file, line and customer ----------------------


def kctx(key: str = "c1", **customer):
    return ctx(_key=key, **customer)


@pytest.mark.parametrize(("body", "what"), [
    ("{{ 1/0 }}", "ZeroDivisionError"),
    ("{{ customer.name + 1 }}", "TypeError"),
    ("{{ range(10**9) }}", "OverflowError"),
    ("{{ '2026-11-27' | date(5) }}", "TypeError"),  # raised inside a filter: the template's line is still named
])
def test_any_render_exception_is_a_data_error_with_file_line_and_customer(tmp_path, body, what):
    # header lines 1-2, the blank line 3, the body from line 4: the faulty expression is on line 5
    t = tpl(tmp_path, {"a.txt": f"Subject: Hi\nReply-To: s@example.com\n\nHello\n{body}\n"})
    with pytest.raises(DataError) as ei:
        t.render("a", kctx(name="Bob"))
    msg = str(ei.value)
    assert msg.startswith("template a: ")
    assert f"{tmp_path / 'a.txt'} line 5: " in msg
    assert what in msg and msg.endswith("(customer 'c1')")
    assert ei.value.hint


@pytest.mark.parametrize(("files", "where"), [
    ({"a.txt": "Subject: {{ 1/0 }}\n\nbody\n"}, "a.txt line 1"),
    ({"a.txt": "Subject: x\nReply-To: {{ customer.name + 1 }}\n\nbody\n"}, "a.txt line 2"),
    ({"a.txt": "Subject: x\n\nbody\n", "a.html": "<p>\n{{ customer.name }}\n{{ 1/0 }}</p>"}, "a.html line 3"),
    ({"a.txt": "Subject: x\n\nbody\n", "a.html": "{% extends '_l.html' %}{% block b %}{{ customer.name }}{% endblock %}",
      "_l.html": "<p>\n{% block b %}{% endblock %}\n\n{{ 1/0 }}</p>"}, "_l.html line 4"),
    ({"a.txt": "Subject: x\n\n{% include '_inc.txt' %}\n", "_inc.txt": "one\n{{ customer.name + 1 }}\n"},
     "_inc.txt line 2"),
])
def test_render_error_names_the_file_the_line_is_in(tmp_path, files, where):
    t = tpl(tmp_path, files)
    with pytest.raises(DataError, match=r"\(customer 'k9'\)$") as ei:
        t.render("a", kctx("k9", name="Bob"))
    assert f"{tmp_path / where.split()[0]} line {where.split()[-1]}: " in str(ei.value)


def test_undefined_and_sandbox_errors_keep_their_shape_and_gain_a_line(tmp_path):
    t = tpl(tmp_path, {"u.txt": "Subject: x\n\n\n{{ customer.nickname }}\n",
                       "s.txt": "Subject: x\n\n{{ customer.__class__.__mro__ }}\n"})
    with pytest.raises(DataError, match=r"^template u: .*u.txt line 4: .*nickname.*\(customer 'c1'\)$") as ei:
        t.render("u", kctx())
    assert "crm-automation check" in (ei.value.hint or "")
    with pytest.raises(DataError, match=r"^template s: .*s.txt line 3: blocked by the sandbox: .*\(customer 'c1'\)$"):
        t.render("s", kctx())


def test_syntax_error_line_counts_the_header_lines(tmp_path):
    t = tpl(tmp_path, {"a.txt": "Subject: x\nReply-To: a@b.c\n\nline 4\n{% if %}\n"})
    with pytest.raises(ConfigError, match=r"a.txt line 5: template syntax error"):
        t.load("a")


def test_render_is_unchanged_by_the_line_bookkeeping(tmp_path):
    t = tpl(tmp_path, {"a.txt": "Subject:  Hi {{ customer.name }}\nReply-To: {{ sender.name }} <s@example.com>\n\n"
                                "  Dear {{ customer.name }},\n\nbye\n"})
    r = t.render("a", kctx(name="Bob"))
    assert (r.subject, r.reply_to, r.text) == ("Hi Bob", "S <s@example.com>", "  Dear Bob,\n\nbye\n")


# -- check(): every problem the send pass must refuse, as lines naming file and line; never raises -------------


def test_check_reports_a_missing_template_without_raising(tmp_path):
    t = tpl(tmp_path, {"b.txt": "Subject: x\n\nbody\n"})
    problems = t.check("a", {"name"})
    assert len(problems) == 1 and "a.txt: template not found" in problems[0] and "found: b" in problems[0]


def test_check_reports_a_syntax_error_in_an_extended_layout(tmp_path):
    t = tpl(tmp_path, {"a.txt": "Subject: x\n\nbody\n",
                       "a.html": "{% extends '_l.html' %}{% block b %}{{ customer.name }}{% endblock %}",
                       "_l.html": "<p>\n{% block b %}{% endblock %}\n{% if %}</p>"})
    problems = t.check("a", {"name"})
    assert problems == [f"{tmp_path / '_l.html'} line 3: template syntax error: "
                        "Expected an expression, got 'end of statement block'"]


def test_check_reports_a_missing_layout_and_include_with_their_lines(tmp_path):
    t = tpl(tmp_path, {"a.txt": "Subject: x\n\nbody\n{% include '_nope.txt' %}\n",
                       "a.html": "\n{% extends '_gone.html' %}"})
    text = "\n".join(t.check("a", set()))
    assert f"{tmp_path / 'a.txt'} line 4: " in text and "'_nope.txt'" in text
    assert f"{tmp_path / 'a.html'} line 2: " in text and "'_gone.html'" in text


@pytest.mark.parametrize(("bad", "line"), [("a.txt", 6), ("a.html", 3), ("_l.html", 3)])
def test_check_reports_a_file_that_is_not_utf8(tmp_path, bad, line):
    t = tpl(tmp_path, {"a.txt": "Subject: x\n\nbody\n",
                       "a.html": "{% extends '_l.html' %}{% block b %}{{ customer.name }}{% endblock %}",
                       "_l.html": "<p>{% block b %}{% endblock %}</p>"})
    (tmp_path / bad).write_bytes((tmp_path / bad).read_bytes() + "\n\n客户".encode("gbk"))
    problems = t.check("a", {"name"})
    assert len(problems) == 1
    assert problems[0].startswith(f"{tmp_path / bad} line {line}: not UTF-8 text")


def test_check_reports_unknown_filters_and_names_with_lines(tmp_path):
    # an unknown filter or test inside a condition is only found when rendering reaches it: check looks for it
    t = tpl(tmp_path, {"a.txt": "Subject: {% if customer.name %}{{ customer.name | shout }}{% endif %}\n\n"
                                "{% for i in range(2) %}{{ i }}{% endfor %}\n"
                                "{{ mystery }}\n{% if customer.name is frobbed %}x{% endif %}\n{{ customer.vip }}\n"})
    problems = t.check("a", {"name"})
    text = "\n".join(problems)
    assert f"{tmp_path / 'a.txt'} line 1: uses the filter 'shout'" in text
    assert f"{tmp_path / 'a.txt'} line 5: uses the test 'frobbed'" in text
    assert f"{tmp_path / 'a.txt'} line 4: uses {{{{ mystery }}}}" in text
    assert f"{tmp_path / 'a.txt'} line 6: uses customer.vip" in text
    assert "range" not in text and len(problems) == 4


def test_unknown_filter_outside_a_condition_is_a_syntax_error_at_load(tmp_path):
    t = tpl(tmp_path, {"a.txt": "Subject: x\n\n\n{{ customer.name | shout }}\n"})
    assert t.check("a", {"name"}) == [f"{tmp_path / 'a.txt'} line 4: template syntax error: No filter named 'shout'."]


def test_check_of_a_good_template_finds_nothing(tmp_path):
    t = tpl(tmp_path, {"a.txt": "Subject: Hi {{ customer.name }}\n\n{{ customer.name | upper }} {{ now | date }}\n",
                       "a.html": "{% extends '_l.html' %}{% block b %}{{ customer.name }}{% endblock %}",
                       "_l.html": "<p>{% block b %}{% endblock %}{{ unsubscribe }}</p>"})
    assert t.check("a", {"name"}) == []
