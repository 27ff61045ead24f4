"""(campaigns, customers, history, suppressions, now) -> what to send. Pure; never reads the clock.

Rules (SPEC §5, §10, and what the README documents where the SPEC is silent):

- ``new``: customers first seen after the campaign was first seen, so adding
  a campaign never mails the customers who already existed — unless the
  campaign says ``include_existing = true``.
- ``change``: a ``field_changed`` to the ``to`` value logged after the
  campaign was first seen, the field still holding that value.
- ``at``: once ``now`` has passed ``at``, everyone in the segment at that time.
- follow-up N is due ``after_days`` after the sequence began (its first
  email was *sent*), if step N-1 was the last step sent and nothing in
  ``stop_on`` happened since. Steps are known by their key, not their place
  (issue #17): a step inserted before a customer's last step is skipped for
  them with the reason; a removed step is simply never due.
- suppressed, bounced and unsubscribed customers are planned as ``skipped``
  with the reason, so the log shows why nobody mailed them.
- a quarantined message from the customer counts as a reply (their contact
  stops the sequence, issue #9), with the quarantine's reason in the skip.
- ``new``: a lead whose mail was logged before they were added to the sheet
  (an enquiry from an unknown sender, linked when the row appeared) is
  skipped, unless the campaign says ``skip_if_already_wrote = false``.
- one email per customer per cycle (``one_per_cycle``): the others wait for
  the next cycle.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping as MappingT
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from crm_automation.edits import hold_reason, place_name
from crm_automation.mapping import Campaign, Step
from crm_automation.models import CustomerView

QUARANTINED = "quarantined"  # History.inbound kind of a quarantined message from the customer
STOP_KINDS = {"reply": ("email_in", QUARANTINED), "bounce": ("bounce",), "unsubscribe": ("unsubscribe",)}


@dataclass(slots=True)
class History:
    """What the log says happened, as plain values.

    ``sends``: campaign -> customer -> step key -> when it was sent (None for
    a row that was not sent: queued, skipped, failed, ...). Steps are keyed
    by :attr:`~crm_automation.mapping.Step.key`, never by their place (issue #17).
    ``elsewhere``: customer -> template -> the campaign, no longer in the
    file, that sent it to them (a new campaign reusing it is held).
    """

    sends: dict[str, dict[str, dict[str, datetime | None]]] = field(default_factory=dict)
    inbound: dict[str, list[tuple[str, datetime]]] = field(default_factory=dict)  # key -> [(kind, logged_at)]
    changes: dict[str, list[tuple[str, Any, datetime]]] = field(default_factory=dict)  # field -> [(key, new, at)]
    suppressed: frozenset[str] = frozenset()
    quarantine_reasons: dict[str, str] = field(default_factory=dict)  # key -> why their last message was quarantined
    # key -> [(campaign or None, logged_at)] of soft bounces: that message was lost (issue #11); it stops the
    # sequence of its campaign (or every sequence when the bounce did not say which message it was).
    lost: dict[str, list[tuple[str | None, datetime]]] = field(default_factory=dict)
    elsewhere: dict[str, dict[str, str]] = field(default_factory=dict)

    def add_send(self, campaign: str, step: str, customer: str, sent_at: datetime | None = None) -> None:
        """Record one ``sends`` row (``sent_at`` only when it was sent)."""
        self.sends.setdefault(campaign, {}).setdefault(customer, {})[step] = sent_at

    def steps_of(self, campaign: str, customer: str) -> dict[str, datetime | None]:
        """The customer's rows in one campaign: step key -> sent time (None: not sent)."""
        return self.sends.get(campaign, {}).get(customer, {})

    def entered(self, campaign: str, customer: str) -> datetime | None:
        """When the customer's sequence began: the first email of the campaign that was sent to them.

        The first *sent* step, whichever it is, so a reordered or renamed
        first step keeps the customer's clock (follow-up days count from it).
        """
        times = [t for t in self.steps_of(campaign, customer).values() if t is not None]
        return min(times) if times else None


@dataclass(frozen=True, slots=True)
class PlannedSend:
    """One email to queue, or a send recorded as ``skipped`` with its reason."""

    campaign: str
    step: int  # the step's place in the campaign now (shown; ``sends.step``)
    customer_key: str
    email: str | None
    template: str
    status: str  # "queued" | "skipped"
    reason: str | None = None
    step_key: str = ""  # the step's identity (``sends.step_id``); "" means the template's name

    @property
    def step_id(self) -> str:
        """The step's identity as recorded in ``sends.step_id``."""
        return self.step_key or self.template


@dataclass(frozen=True, slots=True)
class Plan:
    """The planner's answer: the sends to record, and campaigns held because an edit's meaning is unclear.

    ``held``: campaign -> why it (or some of its sends) is held; nothing
    held is recorded, so the planner decides again once the admin has said
    what the edit meant (issue #17).
    """

    sends: list[PlannedSend]
    held: dict[str, list[str]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)  # campaign -> what it will not do, and why (no failure)
    went_out: tuple[str, ...] = ()  # ``at`` campaigns that go out to their segment with this plan


def matches(where: MappingT[str, tuple[str, ...]], data: MappingT[str, Any]) -> bool:
    """Every listed field matches; a list means any of its values."""
    for f, allowed in where.items():
        v = data.get(f)
        if v is None:
            return False
        text = ("true" if v else "false") if isinstance(v, bool) else str(v)
        if text not in allowed and not (isinstance(v, bool) and str(v) in allowed):
            return False
    return True


def stop_reason(c: Campaign, cust: CustomerView, since: datetime, h: History) -> str | None:
    """Why a sequence stops: the first stop_on event logged since step 0 was sent."""
    wanted = {k for s in c.stop_on for k in STOP_KINDS[s]}
    for kind, at in h.inbound.get(cust.key, ()):
        if kind in wanted and at > since:  # times are whole seconds: a same-second reply was fetched first
            return f"stopped: {_described(kind, cust.key, h)} logged {at.isoformat()}"
    if "bounce" in c.stop_on:
        for campaign, at in h.lost.get(cust.key, ()):
            if (campaign is None or campaign == c.id) and at > since:
                return f"stopped: soft bounce (a message to the customer was lost) logged {at.isoformat()}"
    return None


def _described(kind: str, key: str, h: History) -> str:
    if kind == QUARANTINED:
        return f"quarantined message from the customer (reason: {h.quarantine_reasons.get(key, 'unreadable')})"
    return kind


def wrote_first(cust: CustomerView, h: History) -> str | None:
    """Why a ``new`` campaign's first email would be wrong: the lead already wrote to us (issue #9)."""
    for kind, at in h.inbound.get(cust.key, ()):
        if kind in STOP_KINDS["reply"] and at < cust.first_seen:
            return (f"already wrote to us before being added to the sheet ({_described(kind, cust.key, h)} "
                    f"logged {at.isoformat()})")
    return None


def blocked_reason(cust: CustomerView, h: History) -> str | None:
    """Why nobody may mail this customer at all."""
    if not cust.email:
        return "no email address"
    return address_block(cust.email.lower() in h.suppressed, cust.email_status)


def address_block(suppressed: bool, email_status: str | None) -> str | None:
    """Why an address may not be mailed: it is on the suppression list, or its customer bounced or unsubscribed.

    One rule for planning and for the moment of hand-over (issue #19: the
    send pass asks the log again in the transaction that marks a message
    ``sending``, so an unsubscribe recorded by ``serve`` mid-pass is honoured).
    """
    if suppressed:
        return "suppressed"
    if email_status in {"bounced", "unsubscribed"}:
        return email_status
    return None


def at_digest(c: Campaign) -> str:
    """An ``at`` campaign's time and segment, as recorded when it goes out (see :func:`_step0_targets`)."""
    where = {k: sorted(v) for k, v in sorted(c.where.items())}
    return json.dumps({"at": c.at.isoformat() if c.at else None, "where": where}, ensure_ascii=False,
                      sort_keys=True)


def _at_targets(c: Campaign, customers: MappingT[str, CustomerView], h: History,
                went_out: tuple[datetime, str] | None, notes: list[str]) -> list[CustomerView]:
    """The segment an ``at`` campaign goes to: as it was when it went out, once (issue #17).

    Why: "everyone in the segment" read at every pass mailed a customer
    moved into the segment weeks later a broadcast meant for another day,
    and an edited ``where`` mailed a new audience an old broadcast. Once it
    went out at E, only customers who were in the segment then are still
    targets (one held back by ``one_per_cycle`` or a hold goes at a later
    pass): first seen by E, matching now, and no change to a ``where``
    field since E. An ``at`` or ``where`` edited after E sends to nobody
    new, and says so.
    """
    segment = [x for x in customers.values() if matches(c.where, x.data)]
    if went_out is None:
        return segment
    e, digest = went_out
    if digest != at_digest(c):
        notes.append(f"campaign {c.id!r} went out on {e.isoformat()}; its at or where changed since, so nobody "
                     "new gets it (a broadcast to the new segment needs a new campaign id, with resend = true)")
        return []
    moved = {k for f in c.where for k, _, t in h.changes.get(f, ()) if t > e}
    return [x for x in segment if x.first_seen <= e and x.key not in moved]


def _step0_targets(c: Campaign, customers: MappingT[str, CustomerView], first_seen: datetime, h: History,
                   now: datetime, went_out: tuple[datetime, str] | None = None,
                   notes: list[str] | None = None) -> list[CustomerView]:
    if c.trigger == "new":
        return [x for x in customers.values()
                if (c.include_existing or x.first_seen > first_seen) and matches(c.where, x.data)]
    if c.trigger == "change":
        keys = {k for k, new, at in h.changes.get(c.field or "", ()) if str(new) == c.to and at >= first_seen}
        return [x for k in sorted(keys) if (x := customers.get(k)) is not None
                and str(x.data.get(c.field or "")) == c.to and matches(c.where, x.data)]
    if c.trigger == "at" and c.at is not None and now >= c.at:
        return _at_targets(c, customers, h, went_out, notes if notes is not None else [])
    return []


def _past(c: Campaign, step: Step, reached: int) -> str:
    later = next(s for s in c.steps if s.number == reached)
    return (f"step {step.key!r} was added to the campaign after the customer had passed it (they already had "
            f"step {later.key!r}, now {place_name(reached)})")


def _held_for(c: Campaign, step: Step, rows: MappingT[str, datetime | None],
              unresolved: MappingT[tuple[str, str], tuple[str, ...]]) -> bool:
    """Whether this step's send to this customer waits for the admin (they had a step it may replace)."""
    gone = unresolved.get((c.id, step.key), ())
    return any(rows.get(g) is not None for g in gone)


def _plan_campaign(c: Campaign, customers: MappingT[str, CustomerView], seen: datetime, h: History, now: datetime,
                   unresolved: MappingT[tuple[str, str], tuple[str, ...]], waiting: Counter[str],
                   went_out: tuple[datetime, str] | None, notes: list[str]) -> list[PlannedSend]:
    out: list[PlannedSend] = []
    first = c.steps[0]
    positions = places(c)

    def add(step: Step, cust: CustomerView, why: str | None) -> None:
        out.append(PlannedSend(c.id, step.number, cust.key, cust.email, step.template,
                               "skipped" if why else "queued", why, step.key))

    for cust in _step0_targets(c, customers, seen, h, now, went_out, notes):
        rows = h.steps_of(c.id, cust.key)
        if first.key in rows:
            continue
        if _held_for(c, first, rows, unresolved):
            waiting[first.key] += 1
            continue
        reached = reach(positions, rows)
        if reached > 0:
            add(first, cust, _past(c, first, reached))
            continue
        why = blocked_reason(cust, h)
        if why is None and c.trigger == "new" and c.skip_if_already_wrote:
            why = wrote_first(cust, h)
        add(first, cust, why)
    for key, rows in h.sends.get(c.id, {}).items():
        t0 = h.entered(c.id, key)
        if t0 is None:
            continue
        follower = customers.get(key)
        if follower is None:
            continue
        reached = reach(positions, rows)
        for step in c.steps[1:]:
            if step.key in rows:
                continue
            if _held_for(c, step, rows, unresolved):
                waiting[step.key] += 1
                continue
            if reached > step.number:
                add(step, follower, _past(c, step, reached))
            elif reached == step.number - 1 and now >= t0 + timedelta(days=step.after_days):
                add(step, follower, blocked_reason(follower, h) or stop_reason(c, follower, t0, h))
    return out


def _waiting_holds(c: Campaign, waiting: Counter[str], unresolved: MappingT[tuple[str, str], tuple[str, ...]]
                   ) -> list[str]:
    """Why some of the campaign's sends wait for the admin: each unclear step, with how many customers wait."""
    held = []
    for key, gone in ((s.key, unresolved[(c.id, s.key)]) for s in c.steps if (c.id, s.key) in unresolved):
        if waiting.get(key):
            held.append(f"{hold_reason(c.id, key, gone, first=key == c.steps[0].key)} ({waiting[key]} customer(s) "
                        "waiting)")
    return held


def places(c: Campaign) -> dict[str, int]:
    """Step key -> its place in the campaign as it is now (made once a campaign, not once a customer)."""
    return {s.key: s.number for s in c.steps}


def reach(positions: MappingT[str, int], rows: MappingT[str, datetime | None]) -> int:
    """The latest place, in the campaign as it is now (``positions``), of a step the customer was sent (-1: none)."""
    return max((positions[k] for k, t in rows.items() if t is not None and k in positions), default=-1)


@dataclass(frozen=True, slots=True)
class StepOutlook:
    """What one step means for the customers already in its campaign (``check --plan``, issue #17).

    ``had``: sent it; ``due_now``: queued by this pass; ``past``: will be
    recorded as skipped (they had a later step); ``later``: in the sequence
    before it, so they get it when its day comes (unless their sequence
    stops); ``held``: waiting for the admin to say what an edit meant.
    """

    had: int = 0
    due_now: int = 0
    past: int = 0
    later: int = 0
    held: int = 0


def outlook(c: Campaign, h: History, planned: list[PlannedSend],
            unresolved: MappingT[tuple[str, str], tuple[str, ...]]) -> dict[str, StepOutlook]:
    """Step key -> :class:`StepOutlook` over the customers who already began the campaign's sequence."""
    due = Counter(p.step_id for p in planned if p.campaign == c.id and p.status == "queued")
    counts = {s.key: Counter[str]() for s in c.steps}
    positions = places(c)
    for rows in h.sends.get(c.id, {}).values():
        if all(t is None for t in rows.values()):
            continue
        reached = reach(positions, rows)
        for s in c.steps:
            n = counts[s.key]
            if rows.get(s.key) is not None:
                n["had"] += 1
            elif s.key in rows:
                continue
            elif _held_for(c, s, rows, unresolved):
                n["held"] += 1
            elif reached > s.number:
                n["past"] += 1
            elif reached < s.number:
                n["later"] += 1
    return {k: StepOutlook(had=n["had"], due_now=due[k], past=n["past"], later=max(n["later"] - due[k], 0),
                           held=n["held"]) for k, n in counts.items()}


def _reused_templates(c: Campaign, planned: list[PlannedSend], reused: MappingT[tuple[str, str], str]) -> str | None:
    """Why a campaign must wait: it would mail customers a template a campaign no longer in the file sent them.

    ``reused``: (customer, template) -> the campaign no longer in the file that sent it (:meth:`CampaignPart.reused`).
    """
    dups = [(p, old) for p in planned if p.status == "queued"
            and (old := reused.get((p.customer_key, p.template))) is not None]
    if not dups:
        return None
    olds = sorted({old for _, old in dups})
    p, old = dups[0]
    return (f"campaign {c.id!r} held: it would mail {len(dups)} customer(s) template {p.template!r}, which "
            f"campaign {old!r} (no longer in campaigns.toml) already sent them (e.g. {p.customer_key}). If "
            f"{c.id!r} is {old!r} renamed, add renamed_from = {olds[0]!r} to it (nobody is mailed again); if it is "
            f"a new mailing, add resend = true to it")


@dataclass(slots=True)
class CampaignPart:
    """One campaign's planning over some of the customers; parts over disjoint customers add up (issue #23 item 3).

    A campaign re-planned over all its customers is planned a chunk of
    customers at a time (:mod:`crm_automation.send.plan`), so memory stays
    flat in the list's size; what is decided for the campaign as a whole
    (held for a reused template or an unclear edit, the notes, went out) is
    decided once over the added-up parts (:func:`combine`).
    ``reused``: (customer, template) -> the campaign no longer in the file that
    already sent that customer the template a queued send would use.
    """

    planned: list[PlannedSend] = field(default_factory=list)
    waiting: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    reused: dict[tuple[str, str], str] = field(default_factory=dict)

    def add(self, other: CampaignPart) -> None:
        """Add the part of other customers (the notes say the same for every part: the first ones stay)."""
        self.planned += other.planned
        self.waiting.update(other.waiting)
        self.reused.update(other.reused)
        if not self.notes:
            self.notes = other.notes


def plan_parts(campaigns: list[Campaign], customers: MappingT[str, CustomerView], first_seen: MappingT[str, datetime],
               h: History, now: datetime, *, unresolved: MappingT[tuple[str, str], tuple[str, ...]] | None = None,
               expansions: MappingT[str, tuple[datetime, str]] | None = None) -> dict[str, CampaignPart]:
    """Each enabled campaign's part of the plan over these customers (``h``: their history), before holds."""
    parts = {}
    for c in campaigns:
        if not c.enabled:
            continue
        part = CampaignPart()
        part.planned = _plan_campaign(c, customers, first_seen.get(c.id, now), h, now, unresolved or {},
                                      part.waiting, (expansions or {}).get(c.id), part.notes)
        part.reused = {(p.customer_key, p.template): old for p in part.planned if p.status == "queued"
                       and (old := h.elsewhere.get(p.customer_key, {}).get(p.template)) is not None}
        parts[c.id] = part
    return parts


def combine(campaigns: list[Campaign], parts: MappingT[str, CampaignPart], now: datetime, *,
            one_per_cycle: bool = True, unresolved: MappingT[tuple[str, str], tuple[str, ...]] | None = None,
            expansions: MappingT[str, tuple[datetime, str]] | None = None) -> Plan:
    """The plan from every campaign's part: the campaign-wide holds, notes and broadcasts decided once."""
    out: list[PlannedSend] = []
    held: dict[str, list[str]] = {}
    notes: dict[str, list[str]] = {}
    went_out: list[str] = []
    for c in campaigns:
        part = parts.get(c.id)
        if part is None:
            continue
        why = None if c.resend else _reused_templates(c, part.planned, part.reused)
        if why is not None:
            held[c.id] = [why]
            continue
        waiting = _waiting_holds(c, part.waiting, unresolved or {})
        if waiting:
            held[c.id] = waiting
        if part.notes:
            notes[c.id] = part.notes
        if c.trigger == "at" and (expansions or {}).get(c.id) is None and c.at is not None and now >= c.at:
            went_out.append(c.id)
        out += part.planned
    if one_per_cycle:
        out = one_per_customer(out)[0]
    return Plan(out, held, notes, tuple(went_out))


def plan(campaigns: list[Campaign], customers: MappingT[str, CustomerView], first_seen: MappingT[str, datetime],
         h: History, now: datetime, *, one_per_cycle: bool = True,
         unresolved: MappingT[tuple[str, str], tuple[str, ...]] | None = None,
         expansions: MappingT[str, tuple[datetime, str]] | None = None) -> Plan:
    """Everything that becomes due now and has no ``sends`` row yet.

    Follow-up rules by step identity (issue #17): a customer's *reach* is
    the latest place (in the campaign as it is now) of a step they were sent.
    Step N is due ``after_days`` after the sequence began (:meth:`History.entered`)
    when their reach is N-1; a step placed before their reach (inserted
    after they passed it) is recorded as skipped with the reason. Steps in
    ``unresolved`` (see :mod:`crm_automation.edits`) wait for customers who
    had a step they may replace.
    """
    parts = plan_parts(campaigns, customers, first_seen, h, now, unresolved=unresolved, expansions=expansions)
    return combine(campaigns, parts, now, one_per_cycle=one_per_cycle, unresolved=unresolved, expansions=expansions)


def one_per_customer(planned: list[PlannedSend]) -> tuple[list[PlannedSend], list[PlannedSend]]:
    """(what goes this cycle, the queued sends that wait for the next): one email per customer per cycle."""
    taken: set[str] = set()
    kept, later = [], []
    for p in planned:
        if p.status == "queued":
            if p.customer_key in taken:
                later.append(p)
                continue
            taken.add(p.customer_key)
        kept.append(p)
    return kept, later


def campaign_digest(c: Campaign) -> str:
    """A campaign's definition as text: when it differs from the one last planned, the campaign is re-planned.

    Issue #23: a pass plans the customers with news; an edit (a ``where``,
    a step, ``after_days``, a re-enabled campaign) changes who is due among
    all of them, so that campaign is planned over all its customers once.
    """
    return json.dumps({"id": c.id, "trigger": c.trigger, "where": {k: sorted(v) for k, v in sorted(c.where.items())},
                       "stop_on": sorted(c.stop_on), "field": c.field, "to": c.to,
                       "at": c.at.isoformat() if c.at else None, "include_existing": c.include_existing,
                       "enabled": c.enabled, "skip_if_already_wrote": c.skip_if_already_wrote,
                       "renamed_from": c.renamed_from, "resend": c.resend,
                       "steps": [[s.key, s.template, s.after_days, s.renamed_from, s.resend] for s in c.steps]},
                      ensure_ascii=False, sort_keys=True)


def next_look(c: Campaign, rows: MappingT[str, datetime | None]) -> datetime | None:
    """When the customer's next follow-up of ``c`` comes due, or None when none is pending (issue #23).

    ``rows``: their sends of the campaign, step key -> sent time (None: a
    row not sent). The step after their reach is due ``after_days`` after
    the sequence began, as :func:`plan` decides; a step that already has a
    row is not pending (its own send starts the next wait).
    """
    times = [t for t in rows.values() if t is not None]
    if not times:
        return None
    nxt = reach(places(c), rows) + 1
    if nxt < 1 or nxt >= len(c.steps) or c.steps[nxt].key in rows:
        return None
    return min(times) + timedelta(days=c.steps[nxt].after_days)
