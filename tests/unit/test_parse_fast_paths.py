"""parse's fast paths answer exactly as the stdlib does (issue #13): addresses and dates.

They answer common shapes with one regex and hand everything else to
``email.utils``; these tests compare the two on every From/To/Cc header of
the corpus and on thousands of generated headers built from the fragments
that trip address parsers: comments, quotes with commas and escapes, dots
and specials in names, encoded words, CJK, raw 8-bit bytes (as the parser's
surrogates), tabs, runs of spaces, folded lines, groups, routes, empty list
members.
"""

from __future__ import annotations

import email
import email.utils
import random
from pathlib import Path

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
    from crm_automation import parse

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
