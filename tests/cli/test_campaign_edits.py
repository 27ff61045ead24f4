"""Issue #17 items 1-2: an admin's edits of campaigns.toml never mail a customer a step twice.

Each test runs real passes (``run --once`` through the CLI, days apart with
``--now``) against a real SMTP server (aiosmtpd) that counts what each
address received, and edits ``mappings/campaigns.toml`` between them as an
admin would: inserting, removing, reordering and renaming steps, renaming a
campaign. What each address received is read from the server, never from
the log.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter

import pytest

from tests.cli.test_hardening import add_row
from tests.fixtures.core import db_rows, make_workspace

TEMPLATES = {f"{n}.txt": f"Subject: {n.title()} for {{{{ customer.name }}}}\n\nHello {{{{ customer.name }}}}\n"
             for n in ("welcome", "tips", "followup", "followup_v2", "last", "offer")}


def welcome(*steps: str, extra: str = "") -> str:
    """A `new` campaign mailing everyone, with the follow-ups given as TOML inline tables."""
    follow = f"follow_up = [{', '.join(steps)}]\n" if steps else ""
    return ('[[campaign]]\nid = "welcome"\ntemplate = "welcome"\ntrigger = "new"\ninclude_existing = true\n'
            + follow + extra)


def rows(*names: str) -> list[dict[str, str]]:
    return [{"Email": f"{n}@example.com", "Name": n, "Stage": "lead", "Owner": ""} for n in names]


@pytest.fixture
def ws(tmp_path, smtpd):
    outbound = (f'transport = "smtp"\nhost = "{smtpd.host}"\nport = {smtpd.port}\nsecurity = "none"\n'
                'timeout = 10')

    def make(campaigns: str, people: list[dict[str, str]]):
        return make_workspace(tmp_path / "ws", rows=people, campaigns=campaigns, templates=TEMPLATES,
                              outbound=outbound)

    return make


def received(smtpd) -> Counter[tuple[str, str]]:
    """(address, template) -> how many times the server received it."""
    out: Counter[tuple[str, str]] = Counter()
    for m in smtpd.messages:
        subject = m.message["Subject"]
        out[(m.rcpt_tos[0], subject.split(" for ")[0].lower())] += 1
    return out


def run(cli, cfg, day: int, *extra: str):
    return cli("run", "--once", "--config", str(cfg), "--now", f"2026-11-{day:02d}T10:00", "--json", *extra)


def edit(cfg, campaigns: str) -> None:
    (cfg.parent / "mappings" / "campaigns.toml").write_text(campaigns, encoding="utf-8")


def send_stage(r):
    return next(s for s in json.loads(r.out)["stages"] if s["job"] == "send")


def test_inserted_step_goes_only_to_who_has_not_passed_it_and_the_old_follow_up_is_never_resent(ws, cli, smtpd):
    cfg = ws(welcome('{ after_days = 3, template = "followup" }'), rows("a", "b"))
    assert run(cli, cfg, 1).code == 0                      # a, b: welcome
    add_row(cfg, rows("c")[0])
    assert run(cli, cfg, 3).code == 0                      # c: welcome
    assert run(cli, cfg, 4).code == 0                      # a, b: followup (3 days after day 1)
    # The admin inserts a step between the two.
    edit(cfg, welcome('{ after_days = 1, template = "tips" }', '{ after_days = 3, template = "followup" }'))
    for day in (5, 6, 7, 8):
        assert run(cli, cfg, day).code == 0
    got = received(smtpd)
    assert got == Counter({("a@example.com", "welcome"): 1, ("a@example.com", "followup"): 1,
                           ("b@example.com", "welcome"): 1, ("b@example.com", "followup"): 1,
                           ("c@example.com", "welcome"): 1, ("c@example.com", "tips"): 1,
                           ("c@example.com", "followup"): 1})
    db = cfg.parent / "var" / "crm.sqlite"
    skipped = dict(db_rows(db, "SELECT customer_key, error FROM sends WHERE step_id = 'tips' AND status = 'skipped'"))
    assert set(skipped) == {"a@example.com", "b@example.com"}
    assert "after the customer had passed it" in skipped["a@example.com"] and "'followup'" in skipped["a@example.com"]


def test_removing_and_reordering_steps_never_resends_one(ws, cli, smtpd):
    three = ('{ after_days = 3, template = "followup" }', '{ after_days = 7, template = "last" }')
    cfg = ws(welcome(*three), rows("a", "b"))
    assert run(cli, cfg, 1).code == 0
    assert run(cli, cfg, 4).code == 0                      # followup to both
    # Reordered: "last" now comes before "followup" (days adjusted, as the file requires).
    edit(cfg, welcome('{ after_days = 5, template = "last" }', '{ after_days = 8, template = "followup" }'))
    for day in (6, 9, 10):
        assert run(cli, cfg, day).code == 0
    # Then "last" is removed again and an extra step appended.
    edit(cfg, welcome('{ after_days = 8, template = "followup" }'))
    for day in (11, 12):
        assert run(cli, cfg, day).code == 0
    got = received(smtpd)
    assert all(n == 1 for n in got.values()), got
    assert {t for _, t in got} == {"welcome", "followup"}  # "last" was passed by both before it moved ahead


def test_a_step_that_is_still_due_after_a_reorder_is_sent_once(ws, cli, smtpd):
    cfg = ws(welcome('{ after_days = 3, template = "followup" }', '{ after_days = 7, template = "last" }'),
             rows("a"))
    assert run(cli, cfg, 1).code == 0
    # Before anything but the welcome went, the two follow-ups swap places.
    edit(cfg, welcome('{ after_days = 3, template = "last" }', '{ after_days = 7, template = "followup" }'))
    for day in (4, 8, 9):
        assert run(cli, cfg, day).code == 0
    assert received(smtpd) == Counter({("a@example.com", "welcome"): 1, ("a@example.com", "last"): 1,
                                       ("a@example.com", "followup"): 1})


def test_a_renamed_campaign_is_held_until_the_admin_says_what_it_is(ws, cli, smtpd):
    at = '[[campaign]]\nid = "{id}"\ntemplate = "offer"\ntrigger = "at"\nat = "2026-11-02T09:00"\n{extra}'
    cfg = ws(at.format(id="year-end", extra=""), rows("a", "b"))
    assert run(cli, cfg, 3).code == 0
    assert len(smtpd.messages) == 2
    # Renamed: the same broadcast under a new id would go to everyone again.
    edit(cfg, at.format(id="year-end-2026", extra=""))
    r = run(cli, cfg, 4)
    assert r.code == 2, r.out
    problems = " ".join(send_stage(r)["problems"])
    assert "'year-end-2026' held" in problems and "'year-end'" in problems and "renamed_from" in problems
    assert len(smtpd.messages) == 2
    # `check --plan` names both campaigns too.
    r = cli("check", "--plan", "--config", str(cfg), "--now", "2026-11-04T10:00")
    assert "year-end-2026" in r.out and "'year-end'" in r.out and "held" in r.out, r.out
    # Declared a rename: it inherits the sends; nobody is mailed again, and the log reads as one campaign.
    edit(cfg, at.format(id="year-end-2026", extra='renamed_from = "year-end"\n'))
    assert run(cli, cfg, 5).code == 0
    assert len(smtpd.messages) == 2
    db = cfg.parent / "var" / "crm.sqlite"
    assert db_rows(db, "SELECT DISTINCT campaign FROM sends") == [("year-end-2026",)]
    # Later the renamed_from line is removed: still nobody is mailed again.
    edit(cfg, at.format(id="year-end-2026", extra=""))
    assert run(cli, cfg, 6).code == 0
    assert len(smtpd.messages) == 2


def test_resend_true_says_a_campaign_reusing_a_template_is_a_new_mailing(ws, cli, smtpd):
    at = '[[campaign]]\nid = "{id}"\ntemplate = "offer"\ntrigger = "at"\nat = "2026-11-02T09:00"\n{extra}'
    cfg = ws(at.format(id="nov", extra=""), rows("a"))
    assert run(cli, cfg, 3).code == 0
    edit(cfg, at.format(id="dec", extra="resend = true\n"))
    assert run(cli, cfg, 4).code == 0
    assert received(smtpd) == Counter({("a@example.com", "offer"): 2})


def test_a_step_whose_template_changed_after_it_went_out_is_held_for_who_had_it(ws, cli, smtpd):
    cfg = ws(welcome('{ after_days = 3, template = "followup" }'), rows("a"))
    assert run(cli, cfg, 1).code == 0
    add_row(cfg, rows("b")[0])
    assert run(cli, cfg, 3).code == 0                      # b: welcome
    assert run(cli, cfg, 4).code == 0                      # a: followup
    # The admin points the step at a new file: the same email renamed, or a new one? Unclear.
    edit(cfg, welcome('{ after_days = 3, template = "followup_v2" }'))
    r = run(cli, cfg, 6)                                   # b is due: b never had "followup", so b gets v2
    assert r.code == 2
    assert any("'followup_v2' appeared" in p and "renamed_from" in p for p in send_stage(r)["problems"])
    assert received(smtpd)[("b@example.com", "followup_v2")] == 1
    assert received(smtpd)[("a@example.com", "followup_v2")] == 0
    assert run(cli, cfg, 7).code == 2                      # still held: the hold lasts until it is resolved
    # It is the same email renamed: a does not get it again, and the pass is clean.
    edit(cfg, welcome('{ after_days = 3, template = "followup_v2", renamed_from = "followup" }'))
    assert run(cli, cfg, 8).code == 0
    assert received(smtpd)[("a@example.com", "followup_v2")] == 0
    assert all(n == 1 for n in received(smtpd).values())


def test_resend_on_a_step_sends_the_new_email_to_who_had_the_old_one(ws, cli, smtpd):
    cfg = ws(welcome('{ after_days = 3, template = "followup" }'), rows("a"))
    assert run(cli, cfg, 1).code == 0
    assert run(cli, cfg, 4).code == 0
    edit(cfg, welcome('{ after_days = 3, template = "followup_v2", resend = true }'))
    assert run(cli, cfg, 5).code == 0
    assert received(smtpd)[("a@example.com", "followup_v2")] == 1
    # ... once: the next pass sends nothing.
    assert run(cli, cfg, 6).code == 0
    assert len(smtpd.messages) == 3


def test_an_explicit_id_keeps_a_step_whose_template_is_renamed(ws, cli, smtpd):
    cfg = ws(welcome('{ after_days = 3, template = "followup", id = "nudge" }'), rows("a"))
    assert run(cli, cfg, 1).code == 0
    assert run(cli, cfg, 4).code == 0
    edit(cfg, welcome('{ after_days = 3, template = "followup_v2", id = "nudge" }'))
    assert run(cli, cfg, 5).code == 0
    assert len(smtpd.messages) == 2


def _as_before_issue_17(db) -> None:
    """Turn a log into what schema 3 wrote: steps by place only, no record of the campaigns' steps."""
    con = sqlite3.connect(db)
    with con:
        # what later schemas added (5: sends.kind; 6: planning by question; 7: tracking; 12: workers; 14: the
        # account in idx_sends_sent) goes first
        for index in ("idx_sends_holder", "idx_sends_sent"):
            con.execute(f"DROP INDEX IF EXISTS {index}")
        for col in ("holder", "account"):
            con.execute(f"ALTER TABLE sends DROP COLUMN {col}")
        for table in ("send_links", "send_opens", "workers"):
            con.execute(f"DROP TABLE IF EXISTS {table}")
        for index in ("idx_sends_customer", "idx_sends_queued", "idx_sends_sending", "idx_sends_uncertain",
                      "idx_sends_sent", "idx_sends_legacy"):
            con.execute(f"DROP INDEX IF EXISTS {index}")
        con.execute("DROP TABLE IF EXISTS plan_due")
        con.execute("ALTER TABLE campaigns DROP COLUMN planned_as")
        con.execute("ALTER TABLE sends DROP COLUMN kind")
        con.execute("DELETE FROM meta WHERE key LIKE 'plan_%'")
        con.execute("DELETE FROM _migrations WHERE name >= '0005'")
        con.execute("DROP INDEX idx_sends_campaign_step_id_customer")
        con.execute("ALTER TABLE sends DROP COLUMN step_id")
        con.execute('CREATE UNIQUE INDEX "idx_sends_campaign_step_customer_key" ON "sends" '
                    '("campaign", "step", "customer_key")')
        con.execute("DROP TABLE campaign_steps")
        for col in ("renamed_to", "expanded_at", "expanded_as"):
            con.execute(f"ALTER TABLE campaigns DROP COLUMN {col}")
        con.execute("DELETE FROM _migrations WHERE name = '0004_step_identity'")
        con.execute("PRAGMA user_version = 3")
    con.close()


def test_a_log_from_before_the_upgrade_migrates_without_a_send_repeated(ws, cli, smtpd):
    two = welcome('{ after_days = 3, template = "followup" }', '{ after_days = 7, template = "last" }')
    broadcast = "\n" + AT.format(where="")
    cfg = ws(two + broadcast, rows("a", "b"))
    for day in (1, 2, 4):
        assert run(cli, cfg, day).code == 0
    db = cfg.parent / "var" / "crm.sqlite"
    _as_before_issue_17(db)
    # The upgraded worker runs once on the file the log was built on, then the admin inserts a step.
    assert run(cli, cfg, 5).code == 0
    assert db_rows(db, "SELECT COUNT(*) FROM sends WHERE step_id IS NULL") == [(0,)]
    edit(cfg, welcome('{ after_days = 2, template = "tips" }', '{ after_days = 3, template = "followup" }',
                      '{ after_days = 7, template = "last" }') + broadcast)
    add_row(cfg, rows("c")[0])  # joins after the broadcast went out (before the upgrade): no broadcast for c
    for day in (6, 8, 9):
        assert run(cli, cfg, day).code == 0
    got = received(smtpd)
    assert all(n == 1 for n in got.values()), got
    assert ("a@example.com", "last") in got and ("a@example.com", "tips") not in got
    assert ("a@example.com", "offer") in got and ("c@example.com", "offer") not in got
    assert ("c@example.com", "welcome") in got


def test_two_steps_with_one_template_keep_apart_and_a_duplicate_id_is_refused(ws, cli, smtpd):
    cfg = ws(welcome('{ after_days = 3, template = "welcome" }'), rows("a"))
    for day in (1, 4, 5):
        assert run(cli, cfg, day).code == 0
    assert received(smtpd) == Counter({("a@example.com", "welcome"): 2})
    assert db_rows(cfg.parent / "var" / "crm.sqlite", "SELECT step_id FROM sends ORDER BY id") == [
        ("welcome",), ("welcome#2",)]
    edit(cfg, welcome('{ after_days = 3, template = "tips", id = "welcome" }'))
    r = cli("check", "--config", str(cfg))
    assert r.code == 2 and "same id" in r.out and "follow_up[0]" in r.out, r.out


def test_check_plan_shows_what_an_insert_changes_for_customers_in_the_sequence(ws, cli, smtpd):
    cfg = ws(welcome('{ after_days = 3, template = "followup" }'), rows("a", "b"))
    assert run(cli, cfg, 1).code == 0
    assert run(cli, cfg, 4).code == 0
    add_row(cfg, rows("c")[0])
    assert run(cli, cfg, 5).code == 0
    edit(cfg, welcome('{ after_days = 1, template = "tips" }', '{ after_days = 3, template = "followup" }'))
    r = cli("check", "--plan", "--config", str(cfg), "--now", "2026-11-06T10:00", "--json")
    assert r.code == 0, r.out
    plan = next(c for c in json.loads(r.out)["checks"] if c["name"] == "plan")
    welcome_plan = plan["campaigns"]["welcome"]
    assert any("'tips' inserted" in line for line in welcome_plan["changes"])
    tips = welcome_plan["steps"]["tips"]
    assert (tips["past"], tips["due_now"], tips["later"]) == (2, 1, 0)
    # check --plan records nothing: the real pass still sees the edit.
    assert db_rows(cfg.parent / "var" / "crm.sqlite", "SELECT COUNT(*) FROM campaign_steps WHERE step_id = 'tips'") == [
        (0,)]


def test_a_queued_send_of_a_step_removed_meanwhile_is_skipped_with_the_reason(ws, cli, smtpd):
    cfg = ws(welcome('{ after_days = 3, template = "followup" }'), rows("a"))
    cfg.write_text(cfg.read_text().replace("max_per_day = 0", "max_per_day = 1"))
    assert run(cli, cfg, 1).code == 0
    add_row(cfg, rows("b")[0])
    assert run(cli, cfg, 1).code == 0                      # b's welcome is queued: the day's one is used
    db = cfg.parent / "var" / "crm.sqlite"
    assert db_rows(db, "SELECT status FROM sends WHERE customer_key = 'b@example.com'") == [("queued",)]
    # The first email is replaced by a new one, on purpose (resend = true: who had the old one gets it too).
    cfg.write_text(cfg.read_text().replace("max_per_day = 1", "max_per_day = 0"))
    edit(cfg, welcome('{ after_days = 3, template = "followup" }', extra="resend = true\n").replace(
        'template = "welcome"', 'template = "offer"'))
    assert run(cli, cfg, 2).code == 0
    status, error = db_rows(db, "SELECT status, error FROM sends WHERE customer_key = 'b@example.com' "
                                "AND step_id = 'welcome'")[0]
    assert status == "skipped" and "no longer in the campaign" in error
    got = received(smtpd)
    assert got[("b@example.com", "welcome")] == 0 and got[("b@example.com", "offer")] == 1


AT = '[[campaign]]\nid = "year-end"\ntemplate = "offer"\ntrigger = "at"\nat = "2026-11-02T09:00"\n{where}'


def test_an_at_broadcast_goes_to_the_segment_as_it_was_then_not_to_who_joins_it_later(ws, cli, smtpd):
    people = [{"Email": "a@example.com", "Name": "a", "Stage": "won", "Owner": ""},
              {"Email": "b@example.com", "Name": "b", "Stage": "lead", "Owner": ""}]
    cfg = ws(AT.format(where='where = { stage = "won" }\n'), people)
    assert run(cli, cfg, 3).code == 0
    assert received(smtpd) == Counter({("a@example.com", "offer"): 1})
    # Weeks later b is moved into the segment, and a new customer arrives in it: the broadcast was for Nov 2.
    text = (cfg.parent / "customers.csv").read_text().replace("b@example.com,b,lead", "b@example.com,b,won")
    (cfg.parent / "customers.csv").write_text(text)
    add_row(cfg, {"Email": "c@example.com", "Name": "c", "Stage": "won", "Owner": ""})
    assert run(cli, cfg, 20).code == 0
    # The admin then widens `where`: still nobody new, and the pass says why.
    edit(cfg, AT.format(where='where = { stage = ["won", "lead"] }\n'))
    r = run(cli, cfg, 21)
    assert r.code == 0
    assert any("nobody new gets it" in n for n in send_stage(r).get("notes", []))
    assert received(smtpd) == Counter({("a@example.com", "offer"): 1})


def test_an_at_broadcast_held_back_one_pass_still_goes_to_who_was_in_the_segment(ws, cli, smtpd):
    # One email per customer per cycle: a's welcome goes first, the broadcast the pass after.
    both = welcome() + "\n" + AT.format(where="")
    cfg = ws(both, rows("a"))
    assert run(cli, cfg, 3).code == 0
    assert run(cli, cfg, 3).code == 0
    assert received(smtpd) == Counter({("a@example.com", "welcome"): 1, ("a@example.com", "offer"): 1})


def test_a_first_email_replaced_after_it_went_out_is_held_and_step_id_says_it_is_the_same(ws, cli, smtpd):
    cfg = ws(welcome(), rows("a"))
    assert run(cli, cfg, 1).code == 0
    add_row(cfg, rows("b")[0])
    edit(cfg, welcome().replace('template = "welcome"', 'template = "offer"'))
    r = run(cli, cfg, 2)
    assert r.code == 2
    why = " ".join(send_stage(r)["problems"])
    assert "set step_id = 'welcome' in the campaign" in why and "resend = true to the campaign" in why
    assert received(smtpd)[("b@example.com", "offer")] == 1 and received(smtpd)[("a@example.com", "offer")] == 0
    edit(cfg, welcome(extra='step_id = "welcome"\n').replace('template = "welcome"', 'template = "offer"'))
    assert run(cli, cfg, 3).code == 0
    assert all(n == 1 for n in received(smtpd).values()) and len(smtpd.messages) == 2
