"""Issue #9: a template cannot hang or exhaust memory, and no header line passes 998 characters."""

from __future__ import annotations

import email
import email.policy
import logging
import re
import signal
import threading
import time
from datetime import UTC, datetime
from email.header import decode_header, make_header
from zoneinfo import ZoneInfo

import pytest

from crm_automation.errors import DataError
from crm_automation.templating import (
    MAX_NAME_CHARS,
    MAX_SUBJECT_CHARS,
    Rendered,
    RenderLimits,
    Templates,
    build_message,
)

TZ = ZoneInfo("Asia/Shanghai")
MiB = 1_048_576


def tpl(tmp_path, files: dict[str, str], limits: RenderLimits | None = None) -> Templates:
    for k, v in files.items():
        (tmp_path / k).write_text(v, encoding="utf-8")
    return Templates(tmp_path, TZ, limits=limits)


def ctx(**customer):
    return {"customer": {"_key": "c1", **customer}, "campaign": {"id": "c"}, "sender": {"name": "S"},
            "unsubscribe": "u", "now": None}


def body(text: str) -> dict[str, str]:
    return {"a.txt": f"Subject: x\n\n{text}\n"}


# -- sizes ------------------------------------------------------------------------------------------


def test_default_limits_are_the_documented_ones():
    lim = RenderLimits()
    assert (lim.body_chars, lim.header_chars, lim.seconds, lim.sequence_items, lim.int_bits) == (
        MiB, 16_384, 2.0, MiB, 16_384)
    assert (MAX_SUBJECT_CHARS, MAX_NAME_CHARS) == (255, 128)


@pytest.mark.parametrize(("files", "part", "limit"), [
    (body("{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}"), "text body", "1,048,576"),
    ({"a.txt": "Subject: x\n\nok\n", "a.html": "{% for i in range(100000) %}<p>{{ 'x' * 100 }}</p>{% endfor %}"},
     "HTML body", "1,048,576"),
    ({"a.txt": "Subject: {% for i in range(1000) %}{{ 'x' * 100 }}{% endfor %}\n\nok\n"}, "subject", "16,384"),
])
def test_rendered_size_is_limited_per_part(tmp_path, files, part, limit):
    t = tpl(tmp_path, files)
    t0 = time.perf_counter()
    with pytest.raises(DataError) as ei:
        t.render("a", ctx())
    assert time.perf_counter() - t0 < 1  # stopped at the limit, not after the whole output
    msg = str(ei.value)
    assert msg.startswith("template a: ") and f"the {part} is longer than the limit of {limit} characters" in msg
    assert msg.endswith("(customer 'c1')")
    html = "a.html" if part == "HTML body" else "a.txt"
    assert str(tmp_path / html) in msg


def test_output_just_under_the_limit_renders(tmp_path):
    t = tpl(tmp_path, body("{{ 'x' * 1000 }}"), RenderLimits(body_chars=1001))
    assert len(t.render("a", ctx()).text) == 1001  # 1000 x's and the newline


@pytest.mark.parametrize(("expr", "got"), [
    ("'x' * 10**9", "a sequence of 1,000,000,000 items"),
    ("10**9 * 'ab'", "a sequence of 2,000,000,000 items"),
    ("[0] * 10**9", "a sequence of 1,000,000,000 items"),
    ("('ab' * 1000000) + ('ab' * 1000000)", "a sequence of 2,000,000 items"),
    ("10 ** (10 ** 8)", "'**'"),  # Jinja2's ** is left-associative: 10 ** 10 ** 8 is (10 ** 10) ** 8
    ("(10 ** 4000) * (10 ** 4000)", "'*'"),
    ("'x'.center(10**10)", "a width of 10,000,000,000"),
    ("'x' | center(10**10)", "a width of 10,000,000,000"),
    ("'x' | indent(10**10, true)", "a width of 10,000,000,000"),
    ("'%9999999999s' % 'x'", "a width of 9,999,999,999"),
    ("'%*d' % (10**10, 1)", "a width of 10,000,000,000"),
    ("'%9999999999s' | format('x')", "a width of 9,999,999,999"),
    ("'{:>9999999999}'.format('x')", "a width of 9,999,999,999"),
])
def test_amplifying_operations_are_refused_before_they_run(tmp_path, expr, got):
    t = tpl(tmp_path, {"a.txt": f"Subject: x\n\nline 3\n{{{{ {expr} }}}}\n"})
    t0 = time.perf_counter()
    with pytest.raises(DataError) as ei:
        t.render("a", ctx())
    assert time.perf_counter() - t0 < 1
    msg = str(ei.value)
    assert f"{tmp_path / 'a.txt'} line 4: " in msg and got in msg and "limit" in msg, msg


@pytest.mark.parametrize(("expr", "out"), [
    ("'ab' * 3", "ababab"), ("3 * 'ab'", "ababab"), ("[1, 2] * 2", "[1, 2, 1, 2]"), ("2 ** 100", str(2 ** 100)),
    ("'a' + 'b'", "ab"), ("1.5 * 2", "3.0"), ("7 % 3", "1"), ("'%05.1f' % 3.14159", "003.1"),
    ("'x'.center(5)", "  x  "), ("'{:>4}'.format('x')", "   x"), ("'{:,}'.format(12345678901)", "12,345,678,901"),
    ("'%s-%s' | format('a', 'b')", "a-b"), ("'a\nb' | indent(2)", "a\n  b"),
])
def test_ordinary_operations_still_work(tmp_path, expr, out):
    t = tpl(tmp_path, body(f"{{{{ {expr} }}}}"))
    assert t.render("a", ctx()).text == out + "\n"


# -- time -------------------------------------------------------------------------------------------


SPIN = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"


def test_a_render_that_runs_too_long_is_stopped(tmp_path):
    t = tpl(tmp_path, {"a.txt": f"Subject: x\n\nline 3\n{SPIN}\n"}, RenderLimits(seconds=0.2))
    t0 = time.perf_counter()
    with pytest.raises(DataError) as ei:
        t.render("a", ctx())
    assert time.perf_counter() - t0 < 2
    msg = str(ei.value)
    assert "took longer than the limit of 0.2 s" in msg and f"{tmp_path / 'a.txt'} line 4: " in msg
    assert msg.endswith("(customer 'c1')")


def test_a_filter_that_swallows_the_timeout_does_not_keep_the_render_going(tmp_path):
    t = tpl(tmp_path, {"a.txt": f"Subject: x\n\n{SPIN.replace('{% endfor %}{% endfor %}', '{{ b | busy }}{% endfor %}{% endfor %}')}\n"},
            RenderLimits(seconds=0.2))
    swallowed: list[BaseException] = []

    def busy(value):
        try:
            x = 0
            for i in range(20_000):  # about 1 ms of Python code: the alarm lands here nearly every time
                x += i
        except Exception as e:  # noqa: BLE001 - a careless filter is the point of this test
            swallowed.append(e)
        return ""

    t.text_env.filters["busy"] = busy
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"a.txt line 3: rendering took longer than the limit of 0.2 s"):
        t.render("a", ctx())
    assert time.perf_counter() - t0 < 2  # without the repeated alarm: minutes (every alarm swallowed)


def test_the_alarm_and_an_outer_timer_are_restored(tmp_path):
    t = tpl(tmp_path, body("{{ customer.name }}"), RenderLimits(seconds=0.5))
    before = signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)
    fired: list[int] = []

    def outer(signum, frame):
        fired.append(signum)

    try:
        signal.signal(signal.SIGALRM, outer)
        signal.setitimer(signal.ITIMER_REAL, 100)
        assert t.render("a", ctx(name="Bob")).text == "Bob\n"
        assert signal.getsignal(signal.SIGALRM) is outer
        assert 99 < signal.getitimer(signal.ITIMER_REAL)[0] <= 100
        signal.setitimer(signal.ITIMER_REAL, 0)
        assert t.render("a", ctx(name="Bob")).text == "Bob\n"
        assert signal.getsignal(signal.SIGALRM) is outer and signal.getitimer(signal.ITIMER_REAL)[0] == 0
        # an outer timer due before our limit is left alone, and still fires
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        assert t.render("a", ctx(name="Bob")).text == "Bob\n"
        assert signal.getsignal(signal.SIGALRM) is outer and 0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 0.05
        time.sleep(0.1)
        assert fired == [signal.SIGALRM]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before[0])
        if before[1][0] > 0:
            signal.setitimer(signal.ITIMER_REAL, *before[1])


def test_off_the_main_thread_the_size_limits_still_apply(tmp_path):
    t = tpl(tmp_path, {"a.txt": "Subject: {{ customer.name }}\n\nok\n", "b.txt": "Subject: x\n\n{{ 'x' * 10**9 }}\n"})
    results: list[object] = []

    def work() -> None:
        results.append(t.render("a", ctx(name="Bob")).subject)
        try:
            t.render("b", ctx())
        except DataError as e:
            results.append(e)

    th = threading.Thread(target=work)
    th.start()
    th.join(10)
    assert results[0] == "Bob" and isinstance(results[1], DataError)


# -- header lines (RFC 5322 §2.1.1) ------------------------------------------------------------------


def build(subject: str, name: str | None, to: str = "long.name@example.com") -> bytes:
    r = Rendered(subject=subject, text="t", html=None, reply_to=None)
    return build_message(r, sender="Sales <s@example.com>", to_name=name, to_email=to, message_id="<1@example.com>",
                         now=datetime(2026, 11, 27, tzinfo=UTC), list_unsubscribe="<mailto:s@example.com>")


def to_name(raw: bytes) -> str:
    """The To display name decoded as RFC 2047 §6.2 says: whitespace between adjacent encoded-words is dropped.

    Python 3.11's ``policy.default`` parser keeps that whitespace inside a display name (CPython
    gh-128110, fixed upstream by PR #130749; unstructured headers such as Subject were already right),
    so a name needing several encoded-words comes back with a space at each boundary. Python's own
    generator folds long names the same way we do, so this is the parser's limitation, not ours.
    """
    folded = raw.split(b"\r\nTo: ", 1)[1].split(b"\r\nSubject: ", 1)[0].decode("ascii")
    phrase = re.sub(r"\r\n ", " ", folded).rsplit(" <", 1)[0]
    return str(make_header(decode_header(phrase)))


NAMES = {"ascii": "B" * 5000, "ascii spaced": "Bob " * 1250, "chinese": "张" * 5000,
         "quoted": 'O"Brien, ' + "x" * 4990}
SUBJECTS = {"no spaces": "S" * 5000, "spaces": "word " * 1000, "chinese": "优惠" * 2500}


@pytest.mark.parametrize("name_kind", list(NAMES))
@pytest.mark.parametrize("subject_kind", list(SUBJECTS))
def test_long_names_and_subjects_are_cut_and_folded(crm_log, name_kind, subject_kind):
    name, subject = NAMES[name_kind], SUBJECTS[subject_kind]
    raw = build(subject, name)
    for line in raw.split(b"\r\n"):
        assert len(line) <= 78, line[:100]
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    (addr,) = msg["To"].addresses
    assert addr.addr_spec == "long.name@example.com"
    assert msg["Subject"] == subject[:MAX_SUBJECT_CHARS].strip()
    cut = name[:MAX_NAME_CHARS].strip()
    assert to_name(raw) == cut
    assert addr.display_name.replace(" ", "") == cut.replace(" ", "")  # see to_name: gh-128110
    warnings = [r.getMessage() for r in crm_log if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert any("To" in w and f"cut to {MAX_NAME_CHARS}" in w for w in warnings)
    assert any("Subject" in w and f"cut to {MAX_SUBJECT_CHARS}" in w for w in warnings)
    assert not any(name[:20] in w or subject[:20] in w for w in warnings)  # lengths logged, not the text


@pytest.mark.parametrize("value", ["A" * 100, "Über" + "x" * 90, "x " * 10 + "y" * 80, "a.b@c " + "z" * 75])
def test_a_long_word_under_the_cap_is_encoded_so_it_folds(crm_log, value):
    raw = build(value, value, to="a@example.com")
    # crm_log listens on the package's logger itself: this holds whatever an earlier CLI run did (issue #17).
    assert not [r for r in crm_log if r.levelno >= logging.WARNING]
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == value
    assert to_name(raw) == value and msg["To"].addresses[0].addr_spec == "a@example.com"


def test_short_ascii_values_stay_readable():
    raw = build("Hello Bob, your quote", "Bob Smith")
    assert b"\r\nSubject: Hello Bob, your quote\r\n" in raw and b"\r\nTo: Bob Smith <long.name@example.com>\r\n" in raw


def test_a_header_that_cannot_be_folded_under_998_is_a_data_error():
    r = Rendered(subject="x", text="t", html=None, reply_to=None)
    with pytest.raises(DataError, match=r"List-Unsubscribe.*1,0\d\d characters.*998"):
        build_message(r, sender="s@example.com", to_name=None, to_email="a@example.com", message_id="<1@x>",
                      now=datetime(2026, 11, 27, tzinfo=UTC), list_unsubscribe=f"<https://x.example/{'u' * 1000}>")
