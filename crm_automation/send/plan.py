"""Plan and queue: what is due now, written as queued sends (issue #18 item 2; SPEC §5, §10).

One pass asks the log whom it must plan (:mod:`crm_automation.send.candidates`,
issue #23), then reads those customers' history once, one query per kind:
their sends, inbound mail, the field changes the triggers need, their
suppressions and quarantined mail. It reviews the edits of campaigns.toml
(:mod:`crm_automation.edits`), asks the pure planner (:mod:`crm_automation.planner`)
what is due, and writes the answer as ``queued`` (or ``skipped``, with the
reason) rows, with each candidate's next look. What it read
travels on to dispatch as :class:`Ready`, so the hand-over neither reads the
history again nor runs the planner's rules again for what this pass planned:
only a send queued by an earlier pass (a 4xx retry, a held campaign, one
left by a limit) is checked once more, since a reply may have come since.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from itertools import chain, islice
from typing import TYPE_CHECKING

from crm_automation.edits import Review, review
from crm_automation.errors import DataError
from crm_automation.mapping import Campaign, Step
from crm_automation.models import CustomerView, Permanence, SendStatus, StepState
from crm_automation.planner import (
    QUARANTINED,
    CampaignPart,
    History,
    Plan,
    PlannedSend,
    StepOutlook,
    at_digest,
    blocked_reason,
    combine,
    one_per_customer,
    outlook,
    plan_parts,
    stop_reason,
)
from crm_automation.send.candidates import Candidates, candidates, definitions, next_looks
from crm_automation.stage import StageResult
from crm_automation.store.connection import iso
from crm_automation.store.due import EARLIEST
from crm_automation.store.repo import Store
from crm_automation.store.sends import SendKind, SendRow
from crm_automation.workspace import Clock, Workspace

if TYPE_CHECKING:
    from crm_automation.send.digests import DigestContent

log = logging.getLogger("crm_automation")
CHUNK = 5000  # customers planned at a time: a re-plan's memory is this many customers' history (issue #23 item 3)
# Sends queued per transaction. Why (issue #19): while the worker holds SQLite's write lock nobody else writes,
# and queueing a broadcast to 100,000 customers in one transaction held it ~0.9 s, so every one-click unsubscribe
# POSTed to `serve` meanwhile waited that long. 1,000 rows commit in ~10 ms. Safe to split: a send's row is keyed
# (campaign, step, customer) and inserted OR IGNORE, and what marks the plan done (the `at` expansion, the
# candidates' next looks and mark) is recorded only after the last chunk; a kill between chunks leaves some rows
# queued (nothing handed over: dispatch starts after), and the next pass plans the same again, keeps those rows
# with their Message-IDs and queues the rest — as after a kill before the expansion is recorded.
QUEUE_CHUNK = 1000
SendKey = tuple[str, str, str]  # (campaign, step_id, customer): a campaign step's exactly-once key


@dataclass(frozen=True, slots=True)
class CampaignOutlook:
    """One campaign in ``check --plan``: its edits since the last pass, its holds, and each step's outlook."""

    changes: tuple[str, ...]
    held: tuple[str, ...]
    steps: dict[str, StepOutlook]
    skipped_now: int = 0
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        """The ``--json`` form."""
        return {"changes": list(self.changes), "held": list(self.held), "notes": list(self.notes),
                "skipped_now": self.skipped_now, "steps": {k: dataclasses.asdict(v) for k, v in self.steps.items()}}


@dataclass(frozen=True, slots=True)
class Planned:
    """One planning: the edits reviewed, the candidates and their history, the planner's answer.

    ``later``: queued sends ``one_per_cycle`` keeps for the next cycle (not recorded).
    ``looks``: (campaign, customer) -> when to plan them again, recorded with the plan.
    Planned in one chunk, ``views`` and ``history`` are every candidate's; in
    several, only those of the customers dispatch may need (a send planned
    now or queued before): the rest was read a chunk at a time and let go.
    """

    review: Review
    history: History
    plan: Plan
    views: dict[str, CustomerView]
    candidates: Candidates
    later: list[PlannedSend]
    looks: dict[tuple[str, str], str | None] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Ready:
    """What the plan part hands to dispatch: this pass's one reading of the log, and what its planner decided.

    ``fresh``: the campaign steps this pass's planner queued (its rules
    already applied); ``held``: campaigns whose templates have problems
    (their sends stay queued); ``digests``: the contents of the owner
    digests waiting to be handed over, by (owner, day) (issue #21).
    """

    views: dict[str, CustomerView]
    campaigns: dict[str, Campaign]
    history: History
    fresh: frozenset[SendKey]
    held: dict[str, list[str]]
    digests: Mapping[tuple[str, str], DigestContent] = dataclasses.field(default_factory=dict)

    def recheck(self, s: SendRow) -> tuple[str | None, Step | None]:
        """(why a campaign step must not go now, or None; its step): the planner's rules, once a send.

        A send this pass planned passed them already; one queued by an
        earlier pass is checked here, with the same history: suppressed,
        bounced, or its sequence stopped by a reply meanwhile.
        """
        view = self.views.get(s.customer_key)
        camp = self.campaigns.get(s.campaign)
        if view is None:
            return "customer no longer in the sheet", None
        if camp is None or not camp.enabled:
            return "campaign removed or disabled", None
        step = camp.step(s.step_id) if s.step_id is not None else (
            camp.steps[s.step] if s.step < len(camp.steps) else None)
        if (s.campaign, s.step_id, s.customer_key) not in self.fresh:
            why = blocked_reason(view, self.history)
            t0 = self.history.entered(s.campaign, s.customer_key)  # a follow-up: the sequence began with a send
            if why is None and t0 is not None:
                why = stop_reason(camp, view, t0, self.history)
            if why is not None:
                return why, None
        if step is None:  # removed from campaigns.toml while it waited in the queue (issue #17)
            return f"step {s.step_id or s.step!r} is no longer in the campaign", None
        return None, step


def legacy_keys(legacy: list[tuple[str, int]], campaigns: list[Campaign]) -> dict[tuple[str, int], str]:
    """(campaign, step) -> step key for rows written before schema 4 (issue #17).

    Those rows know only the step's place; campaigns.toml at the first pass
    after the upgrade says which step was there. A place the file no longer
    has becomes ``#N``, a key no step has.
    """
    defined = {c.id: c for c in campaigns}
    out = {}
    for campaign, n in legacy:
        c = defined.get(campaign)
        out[(campaign, n)] = c.steps[n].key if c is not None and 0 <= n < len(c.steps) else f"#{n}"
    return out


class SentCounts(Mapping[tuple[str, str], int]):
    """(campaign, step_id) -> how many customers were sent that step, asked of the log when the review needs it.

    The review needs a count only where the file and the log differ (a
    removed or renamed step), so a pass without edits asks nothing (issue #23).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._known: dict[tuple[str, str], int] = {}

    def __getitem__(self, key: tuple[str, str]) -> int:
        if key not in self._known:
            self._known[key] = self.store.sent_step_count(*key)
        return self._known[key]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._known)

    def __len__(self) -> int:
        return len(self._known)


def read_history(ws: Workspace, store: Store, keys: frozenset[str], views: Mapping[str, CustomerView],
                 found: Review, legacy: dict[tuple[str, int], str],
                 recorded: dict[str, dict[str, StepState]],
                 firsts: dict[tuple[str, str], int] | None = None) -> History:
    """What the log says happened to these customers, as the planner's plain values: one query per kind.

    ``found``'s renames are applied as the log is read: a dry run or
    ``check --plan`` shows what the real pass will do after applying them.
    Rows from before schema 4 have no step_id yet: ``legacy`` says their step.
    ``firsts`` (when given) gets each (campaign, customer)'s first row id: the
    order in which the full scan meets the campaign's followers.
    """
    camp_alias, step_alias = found.aliases()
    defined = {c.id for c in ws.campaigns}
    h = History()
    for s in store.sends_among(keys):
        if s.kind is not SendKind.CAMPAIGN_STEP:
            continue  # an owner notification is no step of a sequence
        campaign = camp_alias.get(s.campaign, s.campaign)
        key = s.step_id if s.step_id is not None else legacy.get((s.campaign, s.step), f"#{s.step}")
        key = step_alias.get((campaign, key), key)
        sent = s.sent_at if s.status == SendStatus.SENT else None
        h.add_send(campaign, key, s.customer_key, sent)
        if firsts is not None:
            firsts.setdefault((campaign, s.customer_key), s.id)
        if sent is not None and campaign not in defined:
            # a campaign no longer in the file: the templates it sent, for a new campaign that reuses one
            template = recorded.get(campaign, {}).get(key)
            h.elsewhere.setdefault(s.customer_key, {}).setdefault(
                template.template if template is not None else key, campaign)
    for e in store.inbound_among(keys):
        if e.permanence is Permanence.DELAYED:
            continue  # a delay never stops a sequence: the message may still arrive
        if e.permanence is Permanence.SOFT:
            lost_in = camp_alias.get(e.campaign, e.campaign) if e.campaign is not None else None
            h.lost.setdefault(e.customer_key, []).append((lost_in, e.at))  # that message is lost (issue #11)
            continue
        h.inbound.setdefault(e.customer_key, []).append((e.kind.value, e.at))
    h.changes.update(store.field_changes_among(trigger_fields(ws.campaigns), keys))
    h.suppressed = store.suppressed_among({v.email.lower() for v in views.values() if v.email})
    for q in store.quarantined_among(keys):
        h.inbound.setdefault(q.customer_key, []).append((QUARANTINED, q.received_at))
        h.quarantine_reasons[q.customer_key] = q.error
    return h


def trigger_fields(campaigns: list[Campaign]) -> set[str]:
    """The fields whose changes the triggers read: a ``change`` trigger's field, an ``at`` campaign's ``where``."""
    fields = {c.field for c in campaigns if c.trigger == "change" and c.field}
    fields |= {f for c in campaigns if c.trigger == "at" for f in c.where}
    return {f for f in fields if f}


class Planning:
    """Plans and queues one pass: asks the log whom to plan, reviews the edits, asks the planner, writes the answer."""

    def __init__(self, ws: Workspace, store: Store, clock: Clock, chunk: int | None = CHUNK) -> None:
        self.ws = ws
        self.store = store
        self.clock = clock
        self.chunk = chunk  # customers planned at a time (None: all at once)

    def views(self, keys: frozenset[str]) -> dict[str, CustomerView]:
        """These customers (the present ones) as the planner sees them, in the sheet's order of arrival."""
        ef = self.ws.email_field
        return {c.key: CustomerView(c.key, (c.data.get(ef) if ef else None), c.data, c.first_seen, c.email_status)
                for c in self.store.customers_among(keys)}

    def review(self, *, record: bool) -> tuple[Review, dict[tuple[str, int], str], dict[str, dict[str, StepState]]]:
        """The edits of campaigns.toml since the last pass (recorded when ``record``).

        Returns (the review, legacy step keys still to apply to rows from
        before schema 4 - none once a real pass adopted them -, the steps as recorded).
        """
        legacy = legacy_keys(self.store.legacy_steps(), self.ws.campaigns)
        if record and legacy:
            n = self.store.adopt_step_ids(legacy)
            log.info("gave %d send(s) from before the upgrade their step's identity (from campaigns.toml)", n)
            legacy = {}
        recorded = self.store.campaign_steps()
        found = review(self.ws.campaigns, recorded, SentCounts(self.store), sent_in=self.store.has_sent_in)
        if record and (found.states or found.campaign_renames or found.step_renames):
            self.store.record_campaign_edits(found.states, found.campaign_renames, found.step_renames,
                                             self.clock.now())
            for campaign, lines in found.changes.items():
                for line in lines:
                    log.info("campaign %r: %s", campaign, line)
            if found.campaign_renames or found.step_renames:
                recorded = self.store.campaign_steps()
        return found, legacy, recorded

    def plan(self, *, record: bool, everyone: bool = False) -> Planned:
        """What is due now: the planner's rules over the candidates (``everyone``: over every customer).

        The candidates are planned ``self.chunk`` customers at a time (None:
        all at once; ``check --plan``'s outlook counts everyone at once), in
        the full scan's order, each chunk's history read with one query per
        kind and let go once planned (issue #23 item 3: a campaign
        re-planned over a million customers must not hold them all). What is
        decided per campaign (holds, notes, a broadcast going out) is decided
        once over all chunks, and the sends are put back in the full scan's
        order (:func:`_in_scan_order`), so the queue, the per-pass ``limit``
        and the rate limits see the same order as a plan made at once.
        Nothing is written here: a pass killed while planning leaves the log
        as it was, and the next pass plans the same again.
        """
        found, legacy, recorded = self.review(record=record)
        now = self.clock.now()
        first_seen = self.store.campaign_first_seen([c.id for c in self.ws.campaigns], now, record=record)
        if not record:  # the renames a real pass would apply first: a renamed campaign keeps its audience
            for old, new in found.campaign_renames:
                earlier = self.store.campaign_first_seen([old], now, record=False)[old]
                first_seen[new] = min(first_seen.get(new, now), earlier)
        known = self.expansions(found, record=record)
        cands = candidates(self.ws.campaigns, self.store, found, first_seen, known, now)
        if everyone:
            cands = Candidates(frozenset(self.store.every_customer()), cands.replan, cands.mark, cands.news)
        chunk = None if everyone else self.chunk
        size = chunk if chunk is not None and len(cands.keys) > chunk else None
        if size is None:  # one chunk: what this pass read stays at hand for dispatch
            views = self.views(cands.keys)
            h = read_history(self.ws, self.store, cands.keys, views, found, legacy, recorded)
            parts = plan_parts(self.ws.campaigns, views, first_seen, h, now, unresolved=found.unresolved,
                               expansions=known)
            looks = next_looks(self.ws.campaigns, cands, set(views), h, Plan(_sends_of(parts)), [])
        else:
            parts, looks = self._plan_in_chunks(cands, size, found, legacy, recorded, first_seen, known, now)
        result = combine(self.ws.campaigns, parts, now, one_per_cycle=False, unresolved=found.unresolved,
                         expansions=known)
        kept, later = one_per_customer(result.sends) if self.ws.cfg.outbound.one_per_cycle else (result.sends, [])
        looks = {ck: t for ck, t in looks.items() if ck[0] not in result.held}
        for p in later:
            looks[(p.campaign, p.customer_key)] = EARLIEST
        if size is not None:  # keep what dispatch may need: the customers with a send planned now or queued before
            needed = frozenset({p.customer_key for p in result.sends} | self.store.queued_customers())
            views = self.views(needed)
            h = read_history(self.ws, self.store, needed, views, found, legacy, recorded)
        return Planned(found, h, dataclasses.replace(result, sends=kept), views, cands, later, looks)

    def _plan_in_chunks(self, cands: Candidates, size: int, found: Review, legacy: dict[tuple[str, int], str],
                        recorded: dict[str, dict[str, StepState]], first_seen: Mapping[str, datetime],
                        known: Mapping[str, tuple[datetime, str]], now: datetime
                        ) -> tuple[dict[str, CampaignPart], dict[tuple[str, str], str | None]]:
        """Every campaign's part over all candidates, ``size`` customers at a time, and their next looks."""
        # the present customers in the full scan's order, streamed; then the absent ones (only their next looks)
        order = chain(self.store.present_keys_among(cands.keys), self.store.absent_among(cands.keys))
        parts: dict[str, CampaignPart] = {}
        looks: dict[tuple[str, str], str | None] = {}
        firsts: dict[tuple[str, str], int] = {}
        while keys := frozenset(islice(order, size)):
            views = self.views(keys)
            seen: dict[tuple[str, str], int] = {}
            h = read_history(self.ws, self.store, keys, views, found, legacy, recorded, seen)
            chunk = plan_parts(self.ws.campaigns, views, first_seen, h, now, unresolved=found.unresolved,
                               expansions=known)
            part_cands = Candidates(keys, cands.replan, cands.mark, cands.news & keys)
            looks.update(next_looks(self.ws.campaigns, part_cands, set(views), h, Plan(_sends_of(chunk)), []))
            for cid, part in chunk.items():
                firsts.update({(cid, p.customer_key): seen[(cid, p.customer_key)] for p in part.planned if p.step})
                parts.setdefault(cid, CampaignPart()).add(part)
        by_id = {c.id: c for c in self.ws.campaigns}
        for cid, part in parts.items():
            part.planned = _in_scan_order(by_id[cid], part.planned, firsts)
        return parts, looks

    def expansions(self, found: Review, *, record: bool) -> dict[str, tuple[datetime, str]]:
        """When each ``at`` campaign went out to its segment (renames applied; old logs adopted when ``record``).

        An ``at`` campaign that went out before schema 4 has sends but no
        record of it: the time its first send was queued stands for it.
        """
        known = self.store.expansions()
        for old, new in found.campaign_renames:
            if old in known:
                known.setdefault(new, known[old])
        if record:
            adopt = [c for c in self.ws.campaigns if c.trigger == "at" and c.id not in known
                     and self.store.has_sends(c.id)]
            for c in adopt:
                self.store.record_expansion(c.id, self.clock.now(), at_digest(c), since_sends=True)
            if adopt:
                known = self.store.expansions()
        return known

    def queue(self, planned: Planned, new_message_id: Callable[[], str], held: dict[str, list[str]]) -> Ready:
        """Write the plan as ``queued``/``skipped`` rows and what the next pass asks for; what dispatch needs.

        ``new_message_id`` makes each queued send's Message-ID (kept with the
        row, so a retry or a crash recovery names the same message). The
        ``at`` campaigns that went out, each candidate's next look and the
        plan's mark are recorded after the sends: a kill in between plans
        those customers again, and finds their rows. The sends are written
        :data:`QUEUE_CHUNK` to a transaction, so a broadcast never holds the
        log's write lock for long (issue #19); a kill between two chunks is
        the same case.
        """
        now = self.clock.now()
        sends = planned.plan.sends
        rows = [{"campaign": p.campaign, "step": p.step, "step_id": p.step_id, "customer_key": p.customer_key,
                 "status": p.status, "message_id": new_message_id() if p.status == SendStatus.QUEUED else None,
                 "queued_at": iso(now), "error": p.reason, "email": p.email} for p in sends]
        for start in range(0, len(rows), QUEUE_CHUNK):  # short write transactions (see QUEUE_CHUNK)
            self.store.queue_sends(rows[start:start + QUEUE_CHUNK])
        by_id = {c.id: c for c in self.ws.campaigns}
        for cid in planned.plan.went_out:  # after its sends are queued: a kill before this expands it again
            self.store.record_expansion(cid, now, at_digest(by_id[cid]))
        self.store.record_plan(planned.candidates.mark, definitions(self.ws.campaigns, planned.plan), planned.looks,
                               replanned=planned.candidates.replan)
        fresh = frozenset((p.campaign, p.step_id, p.customer_key) for p in sends if p.status == SendStatus.QUEUED)
        return Ready(planned.views, by_id, planned.history, fresh, held)

    def template_problems(self) -> dict[str, list[str]]:
        """Campaign id -> problems of its templates (syntax, unknown names, missing files); checked every pass.

        Why every pass: a typo met only when a send is due used to fail every
        due send of the campaign, and nothing went after the fix until
        ``requeue --all-failed`` (issue #9). A campaign with a problem is
        held: its sends stay ``queued`` and go out once the template is fixed.
        """
        fields = set(self.ws.mapping.fields)
        checked: dict[str, list[str]] = {}
        out: dict[str, list[str]] = {}
        for c in self.ws.campaigns:
            if not c.enabled:
                continue
            problems = []
            for step in c.steps:
                if step.template not in checked:
                    checked[step.template] = self.ws.templates.check(step.template, fields)
                problems += checked[step.template]
            if problems:
                out[c.id] = [f"campaign {c.id!r} held, its sends stay queued: {p}" for p in dict.fromkeys(problems)]
        return out

    def edit_outlook(self) -> dict[str, CampaignOutlook]:
        """What campaigns.toml, as it is now, means for customers already in a sequence; records nothing.

        ``check --plan`` shows it (issue #17): the changes since the last
        pass, what is held and why, and per step who had it, who gets it now
        or later, and who is past it.
        """
        p = self.plan(record=False, everyone=True)  # the outlook counts every customer in a sequence
        out = {}
        for c in self.ws.campaigns:
            if not c.enabled:
                continue
            steps = outlook(c, p.history, p.plan.sends, p.review.unresolved)
            out[c.id] = CampaignOutlook(changes=tuple(p.review.changes.get(c.id, ())),
                                        held=tuple(p.plan.held.get(c.id, ())),
                                        steps={s.key: steps[s.key] for s in c.steps},
                                        skipped_now=sum(x.campaign == c.id and x.status == SendStatus.SKIPPED
                                                        for x in p.plan.sends),
                                        notes=tuple(p.plan.notes.get(c.id, ())))
        return out


def _sends_of(parts: Mapping[str, CampaignPart]) -> list[PlannedSend]:
    return [p for part in parts.values() for p in part.planned]


def _in_scan_order(c: Campaign, planned: list[PlannedSend], firsts: Mapping[tuple[str, str], int]
                   ) -> list[PlannedSend]:
    """A campaign's sends planned chunk by chunk, in the order the planner gives them over everyone at once.

    The planner lists a campaign's first steps in the order of its targets
    (the sheet's order of arrival, which the chunks follow; by key for a
    ``change`` trigger), then its follow-ups in the order of each follower's
    first row in the log (``firsts``), each follower's steps in the
    campaign's order (kept: the sort is stable).
    """
    def at(item: tuple[int, PlannedSend]) -> tuple[int, int | str]:
        n, p = item
        if p.step:
            return 1, firsts[(c.id, p.customer_key)]
        return 0, p.customer_key if c.trigger == "change" else n

    return [p for _, p in sorted(enumerate(planned), key=at)]


def dry_run_report(planned: list[PlannedSend], views: dict[str, CustomerView], res: StageResult,
                   limit: int | None, held: dict[str, list[str]],
                   render: Callable[[PlannedSend, CustomerView], str]) -> None:
    """What a real pass would queue, skip, hold or fail, rendered but not sent (``send --dry-run``).

    ``render`` gives the subject of one planned email (raising ``DataError`` when it cannot be built).
    """
    shown = 0
    for p in planned:
        item: dict[str, object] = {"campaign": p.campaign, "step": p.step, "customer": p.customer_key,
                                   "email": p.email, "status": p.status}
        if p.status == SendStatus.SKIPPED:
            item["reason"] = p.reason
        elif p.campaign in held:
            item["status"] = "held"
            item["reason"] = "template problems (see above)"
        elif limit is None or shown < limit:
            try:
                item["subject"] = render(p, views[p.customer_key])
                shown += 1
            except DataError as e:
                item["status"] = "would fail"
                item["reason"] = str(e)
                res.problems.append(str(e))
        res.details.append(item)
    res.stats = {"would_send": sum(d["status"] == SendStatus.QUEUED for d in res.details),
                 "held": sum(d["status"] == "held" for d in res.details),
                 "would_skip": sum(d["status"] == SendStatus.SKIPPED for d in res.details),
                 "would_fail": sum(d["status"] == "would fail" for d in res.details)}
