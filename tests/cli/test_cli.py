"""CLI behaviour: exit codes, messages without tracebacks, the lock, --json, dry runs."""

from __future__ import annotations

import json

import pytest
from filelock import FileLock

from tests.fixtures.core import db_rows, make_workspace, run_subprocess

CAMPAIGN = """
[[campaign]]
id = "hello"
template = "hello"
trigger = "new"
include_existing = true
"""


def _command_tree(cmd, path=()):
    """Every command under ``cmd`` with its path of names, found by walking click's tree (groups and their verbs)."""
    import click

    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from _command_tree(sub, (*path, name))


def test_every_verb_has_help(cli):
    """Each command, subcommands of groups (``suppress add``...) included, has help text and answers --help.

    The tree is walked (issue #17): a verb or group added later is covered without editing this test.
    """
    import click

    from crm_automation.cli import cli as group

    tree = list(_command_tree(group))[1:]
    assert {" ".join(p) for p, _ in tree} >= {"check", "send", "suppress", "suppress add", "suppress remove",
                                               "suppress list"}
    for path, cmd in tree:
        name = " ".join(path)
        assert cmd.help, f"{name} has no help text"
        r = cli(*path, "--help")
        assert r.code == 0, (name, r.err)
        assert f"Usage: crm-automation {name}" in r.out, (name, r.out)
        assert " ".join(cmd.help.splitlines()[0].split()) in " ".join(r.out.split())  # its own help, wrapped
        if isinstance(cmd, click.Group):  # a group lists each of its verbs
            assert cmd.commands and all(sub in r.out for sub in cmd.commands), (name, r.out)


def test_config_error_exits_2_with_file_and_key_and_no_traceback(tmp_path):
    cfg = make_workspace(tmp_path / "ws", extra_config="max_per_hour = 5\n")
    r = run_subprocess("sync", "--config", str(cfg))
    assert r.code == 2
    assert "outbound.max_per_hour is not a known key" in r.err
    assert str(cfg) in r.err
    assert "Traceback" not in r.err


def test_missing_config_file_exits_2(tmp_path, cli):
    r = cli("sync", "--config", str(tmp_path / "nope.toml"))
    assert r.code == 2
    assert "config file not found" in r.err and "hint:" in r.err


def test_unknown_verb_and_bad_option_exit_2(cli):
    assert cli("frobnicate").code == 2
    assert cli("send", "--limit", "zero").code == 2


def test_mapping_error_names_file_and_field(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", mapping='key = "mail"\n[fields]\nemail = { column = "Email", type = "emial" }\n')
    r = cli("check", "--config", str(cfg))
    assert r.code == 2
    assert "customers.toml" in r.out
    assert "fields.email.type" in r.out and "'emial'" in r.out


def test_missing_required_column_lists_headers_found(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", rows=[{"E-mail": "a@example.com", "Name": "A"}])
    r = cli("sync", "--config", str(cfg))
    assert r.code == 2
    assert 'required column "Email" (field email) not found' in r.err
    assert 'headers found: "E-mail", "Name"' in r.err


def test_bad_rows_are_reported_and_the_rest_processed(tmp_path, cli):
    rows = [{"Email": "ok@example.com", "Name": "Ok", "Stage": "", "Owner": ""},
            {"Email": "bob@", "Name": "Bob", "Stage": "", "Owner": ""},
            {"Email": "ok@example.com", "Name": "Dup", "Stage": "", "Owner": ""},
            {"Email": "x@example.com", "Name": "", "Stage": "", "Owner": ""}]
    cfg = make_workspace(tmp_path / "ws", rows=rows)
    r = cli("sync", "--config", str(cfg), "--json")
    assert r.code == 1
    out = json.loads(r.out)["stages"][0]
    assert out["stats"]["added"] == 1 and out["stats"]["rejected"] == 3
    probs = "\n".join(out["problems"])
    assert "customers.csv row 3, \"Email\": 'bob@' is not an address" in probs
    assert "row 4" in probs and "duplicates the key of row 2" in probs
    assert "row 5, \"Name\" is empty (expected a value: the column is required)" in probs


def test_lock_prevents_two_workers(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws")
    lock = FileLock(str(tmp_path / "ws" / "var" / "crm.sqlite.lock"))
    (tmp_path / "ws" / "var").mkdir(parents=True, exist_ok=True)
    with lock:
        r = run_subprocess("run", "--once", "--config", str(cfg))
        assert r.code == 2
        assert "another crm-automation worker is running" in r.err
    assert run_subprocess("run", "--once", "--config", str(cfg)).code == 0


def test_unreachable_sheet_exits_3(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws")
    (tmp_path / "ws" / "customers.csv").unlink()
    r = cli("sync", "--config", str(cfg))
    assert r.code == 3
    assert "customers.csv" in r.err


def test_dry_run_sends_and_records_nothing(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN)
    assert cli("sync", "--config", str(cfg)).code == 0
    r = cli("send", "--dry-run", "--config", str(cfg), "--json")
    assert r.code == 0, r.err
    out = json.loads(r.out)["stages"][0]
    assert out["stats"]["would_send"] == 3
    assert {d["subject"] for d in out["details"]} == {f"Hello Customer {i}" for i in range(3)}
    db = tmp_path / "ws" / "var" / "crm.sqlite"
    assert db_rows(db, "SELECT COUNT(*) FROM sends") == [(0,)]
    assert db_rows(db, "SELECT COUNT(*) FROM campaigns") == [(0,)]
    assert not list((tmp_path / "ws" / "var").glob("outbox/*.eml"))
    r = cli("send", "--dry-run", "--config", str(cfg))
    assert "would send hello/0 -> c0@example.com Hello Customer 0" in r.out
    assert "nothing was sent or recorded" in r.out
    r = cli("send", "--config", str(cfg))
    assert r.code == 0
    assert len(list((tmp_path / "ws" / "var" / "outbox").glob("*.eml"))) == 3


def test_template_with_unmapped_variable_fails_check_before_sending(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN,
                         templates={"hello.txt": "Subject: Hi {{ customer.nickname }}\n\nx\n"})
    r = cli("check", "--config", str(cfg))
    assert r.code == 2
    assert "uses customer.nickname, which is not a field" in r.out


def test_template_typo_holds_the_campaign_queued_and_it_goes_after_the_fix(tmp_path, cli):
    # Issue #9: a typo used to fail every due send, and nothing went after the fix without requeue.
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN,
                         templates={"hello.txt": "Subject: Hi\n\n{{ customer.nickname }}\n"})
    cli("sync", "--config", str(cfg))
    r = cli("send", "--config", str(cfg))
    assert r.code == 2
    assert "hello.txt line 3: uses customer.nickname" in r.err and "held" in r.err
    db = tmp_path / "ws" / "var" / "crm.sqlite"
    assert db_rows(db, "SELECT DISTINCT status FROM sends") == [("queued",)]
    assert db_rows(db, "SELECT COUNT(*) FROM activities WHERE kind = 'send_failed'") == [(0,)]
    assert not list((tmp_path / "ws" / "var" / "outbox").glob("*.eml"))
    (tmp_path / "ws" / "email_templates" / "hello.txt").write_text("Subject: Hi\n\n{{ customer.name }}\n")
    assert cli("send", "--config", str(cfg)).code == 0
    assert db_rows(db, "SELECT DISTINCT status FROM sends") == [("sent",)]
    assert len(list((tmp_path / "ws" / "var" / "outbox").glob("*.eml"))) == 3


def test_timeline_report_and_suppress(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN)
    assert cli("suppress", "add", "C1@example.com", "--config", str(cfg)).code == 0
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    r = cli("report", "--config", str(cfg), "--json")
    row = json.loads(r.out)["campaigns"][0]
    assert (row["campaign"], row["sent"], row["skipped"]) == ("hello", 2, 1)
    r = cli("timeline", "c0@example.com", "--config", str(cfg))
    assert r.code == 0 and "customer_added" in r.out and "email_out" in r.out
    r = cli("suppress", "list", "--config", str(cfg), "--json")
    assert [s["email"] for s in json.loads(r.out)["suppressions"]] == ["c1@example.com"]
    assert cli("suppress", "remove", "c1@example.com", "--config", str(cfg)).code == 0
    assert cli("timeline", "nobody@example.com", "--config", str(cfg)).code == 2
    r = cli("report", "--config", str(cfg), "--csv")
    assert r.out.splitlines()[0].startswith("campaign,step,queued,sent")


@pytest.mark.parametrize("when", ["not-a-date", "2026-13-01"])
def test_bad_now_is_a_usage_error(tmp_path, cli, when):
    cfg = make_workspace(tmp_path / "ws")
    r = cli("sync", "--config", str(cfg), "--now", when)
    assert r.code == 2
    assert "is not a date and time" in r.err


def test_now_ahead_of_the_real_time_shows_what_is_due_then(tmp_path, cli):
    """The quickstart's `send --dry-run --now +3d` works on any date (issue #17 item 12)."""
    camp = ('[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
            'follow_up = [{ after_days = 3, template = "hello", id = "again" }]\n')
    cfg = make_workspace(tmp_path / "ws", campaigns=camp)
    assert cli("run", "--once", "--config", str(cfg)).code == 0  # the first emails go now, really now
    for ahead, due in (("+2d", 0), ("+3d", 3), ("+73h", 3)):
        r = cli("send", "--dry-run", "--now", ahead, "--config", str(cfg), "--json")
        assert r.code == 0, r.err
        assert json.loads(r.out)["stages"][-1]["stats"]["would_send"] == due, ahead
    r = cli("send", "--dry-run", "--now", "+3x", "--config", str(cfg))
    assert r.code == 2 and "is not a time ahead" in r.err


def test_suppress_with_reason_sets_and_clears_email_status(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws")
    cli("sync", "--config", str(cfg))
    db = tmp_path / "ws" / "var" / "crm.sqlite"
    assert cli("suppress", "add", "c2@example.com", "--reason", "unsubscribed", "--config", str(cfg)).code == 0
    assert db_rows(db, "SELECT email_status FROM customers WHERE key = 'c2@example.com'") == [("unsubscribed",)]
    assert cli("suppress", "remove", "c2@example.com", "--config", str(cfg)).code == 0
    assert db_rows(db, "SELECT email_status FROM customers WHERE key = 'c2@example.com'") == [("ok",)]


def test_resync_tracks_changes_and_removals_and_skips_an_unchanged_file(tmp_path, cli):
    import csv as csv_mod

    cfg = make_workspace(tmp_path / "ws", rows=[
        {"Email": f"c{i}@example.com", "Name": f"Customer {i}", "Stage": "lead", "Owner": "owner@example.com"}
        for i in range(3)] + [{"Email": "typo@example.com", "Name": "", "Stage": "lead", "Owner": "x"}])
    r = cli("sync", "--config", str(cfg), "--json")
    st = json.loads(r.out)["stages"][0]["stats"]
    # typo: no name, bad owner: two problems, one rejected row (issue #17)
    assert (st["rows"], st["added"], st["unchanged"], st["rejected"]) == (4, 3, 0, 1)
    assert len(json.loads(r.out)["stages"][0]["problems"]) == 2
    r = cli("sync", "--config", str(cfg), "--json")
    st = json.loads(r.out)["stages"][0]["stats"]
    assert st["note"] == "sheet unchanged since the last sync"
    assert (st["rows"], st["added"], st["unchanged"], st["rejected"]) == (4, 0, 3, 1)
    path = tmp_path / "ws" / "customers.csv"
    rows = list(csv_mod.DictReader(path.open(encoding="utf-8")))
    rows[0]["Stage"] = "won"
    rows.reverse()  # the team sorted the sheet
    rows = [r for r in rows if r["Email"] != "c2@example.com"]  # ... and deleted c2
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv_mod.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    r = cli("sync", "--config", str(cfg), "--json")
    st = json.loads(r.out)["stages"][0]["stats"]
    assert (st["changed"], st["removed"], st["unchanged"]) == (1, 1, 1)
    db = tmp_path / "ws" / "var" / "crm.sqlite"
    details = db_rows(db, "SELECT details FROM activities WHERE kind = 'field_changed'")
    assert json.loads(details[0][0])["old"] == "lead" and json.loads(details[0][0])["new"] == "won"
    assert db_rows(db, "SELECT key, present FROM customers WHERE key = 'c2@example.com'") == [("c2@example.com", 0)]
    assert db_rows(db, "SELECT COUNT(*) FROM activities WHERE customer_key = 'c2@example.com'") == [(2,)]


def test_preview_renders_to_terminal_and_eml(tmp_path, cli):
    import email as email_mod

    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN)
    cli("sync", "--config", str(cfg))
    r = cli("preview", "hello", "--customer", "C0@example.com", "--config", str(cfg))
    assert r.code == 0 and "Subject: Hello Customer 0" in r.out and "Hi Customer 0" in r.out
    out = tmp_path / "p.eml"
    assert cli("preview", "hello", "--customer", "c0@example.com", "--out", str(out), "--config", str(cfg)).code == 0
    msg = email_mod.message_from_bytes(out.read_bytes())
    assert msg["To"] == "Customer 0 <c0@example.com>" and msg["List-Unsubscribe"]
    assert cli("preview", "hello", "--customer", "nobody@example.com", "--config", str(cfg)).code == 2
    db = tmp_path / "ws" / "var" / "crm.sqlite"
    assert db_rows(db, "SELECT COUNT(*) FROM sends") == [(0,)]  # a preview sends and records nothing
