"""Templates as on disk (issue #17, item 5): what ``check`` reads is what is rendered, from the next pass on.

The worker calls ``Templates.check`` for every campaign template and
``Templates.revalidate`` once a send pass; rendering (once a message) reads
no file. An edit saved within the same mtime tick, with the same size and
inode, must count: only the content says it changed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from crm_automation.errors import ConfigError
from crm_automation.templating import Templates

TZ = ZoneInfo("Asia/Shanghai")
FIELDS = {"name"}


def ctx(name: str = "Bob") -> dict:
    return {"customer": {"name": name}, "campaign": {"id": "c"}, "sender": {"name": "S"}, "unsubscribe": "u",
            "now": None}


def write(folder: Path, files: dict[str, str]) -> None:
    for k, v in files.items():
        (folder / k).write_text(v, encoding="utf-8")


def edit_in_same_tick(path: Path, text: str) -> None:
    """Rewrite ``path`` in place keeping its size, inode and mtime: only the content differs."""
    before = path.stat()
    assert len(text.encode()) == before.st_size
    with path.open("r+b") as f:  # in place: the same inode
        f.write(text.encode())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)


def test_an_edit_in_the_same_mtime_tick_is_rendered_after_the_next_check(tmp_path):
    write(tmp_path, {"w.txt": "Subject: v1 {{ customer.name }}\n\nbody one\n"})
    t = Templates(tmp_path, TZ)
    assert t.check("w", FIELDS) == []
    assert t.render("w", ctx()).subject == "v1 Bob"
    edit_in_same_tick(tmp_path / "w.txt", "Subject: v2 {{ customer.name }}\n\nbody two\n")
    assert t.check("w", FIELDS) == []
    r = t.render("w", ctx())
    assert (r.subject, r.text) == ("v2 Bob", "body two\n")


@pytest.mark.parametrize("changed", ["_layout.html", "_sig.txt", "w.html"])
def test_an_edited_layout_include_or_html_part_is_used_after_the_next_check(tmp_path, changed):
    files = {"w.txt": "Subject: hi\n\nDear {{ customer.name }}\n{% include '_sig.txt' %}",
             "w.html": "{% extends '_layout.html' %}{% block body %}<p>HTML-A</p>{% endblock %}",
             "_layout.html": "<html><body>LAYOUT-A{% block body %}{% endblock %}</body></html>",
             "_sig.txt": "SIG-A\n"}
    write(tmp_path, files)
    t = Templates(tmp_path, TZ)
    assert t.check("w", FIELDS) == []
    first = t.render("w", ctx())
    assert "SIG-A" in first.text and "LAYOUT-A" in (first.html or "") and "HTML-A" in (first.html or "")
    edit_in_same_tick(tmp_path / changed, files[changed].replace("-A", "-B"))
    assert t.check("w", FIELDS) == []
    again = t.render("w", ctx())
    assert ("SIG-B" in again.text) == (changed == "_sig.txt")
    assert ("LAYOUT-B" in (again.html or "")) == (changed == "_layout.html")
    assert ("HTML-B" in (again.html or "")) == (changed == "w.html")


def test_a_syntax_error_holds_and_its_fix_is_rendered(tmp_path):
    write(tmp_path, {"w.txt": "Subject: v1\n\nok {{ customer.name }}\n"})
    t = Templates(tmp_path, TZ)
    assert t.check("w", FIELDS) == []
    (tmp_path / "w.txt").write_text("Subject: v2\n\nbroken {{ customer.name \n", encoding="utf-8")
    problems = t.check("w", FIELDS)
    assert problems and "w.txt line 3" in problems[0] and "syntax error" in problems[0]
    with pytest.raises(ConfigError, match="syntax error"):  # the old version is not rendered either
        t.render("w", ctx())
    (tmp_path / "w.txt").write_text("Subject: v3\n\nfixed {{ customer.name }}\n", encoding="utf-8")
    assert t.check("w", FIELDS) == []
    assert t.render("w", ctx()).text == "fixed Bob\n"


def test_a_broken_layout_holds_and_its_fix_is_rendered(tmp_path):
    write(tmp_path, {"w.txt": "Subject: s\n\nt\n", "w.html": "{% extends '_l.html' %}{% block b %}B{% endblock %}",
                     "_l.html": "<i>L1</i>{% block b %}{% endblock %}"})
    t = Templates(tmp_path, TZ)
    assert t.check("w", FIELDS) == []
    assert "L1" in (t.render("w", ctx()).html or "")
    (tmp_path / "_l.html").write_text("<i>L2</i>{% block b %}{% endblock", encoding="utf-8")
    assert any("_l.html" in p for p in t.check("w", FIELDS))
    (tmp_path / "_l.html").write_text("<i>L3</i>{% block b %}{% endblock %}", encoding="utf-8")
    assert t.check("w", FIELDS) == []
    assert "L3" in (t.render("w", ctx()).html or "")


def test_rendering_reads_no_file_once_checked(tmp_path):
    """The send loop renders once a message: after the pass's check, no template file is opened again."""
    folder = tmp_path / "t"
    folder.mkdir()
    write(folder, {"w.txt": "Subject: s\n\n{{ customer.name }} {% include '_sig.txt' %}",
                   "w.html": "{% extends '_l.html' %}{% block b %}{{ customer.name }}{% endblock %}",
                   "_l.html": "<p>{% block b %}{% endblock %}</p>", "_sig.txt": "sig"})
    t = Templates(folder, TZ)
    assert t.check("w", FIELDS) == []
    shutil.move(folder, tmp_path / "gone")  # every file out of reach
    for name in ("Ann", "Bob", "Cy"):
        r = t.render("w", ctx(name))
        assert r.text == f"{name} sig" and r.html == f"<p>{name}</p>"


def test_revalidate_forgets_a_template_rendered_without_a_check(tmp_path):
    """The owner notification is no campaign template: revalidate (once a pass) makes its edits count."""
    write(tmp_path, {"_owner_notification.txt": "Subject: N1\n\n{% include '_sig.txt' %}", "_sig.txt": "S1"})
    t = Templates(tmp_path, TZ)
    r = t.render("_owner_notification", ctx())
    assert (r.subject, r.text) == ("N1", "S1")
    edit_in_same_tick(tmp_path / "_owner_notification.txt", "Subject: N2\n\n{% include '_sig.txt' %}")
    edit_in_same_tick(tmp_path / "_sig.txt", "S2")
    assert t.render("_owner_notification", ctx()).subject == "N1"  # not re-read per message
    t.revalidate()
    r = t.render("_owner_notification", ctx())
    assert (r.subject, r.text) == ("N2", "S2")


def test_a_deleted_template_is_reported_by_the_next_check(tmp_path):
    write(tmp_path, {"w.txt": "Subject: s\n\nt\n"})
    t = Templates(tmp_path, TZ)
    assert t.check("w", FIELDS) == []
    (tmp_path / "w.txt").unlink()
    assert "template not found" in t.check("w", FIELDS)[0]
    with pytest.raises(ConfigError, match="template not found"):
        t.render("w", ctx())
