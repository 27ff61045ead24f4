"""(campaigns, customers, history, suppressions, now) -> what to send. Pure; never reads the clock.

Rules (SPEC §5, §10, and what the README documents where the SPEC is silent):

- ``new``: customers first seen after the campaign was first seen, so adding
  a campaign never mails the customers who already existed — unless the
  campaign says ``include_existing = true``.
- ``change``: a ``field_changed`` to the ``to`` value logged after the
  campaign was first seen, the field still holding that value.
- ``at``: once ``now`` has passed ``at``, everyone in the segment at that time.
- follow-up N is due ``after_days`` after step 0 was *sent*, if step N-1 was
  sent and nothing in ``stop_on`` happened since step 0 was sent.
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

from collections.abc import Mapping as MappingT
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from crm_automation.mapping import Campaign

QUARANTINED = "quarantined"  # History.inbound kind of a quarantined message from the customer
STOP_KINDS = {"reply": ("email_in", QUARANTINED), "bounce": ("bounce",), "unsubscribe": ("unsubscribe",)}


@dataclass(frozen=True, slots=True)
class CustomerView:
    """What the planner needs of a customer."""

    key: str
    email: str | None
    data: dict[str, Any]
    first_seen: datetime
    email_status: str


@dataclass(slots=True)
class History:
    """What the log says happened, as plain values."""

    send_keys: set[tuple[str, int, str]] = field(default_factory=set)
    sent_at: dict[tuple[str, int, str], datetime] = field(default_factory=dict)
    inbound: dict[str, list[tuple[str, datetime]]] = field(default_factory=dict)  # key -> [(kind, logged_at)]
    changes: dict[str, list[tuple[str, Any, datetime]]] = field(default_factory=dict)  # field -> [(key, new, at)]
    suppressed: frozenset[str] = frozenset()
    quarantine_reasons: dict[str, str] = field(default_factory=dict)  # key -> why their last message was quarantined
    # key -> [(campaign or None, logged_at)] of soft bounces: that message was lost (issue #11); it stops the
    # sequence of its campaign (or every sequence when the bounce did not say which message it was).
    lost: dict[str, list[tuple[str | None, datetime]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PlannedSend:
    """One email to queue, or a send recorded as ``skipped`` with its reason."""

    campaign: str
    step: int
    customer_key: str
    email: str | None
    template: str
    status: str  # "queued" | "skipped"
    reason: str | None = None


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
    if cust.email.lower() in h.suppressed:
        return "suppressed"
    if cust.email_status in {"bounced", "unsubscribed"}:
        return cust.email_status
    return None


def _step0_targets(c: Campaign, customers: MappingT[str, CustomerView], first_seen: datetime, h: History,
                   now: datetime) -> list[CustomerView]:
    if c.trigger == "new":
        return [x for x in customers.values()
                if (c.include_existing or x.first_seen > first_seen) and matches(c.where, x.data)]
    if c.trigger == "change":
        keys = {k for k, new, at in h.changes.get(c.field or "", ()) if str(new) == c.to and at >= first_seen}
        return [x for k in sorted(keys) if (x := customers.get(k)) is not None
                and str(x.data.get(c.field or "")) == c.to and matches(c.where, x.data)]
    if c.trigger == "at" and c.at is not None and now >= c.at:
        return [x for x in customers.values() if matches(c.where, x.data)]
    return []


def plan(campaigns: list[Campaign], customers: MappingT[str, CustomerView], first_seen: MappingT[str, datetime],
         h: History, now: datetime, *, one_per_cycle: bool = True) -> list[PlannedSend]:
    """Everything that becomes due now and has no ``sends`` row yet."""
    out: list[PlannedSend] = []
    for c in campaigns:
        if not c.enabled:
            continue
        seen = first_seen.get(c.id, now)
        step0 = c.steps[0]
        for cust in _step0_targets(c, customers, seen, h, now):
            if (c.id, 0, cust.key) in h.send_keys:
                continue
            why = blocked_reason(cust, h)
            if why is None and c.trigger == "new" and c.skip_if_already_wrote:
                why = wrote_first(cust, h)
            out.append(PlannedSend(c.id, 0, cust.key, cust.email, step0.template,
                                   "skipped" if why else "queued", why))
        for step in c.steps[1:]:
            for (cid, n, key), t0 in h.sent_at.items():
                if cid != c.id or n != 0 or (c.id, step.number, key) in h.send_keys:
                    continue
                if (c.id, step.number - 1, key) not in h.sent_at:
                    continue
                if now < t0 + timedelta(days=step.after_days):
                    continue
                follower = customers.get(key)
                if follower is None:
                    continue
                why = blocked_reason(follower, h) or stop_reason(c, follower, t0, h)
                out.append(PlannedSend(c.id, step.number, key, follower.email, step.template,
                                       "skipped" if why else "queued", why))
    if one_per_cycle:
        taken: set[str] = set()
        kept = []
        for p in out:
            if p.status == "queued":
                if p.customer_key in taken:
                    continue
                taken.add(p.customer_key)
            kept.append(p)
        out = kept
    return out
