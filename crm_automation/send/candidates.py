"""What can be due now: the questions the plan part asks the log instead of reading all of it (issue #23).

A customer's plan changes only when something about them or their
campaign changed, or when a day they wait for comes. So a pass plans:

- the customers added or changed by a sync since the last plan, and those
  sent an email since (their next follow-up's day is noted), from the
  activities after the last plan's mark;
- the (campaign, customer) whose noted day has come (``plan_due``), and those
  the planner chose and could not record yet (``one_per_cycle``: at once);
- every customer of a campaign that changed since it was last planned (a
  ``where``, a step, ``after_days``, a re-enabled campaign, a rename), held
  last time, waiting for an unclear edit, or an ``at`` whose time has just
  passed: that campaign is planned over all its customers, once;
- the customers with a queued send (the hand-over checks them again).

The planner's rules are applied to those customers only, as they would be
to everyone: a customer who is not a candidate has nothing due (the
equivalence tests in tests/unit/test_plan_by_question.py hold the full scan as the oracle).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from crm_automation.edits import Review
from crm_automation.mapping import Campaign
from crm_automation.planner import History, Plan, PlannedSend, campaign_digest, next_look
from crm_automation.store.connection import iso
from crm_automation.store.due import EARLIEST, PlanMark
from crm_automation.store.repo import Store


@dataclass(frozen=True, slots=True)
class Candidates:
    """Whom this pass plans: ``keys`` (their history is read), ``replan`` (campaigns planned over everyone).

    ``news``: the keys with news of their own (events, a day come, a queued send); the other keys are
    there for a re-planned campaign only, and keep their next looks in the other campaigns.
    """

    keys: frozenset[str]
    replan: frozenset[str]
    mark: PlanMark
    news: frozenset[str] = frozenset()


def replanned(campaigns: list[Campaign], store: Store, found: Review, expansions: Mapping[str, object],
              now: datetime, *, everything: bool) -> frozenset[str]:
    """The enabled campaigns to plan over all their customers this pass (see the module docstring)."""
    planned_as = store.planned_as()
    waiting = {c for c, _ in found.unresolved}
    out = set()
    for c in campaigns:
        if not c.enabled:
            continue
        at_passed = c.trigger == "at" and c.at is not None and now >= c.at and c.id not in expansions
        if (everything or planned_as.get(c.id) != campaign_digest(c) or c.id in found.states
                or c.id in waiting or at_passed):
            out.add(c.id)
    return frozenset(out)


def customers_of(c: Campaign, store: Store, first_seen: datetime, found: Review) -> set[str]:
    """Everyone a re-planned campaign may concern: its sequences, and who its trigger can reach."""
    keys = store.campaign_customers(c.id)
    for old, new in found.campaign_renames:
        if new == c.id:
            keys |= store.campaign_customers(old)
    if c.trigger == "new":
        keys |= store.present_customers(seen_after=None if c.include_existing else first_seen)
    elif c.trigger == "change" and c.field:
        keys |= store.changed_to(c.field)
    elif c.trigger == "at":
        keys |= store.present_customers()
    return keys


def candidates(campaigns: list[Campaign], store: Store, found: Review, first_seen: Mapping[str, datetime],
               expansions: Mapping[str, object], now: datetime) -> Candidates:
    """Ask the log whom this pass must plan."""
    upto = store.last_activity_id()
    mark = store.plan_mark()
    key_field = store.key_field()
    everything = mark is None or mark.key_field != key_field
    replan = replanned(campaigns, store, found, expansions, now, everything=everything)
    enabled = [c.id for c in campaigns if c.enabled]
    keys: set[str] = set()
    if mark is not None and not everything:
        events = store.events_between(mark.activity_id, upto)
        keys |= events.touched
        keys |= {k for _, k in events.sent}
    keys |= {k for _, k in store.due_by(now, enabled)}
    keys |= store.queued_customers()
    news = frozenset(keys)
    by_id = {c.id: c for c in campaigns}
    for cid in sorted(replan):
        keys |= customers_of(by_id[cid], store, first_seen.get(cid, now), found)
    return Candidates(frozenset(keys), replan, PlanMark(upto, key_field), news)


def next_looks(campaigns: list[Campaign], cands: Candidates, present: set[str], h: History, plan: Plan,
               later: list[PlannedSend]) -> dict[tuple[str, str], str | None]:
    """(campaign, customer) -> when to plan them again (None: not until news), after this plan is recorded.

    The day their next follow-up comes due (:func:`crm_automation.planner.next_look`),
    over their sends including the ones this plan records; at once for a
    send ``one_per_cycle`` kept for the next cycle. Held campaigns are left
    as they are: they are re-planned whole at the next pass.
    """
    recorded: dict[tuple[str, str], list[str]] = {}
    for p in plan.sends:
        recorded.setdefault((p.campaign, p.customer_key), []).append(p.step_id)
    out: dict[tuple[str, str], str | None] = {}
    for c in campaigns:
        if not c.enabled or c.id in plan.held:
            continue
        fresh = c.id in cands.replan
        for k in cands.keys if fresh else cands.news:
            t = None
            if k in present:
                rows = dict(h.steps_of(c.id, k))
                rows.update(dict.fromkeys(recorded.get((c.id, k), ()), None))
                t = next_look(c, rows)
            if t is not None or not fresh:
                out[(c.id, k)] = iso(t) if t is not None else None
    for p in later:
        out[(p.campaign, p.customer_key)] = EARLIEST
    return out


def definitions(campaigns: list[Campaign], plan: Plan) -> dict[str, str | None]:
    """Campaign -> its definition as planned now (None for a held one: it is re-planned whole next time)."""
    return {c.id: None if c.id in plan.held else campaign_digest(c) for c in campaigns}
