"""Issue #17 item 11: a template's empty ``Subject:`` is refused naming file and line; a BOM is not part of it."""

from __future__ import annotations

import codecs
from zoneinfo import ZoneInfo

import pytest

from crm_automation.errors import ConfigError
from crm_automation.templating import Templates


def test_a_template_with_a_utf8_bom_renders_without_it(tmp_path):
    (tmp_path / "hi.txt").write_bytes(codecs.BOM_UTF8 + "Subject: 您好\n\n正文\n".encode())
    t = Templates(tmp_path, ZoneInfo("Asia/Shanghai"))
    assert t.check("hi", set()) == []
    r = t.render("hi", {"customer": {}, "campaign": {}, "sender": {}, "unsubscribe": "", "now": None})
    assert (r.subject, r.text) == ("您好", "正文\n")


# -- an empty Subject -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["Subject:\n\nbody\n", "Subject:   \n\nbody\n", "Reply-To: a@example.com\nSubject:\n\nb\n"])
def test_an_empty_subject_is_refused_naming_file_and_line(tmp_path, text):
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    t = Templates(tmp_path, ZoneInfo("UTC"))
    line = text.split("\n").index(next(x for x in text.split("\n") if x.startswith("Subject:"))) + 1
    (msg,) = t.check("t", set())
    assert msg.startswith(f"{tmp_path / 't.txt'} line {line}: the Subject: header is empty")
    with pytest.raises(ConfigError, match="Subject: header is empty"):
        t.load("t")
