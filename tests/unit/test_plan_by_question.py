"""Issue #23: the plan asked of the log (candidates) equals the plan over everyone (a full scan, the oracle).

The full scan is kept here, as the tests' oracle, not in the product: every
customer, every send and the whole history read as the send pass did before
issue #23, then the same pure planner. Generated workspaces (random
campaigns, steps, triggers, ``where`` filters; sheet edits between passes;
replies, bounces, unsubscribes, quarantined mail; campaigns edited, paused
and resumed) run real passes day after day; before each, the candidate plan
of a dry run must equal the oracle's, and the sends the real pass queues
must be exactly the oracle's.
"""

from __future__ import annotations

import csv
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crm_automation.models import Kind, Permanence, SendStatus
from crm_automation.planner import QUARANTINED, History, Plan, outlook, plan
from crm_automation.send.plan import Planning, trigger_fields
from crm_automation.store.connection import iso, parse_iso
from crm_automation.store.sends import SendKind
from crm_automation.worker import Worker
from crm_automation.workspace import Clock, Workspace
from tests.fixtures.core import make_workspace

STAGES = ["lead", "warm", "won"]
TEMPLATES = {f"t{i}.txt": f"Subject: T{i} {{{{ customer.name }}}}\n\nHello {{{{ customer.name }}}}\n"
             for i in range(40)}
DAY0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)  # 10:00 in Asia/Shanghai


class Fixed(Clock):
    """A clock standing still at one instant (a pass at a given day)."""

    def __init__(self, at: datetime) -> None:
        super().__init__(at)
        self.at = at

    def now(self) -> datetime:
        return self.at


# ---------------------------------------------------------------- the oracle: a full scan


def full_plan(ws: Workspace, store, now: datetime) -> tuple[Plan, History, object]:
    """Today's planner over every customer and the whole log, recording nothing (the pre-#23 send pass)."""
    planning = Planning(ws, store, Fixed(now))
    found, legacy, recorded = planning.review(record=False)
    first_seen = store.campaign_first_seen([c.id for c in ws.campaigns], now, record=False)
    for old, new in found.campaign_renames:
        first_seen[new] = min(first_seen.get(new, now), store.campaign_first_seen([old], now, record=False)[old])
    known = planning.expansions(found, record=False)
    ef = ws.email_field
    from crm_automation.models import CustomerView

    views = {k: CustomerView(k, c.data.get(ef) if ef else None, c.data, c.first_seen, c.email_status)
             for k, c in store.customers().items()}
    h = full_history(ws, store, found, legacy, recorded)
    return plan(ws.campaigns, views, first_seen, h, now, one_per_cycle=ws.cfg.outbound.one_per_cycle,
                unresolved=found.unresolved, expansions=known), h, found


def full_history(ws: Workspace, store, found, legacy, recorded) -> History:
    """Every send and every inbound event of the log, as the planner's values (the pre-#23 ``history()``)."""
    camp_alias, step_alias = found.aliases()
    defined = {c.id for c in ws.campaigns}
    h = History()
    for s in store.sends():
        if s.kind is not SendKind.CAMPAIGN_STEP:
            continue
        campaign = camp_alias.get(s.campaign, s.campaign)
        key = s.step_id if s.step_id is not None else legacy.get((s.campaign, s.step), f"#{s.step}")
        key = step_alias.get((campaign, key), key)
        sent = s.sent_at if s.status == SendStatus.SENT else None
        h.add_send(campaign, key, s.customer_key, sent)
        if sent is not None and campaign not in defined:
            template = recorded.get(campaign, {}).get(key)
            h.elsewhere.setdefault(s.customer_key, {}).setdefault(
                template.template if template is not None else key, campaign)
    for e in store.inbound_history():
        if e.permanence is Permanence.DELAYED:
            continue
        if e.permanence is Permanence.SOFT:
            lost_in = camp_alias.get(e.campaign, e.campaign) if e.campaign is not None else None
            h.lost.setdefault(e.customer_key, []).append((lost_in, e.at))
            continue
        h.inbound.setdefault(e.customer_key, []).append((e.kind.value, e.at))
    for f in trigger_fields(ws.campaigns):
        h.changes[f] = store.field_changes(f)
    h.suppressed = frozenset(store.suppressions())
    for q in store.quarantined_contacts():
        h.inbound.setdefault(q.customer_key, []).append((QUARANTINED, q.received_at))
        h.quarantine_reasons[q.customer_key] = q.error
    return h


def shape(p: Plan) -> tuple:
    """A plan as comparable values (the sends in the order they would be queued)."""
    return ([(s.campaign, s.step, s.step_id, s.customer_key, s.email, s.template, s.status, s.reason)
             for s in p.sends], p.held, p.notes, p.went_out)


# ---------------------------------------------------------------- generated workspaces


def step(rng: random.Random, used: set[str], after: int | None) -> dict:
    t = rng.choice([f"t{i}" for i in range(40) if f"t{i}" not in used])
    used.add(t)
    return {"template": t} if after is None else {"template": t, "after_days": after}


def new_campaign(rng: random.Random, n: int, used: set[str]) -> dict:
    trigger = rng.choice(["new", "new", "change", "at"])
    c: dict = {"id": f"c{n}", "trigger": trigger, **step(rng, used, None)}
    if rng.random() < 0.6:
        c["where"] = {"stage": rng.sample(STAGES, rng.randint(1, 2))}
    if trigger == "new" and rng.random() < 0.4:
        c["include_existing"] = True
    if trigger == "change":
        c["field"], c["to"] = "stage", rng.choice(STAGES)
    if trigger == "at":
        c["at"] = (DAY0 + timedelta(days=rng.randint(1, 6), hours=8)).strftime("%Y-%m-%dT%H:%M")
    c["follow_up"] = [step(rng, used, rng.choice([0.5, 1, 2, 3])) for _ in range(rng.randint(0, 2))]
    if rng.random() < 0.2:
        c["stop_on"] = rng.sample(["reply", "bounce", "unsubscribe"], rng.randint(0, 2))
    return c


def toml(campaigns: list[dict]) -> str:
    out = []
    for c in campaigns:
        last = 0.0
        for s in c.get("follow_up", []):  # days count from the first email: each step later than the one before
            s["after_days"] = last = max(s["after_days"], last + 0.5)
        out.append("[[campaign]]")
        for k, v in c.items():
            if k == "follow_up":
                items = ", ".join("{ " + ", ".join(f"{a} = {json.dumps(b)}" for a, b in s.items()) + " }" for s in v)
                out.append(f"follow_up = [{items}]")
            elif k == "where":
                out.append("where = { " + ", ".join(f"{a} = {json.dumps(b)}" for a, b in v.items()) + " }")
            else:
                out.append(f"{k} = {json.dumps(v)}")
        out.append("")
    return "\n".join(out)


def edit_campaigns(rng: random.Random, campaigns: list[dict], used: set[str]) -> None:
    c = rng.choice(campaigns)
    what = rng.choice(["where", "insert", "after", "pause", "resume", "add", "remove"])
    if what == "where":
        c["where"] = {"stage": rng.sample(STAGES, rng.randint(1, 2))}
    elif what == "insert":
        c.setdefault("follow_up", []).insert(0, step(rng, used, rng.choice([0.5, 1, 2])))
    elif what == "after" and c.get("follow_up"):
        c["follow_up"][-1]["after_days"] = rng.choice([0.5, 1, 4])
    elif what == "pause":
        c["enabled"] = False
    elif what == "resume":
        c.pop("enabled", None)
    elif what == "add":
        campaigns.append(new_campaign(rng, len(campaigns) + 10 * rng.randint(1, 9), used))
    elif what == "remove" and len(campaigns) > 1:
        campaigns.remove(c)


def write_sheet(path: Path, rows: dict[str, dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["Email", "Name", "Stage", "Owner"])
        w.writeheader()
        w.writerows(rows.values())


def edit_sheet(rng: random.Random, rows: dict[str, dict[str, str]], gone: dict[str, dict[str, str]],
               counter: list[int]) -> None:
    for _ in range(rng.randint(0, 3)):
        counter[0] += 1
        email = f"p{counter[0]}@example.com"
        rows[email] = {"Email": email, "Name": f"P{counter[0]}", "Stage": rng.choice(STAGES), "Owner": ""}
    for email in rng.sample(sorted(rows), min(len(rows), rng.randint(0, 3))):
        rows[email]["Stage"] = rng.choice(STAGES)
    if rows and rng.random() < 0.3:
        email = rng.choice(sorted(rows))
        gone[email] = rows.pop(email)
    if gone and rng.random() < 0.3:
        email = rng.choice(sorted(gone))
        rows[email] = gone.pop(email)


def mail_in(rng: random.Random, store, keys: list[str], now: datetime, n: int) -> None:
    """Replies, bounces, unsubscribes and unreadable mail from some customers, logged before the pass."""
    for i, key in enumerate(rng.sample(keys, min(len(keys), rng.randint(0, 2)))):
        at = now - timedelta(hours=rng.randint(1, 20))  # logged then; written maybe days before (a late fetch)
        written = at - timedelta(hours=rng.choice([0, 0, 30, 100]))
        kind = rng.choice(["reply", "auto", "hard", "soft", "delayed", "unsubscribe", "quarantine"])
        mid = f"<in-{n}-{i}@example.com>"
        if kind == "reply":
            store.add_activity(kind=Kind.EMAIL_IN.value, occurred_at=written, now=at, customer_key=key, message_id=mid,
                               source="test")
        elif kind == "auto":
            store.add_activity(kind=Kind.AUTO_REPLY.value, occurred_at=written, now=at, customer_key=key,
                               message_id=mid, source="test")
        elif kind in ("hard", "soft", "delayed"):
            store.add_activity(kind=Kind.BOUNCE.value, occurred_at=written, now=at, customer_key=key, message_id=mid,
                               source="test", campaign=rng.choice([None, "c0", "c1"]),
                               details={"permanence": kind, "permanent": kind == "hard"})
            if kind == "hard":
                store.suppress(key, "bounced", "test", at)
                store.set_email_status(key, "bounced")
        elif kind == "unsubscribe":
            store.add_activity(kind=Kind.UNSUBSCRIBE.value, occurred_at=written, now=at, customer_key=key,
                               message_id=mid, source="test")
            store.suppress(key, "unsubscribed", "test", at)
        else:
            store.quarantine(source="test", raw=mid.encode(), error="unreadable", now=at, from_addr=key,
                             customer_key=key)


@pytest.mark.parametrize("seed", range(int(__import__("os").environ.get("PLAN_SEEDS", "12"))))
def test_the_candidate_plan_equals_the_full_scan_pass_after_pass(tmp_path, seed):
    rng = random.Random(seed)
    used: set[str] = set()
    campaigns = [new_campaign(rng, i, used) for i in range(rng.randint(1, 3))]
    if all(c["trigger"] != "new" for c in campaigns):  # one campaign mails the rows already there: never vacuous
        campaigns[0].update(trigger="new", include_existing=True)
        for k in ("field", "to", "at", "where"):
            campaigns[0].pop(k, None)
    rows = {f"c{i}@example.com": {"Email": f"c{i}@example.com", "Name": f"C{i}", "Stage": rng.choice(STAGES),
                                  "Owner": ""} for i in range(rng.randint(3, 8))}
    gone: dict[str, dict[str, str]] = {}
    counter = [0]
    cfg = make_workspace(tmp_path / "ws", rows=list(rows.values()), campaigns=toml(campaigns), templates=TEMPLATES,
                         extra_config="" if rng.random() < 0.7 else "one_per_cycle = false\n")
    compared = 0
    for day in range(1, 13):
        now = DAY0 + timedelta(days=day, minutes=rng.randint(0, 600))
        if day > 1:
            edit_sheet(rng, rows, gone, counter)
            write_sheet(cfg.parent / "customers.csv", rows)
            if rng.random() < 0.25:
                edit_campaigns(rng, campaigns, used)
                (cfg.parent / "mappings" / "campaigns.toml").write_text(toml(campaigns), encoding="utf-8")
        ws = Workspace.load(cfg)
        w = Worker(ws, clock=Fixed(now))
        try:
            assert w.sync().error is None
            mail_in(rng, w.store, [k for k in rows if w.store.customer(k) is not None], now, day)
            oracle, h, found = full_plan(ws, w.store, now)
            asked = w.outbound.planning.plan(record=False).plan
            assert shape(asked) == shape(oracle), f"day {day}"
            shown = w.outbound.edit_outlook()  # check --plan: every customer in a sequence counted
            assert {c.id: outlook(c, h, oracle.sends, found.unresolved) for c in ws.campaigns if c.enabled} == {
                cid: o.steps for cid, o in shown.items()}, f"day {day}"
            result = w.send()
            assert result.error is None or "held" in str(result.error), result.error
            queued_now = {(c, k, s) for c, k, s in w.store.conn.execute(
                "SELECT campaign, step_id, customer_key FROM sends WHERE queued_at = ? AND kind = 'campaign_step'",
                (iso(now),))}
            assert queued_now == {(s.campaign, s.step_id, s.customer_key) for s in oracle.sends}, f"day {day}"
            compared += len(oracle.sends)
        finally:
            w.close()
    assert compared > 0  # the generated workspace planned something to compare


def test_a_pass_with_news_for_nobody_asks_for_nobody(tmp_path):
    """Issue #23: with nothing new and no follow-up due, the plan reads no customer at all."""
    cfg = make_workspace(tmp_path / "ws", campaigns='[[campaign]]\nid = "w"\ntemplate = "t1"\ntrigger = "new"\n'
                         'include_existing = true\nfollow_up = [{ after_days = 3, template = "t2" }]\n',
                         templates=TEMPLATES)
    ws = Workspace.load(cfg)
    # day 2 looks at who was mailed on day 1 (to note their follow-up's day); day 3 asks for nobody
    for day, expect in ((1, 3), (2, 0), (3, 0), (4, 3)):
        w = Worker(ws, clock=Fixed(DAY0 + timedelta(days=day)))
        try:
            assert w.sync().error is None
            planned = w.outbound.planning.plan(record=False)
            assert len(planned.plan.sends) == expect
            if day == 3:
                assert planned.candidates.keys == frozenset() and planned.views == {}
            assert w.send().error is None
            due = w.store.conn.execute("SELECT customer_key, due_at FROM plan_due ORDER BY 1").fetchall()
            if day in (2, 3):  # each waits for their follow-up, 3 days after their first email
                assert [(k, parse_iso(t)) for k, t in due] == [
                    (f"c{i}@example.com", DAY0 + timedelta(days=4)) for i in range(3)]
            if day == 4:
                assert due == []  # the last step is queued: nobody waits for a day
        finally:
            w.close()


# ---------------------------------------------------------------- a re-plan in chunks (issue #23 item 3)


class Widest:
    """Spies on the store's per-customer reads (the real methods run): the most customers one call asked for."""

    def __init__(self, store, fail_at: int | None = None) -> None:
        self.most = 0
        self.calls = 0
        self.fail_at = fail_at
        for name in ("customers_among", "sends_among", "inbound_among", "quarantined_among"):
            setattr(store, name, self._wrap(getattr(store, name)))

    def _wrap(self, real):
        def read(keys, *args, **kwargs):
            keys = list(keys)
            self.most = max(self.most, len(keys))
            if real.__name__ == "sends_among":
                self.calls += 1
                if self.calls == self.fail_at:
                    raise KeyboardInterrupt("killed while planning")
            return real(keys, *args, **kwargs)
        return read


def queued_in_order(store, now: datetime) -> list[tuple[str, str, str]]:
    return [tuple(r) for r in store.conn.execute(
        "SELECT campaign, step_id, customer_key FROM sends WHERE queued_at = ? AND kind = 'campaign_step' "
        "ORDER BY id", (iso(now),))]


@pytest.mark.parametrize("seed", range(6))
def test_a_replan_in_chunks_equals_the_plan_made_at_once(tmp_path, seed):
    """Issue #23 item 3: planned a few customers at a time, a pass queues the same sends in the same order,
    with the same holds, notes and next looks, and never reads more than a chunk's history at once."""
    rng = random.Random(1000 + seed)
    used: set[str] = set()
    campaigns = [new_campaign(rng, i, used) for i in range(rng.randint(2, 3))]
    campaigns[0].update(trigger="new", include_existing=True)
    for k in ("field", "to", "at", "where"):
        campaigns[0].pop(k, None)
    rows = {f"c{i}@example.com": {"Email": f"c{i}@example.com", "Name": f"C{i}", "Stage": rng.choice(STAGES),
                                  "Owner": ""} for i in range(rng.randint(9, 16))}
    gone: dict[str, dict[str, str]] = {}
    counter = [0]
    cfg = make_workspace(tmp_path / "ws", rows=list(rows.values()), campaigns=toml(campaigns), templates=TEMPLATES,
                         extra_config="" if seed % 2 else "one_per_cycle = false\n")
    chunked = 0
    for day in range(1, 10):
        now = DAY0 + timedelta(days=day, minutes=rng.randint(0, 600))
        if day > 1:
            edit_sheet(rng, rows, gone, counter)
            write_sheet(cfg.parent / "customers.csv", rows)
            if rng.random() < 0.4:
                edit_campaigns(rng, campaigns, used)
                (cfg.parent / "mappings" / "campaigns.toml").write_text(toml(campaigns), encoding="utf-8")
        ws = Workspace.load(cfg)
        w = Worker(ws, clock=Fixed(now))
        try:
            assert w.sync().error is None
            mail_in(rng, w.store, [k for k in rows if w.store.customer(k) is not None], now, day)
            oracle, _, _ = full_plan(ws, w.store, now)
            at_once = Planning(ws, w.store, Fixed(now), chunk=None).plan(record=False)
            size = rng.choice([1, 2, 3])
            w.outbound.planning.chunk = size
            spy = Widest(w.store)
            asked = w.outbound.planning.plan(record=False)
            assert shape(asked.plan) == shape(oracle) == shape(at_once.plan), f"day {day}"
            assert asked.looks == at_once.looks and asked.later == at_once.later, f"day {day}"
            if len(asked.candidates.keys) > size:
                chunked += 1
                assert spy.most <= max(size, len({p.customer_key for p in oracle.sends} | w.store.queued_customers()))
            result = w.send()
            assert result.error is None or "held" in str(result.error), result.error
            assert queued_in_order(w.store, now) == [(s.campaign, s.step_id, s.customer_key) for s in oracle.sends], f"day {day}"
        finally:
            w.close()
    assert chunked > 0  # some pass really planned in several chunks


def test_a_replan_killed_midway_is_redone_whole_and_queues_nothing_twice(tmp_path):
    """Issue #23 item 3: a pass killed between two chunks recorded nothing; one killed after queueing but before
    the mark was recorded re-plans the campaign; either way the next pass queues each step exactly once."""
    rows = [{"Email": f"c{i}@example.com", "Name": f"C{i}", "Stage": "lead", "Owner": ""} for i in range(12)]
    camp = ('[[campaign]]\nid = "w"\ntemplate = "t1"\ntrigger = "new"\ninclude_existing = true\n'
            'follow_up = [{ after_days = 3, template = "t2" }]\n')
    cfg = make_workspace(tmp_path / "ws", rows=rows, campaigns=camp, templates=TEMPLATES,
                         extra_config="one_per_cycle = false\n")
    now = DAY0 + timedelta(days=1)
    ws = Workspace.load(cfg)
    w = Worker(ws, clock=Fixed(now))
    try:
        assert w.sync().error is None
        oracle, _, _ = full_plan(ws, w.store, now)
        assert len(oracle.sends) == 12
        mark = w.store.plan_mark()
        w.outbound.planning.chunk = 5
        Widest(w.store, fail_at=2)  # killed while reading the second chunk
        with pytest.raises(KeyboardInterrupt):
            w.send()
        assert w.store.conn.execute("SELECT count(*) FROM sends").fetchone()[0] == 0
        assert w.store.plan_mark() == mark  # the re-plan is not marked done
    finally:
        w.close()
    w = Worker(Workspace.load(cfg), clock=Fixed(now))
    try:
        w.outbound.planning.chunk = 5
        real = w.store.record_plan

        def killed(*args, **kwargs):
            raise KeyboardInterrupt("killed after queueing")
        w.store.record_plan = killed
        with pytest.raises(KeyboardInterrupt):
            w.send()
        assert queued_in_order(w.store, now) == [(s.campaign, s.step_id, s.customer_key) for s in oracle.sends]
        assert w.store.plan_mark() == mark
        w.store.record_plan = real
    finally:
        w.close()
    for day in (1, 1, 5):  # the redo, a pass after it, and the follow-up's day
        w = Worker(Workspace.load(cfg), clock=Fixed(DAY0 + timedelta(days=day, hours=1)))
        try:
            w.outbound.planning.chunk = 5
            assert w.send().error is None
            assert w.store.plan_mark() is not None and w.store.plan_mark() != mark
            assert w.store.conn.execute("SELECT campaign, step_id, customer_key FROM sends "
                                        "GROUP BY 1, 2, 3 HAVING count(*) > 1").fetchall() == []
            steps = w.store.conn.execute("SELECT step_id, status, count(*) FROM sends GROUP BY 1, 2 "
                                         "ORDER BY 1").fetchall()
        finally:
            w.close()
    assert [tuple(s) for s in steps] == [("t1", "sent", 12), ("t2", "sent", 12)]
