"""What an edit of ``mappings/campaigns.toml`` means for customers already in a sequence (issue #17). Pure.

The log remembers each campaign's steps as it last planned them
(:class:`StepState`: template, place, retired or not). Comparing that with
the file tells what the admin changed between two passes:

- a step that is new in the file is *inserted*: it goes to the customers
  for whom it is still due; those who already had a later step are past it
  (the planner records them as skipped, with the reason);
- a step that is gone was *removed*: nobody gets it any more, and it is
  marked retired once nothing may be replacing it;
- a step that moved keeps its sends: steps are known by their key (an ``id``,
  else the template's name), never by their place;
- ``renamed_from`` on a step or a campaign carries the old key's sends over.

One edit is unclear on its own: in the same edit a step *appears* and a
step that was already sent *disappears*. That is a step whose template was
renamed (the same email: nobody should get it again) or a step replaced by
a new one (a new email: the customers who had the old one should get it).
Guessing either way mails someone wrongly, so the new step is **held** for
the customers who received the step that disappeared until the admin says
which: ``renamed_from = "<old key>"`` (or ``id = "<old key>"``) on the step,
or ``resend = true``. The same holds for the first email of a campaign
(``step_id`` and the campaign's ``resend``). The hold is remembered in the
log (``StepState.unresolved``), so it lasts until it is resolved, not just
for the pass that saw the edit.

A campaign may be renamed too: ``renamed_from`` on the campaign carries
the old id's sends over. A *new* campaign that would mail customers a
template they already received from a campaign no longer in the file is
held by the planner (:func:`crm_automation.planner.plan`) until the admin
declares ``renamed_from`` or ``resend = true``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from crm_automation.mapping import Campaign
from crm_automation.models import StepState


@dataclass(frozen=True, slots=True)
class Review:
    """What the file says compared with what the log last planned.

    ``states``: the new record of each campaign whose steps changed (the whole
    campaign), to be written by the send pass. ``campaign_renames`` and
    ``step_renames``: sends still recorded under an old key that now belong
    to a new one. ``unresolved``: (campaign, step key) -> the disappeared
    steps it may replace; its sends to customers who had one of them are held.
    ``changes``: one line per change, for ``check --plan`` and the log.
    """

    states: dict[str, dict[str, StepState]] = field(default_factory=dict)
    campaign_renames: tuple[tuple[str, str], ...] = ()
    step_renames: tuple[tuple[str, str, str], ...] = ()
    unresolved: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    changes: dict[str, list[str]] = field(default_factory=dict)

    def aliases(self) -> tuple[dict[str, str], dict[tuple[str, str], str]]:
        """(old campaign -> new, (campaign, old step) -> new step): how to read the log as if renames were applied."""
        camp = dict(self.campaign_renames)
        return camp, {(c, old): new for c, old, new in self.step_renames}


def hold_reason(campaign: str, step: str, gone: tuple[str, ...], *, first: bool = False) -> str:
    """The message for a step held because its edit is unclear (shown in ``send`` and ``check``).

    ``first``: the step is the campaign's first email, whose identity is the
    campaign's ``step_id`` (its ``renamed_from`` would rename the campaign).
    """
    names = " / ".join(repr(g) for g in gone)
    if first:
        same = f"set step_id = {gone[0]!r} in the campaign"
        new = "add resend = true to the campaign"
    else:
        same = f"add renamed_from = {gone[0]!r} to it"
        new = "add resend = true to it"
    return (f"campaign {campaign!r}: step {step!r} appeared in the same edit in which step {names} (already sent) "
            f"left the campaign, so it is held for the customers who had {names}: if it is the same email "
            f"renamed, {same} (nobody gets it twice); if it is a new email, {new} (they get it too)")


def review(campaigns: list[Campaign], recorded: Mapping[str, Mapping[str, StepState]],
           sent: Mapping[tuple[str, str], int], *, sent_in: Callable[[str], bool] | None = None) -> Review:
    """Compare the file's campaigns with the log's record of them (see the module docstring).

    ``recorded``: campaign -> step key -> state as last planned (empty for
    a log from before issue #17 or a campaign never planned: its current
    steps are then simply recorded). ``sent``: (campaign, step key) -> how
    many customers were sent that step; only steps sent to someone make an
    edit unclear. ``sent_in``: whether a campaign sent anything (default:
    read from ``sent``; the send pass asks the log, issue #23).
    """
    if sent_in is None:
        sent_in = lambda cid: any(k[0] == cid for k in sent)  # noqa: E731
    out = Review()
    camp_renames: list[tuple[str, str]] = []
    step_renames: list[tuple[str, str, str]] = []
    for c in campaigns:
        if not c.enabled:
            continue  # a paused campaign keeps its record until it runs again
        lines: list[str] = []
        old_id = c.renamed_from
        rec = dict(recorded.get(c.id, {}))
        if old_id is not None and (old_id in recorded or sent_in(old_id)):
            camp_renames.append((old_id, c.id))
            lines.append(f"renamed from {old_id!r}: its sends count as this campaign's")
            for k, st in recorded.get(old_id, {}).items():
                rec.setdefault(k, st)
        counted = _Counted(c.id, old_id, sent)
        step_renames += _carry_step_renames(c, rec, counted, lines)
        if not rec:
            out.states[c.id] = {s.key: StepState(s.template, s.number) for s in c.steps}
            continue
        new = _new_states(c, rec, counted, lines)
        for k, st in new.items():
            if st.unresolved:
                out.unresolved[(c.id, k)] = st.unresolved
        if new != rec or c.id not in recorded:
            out.states[c.id] = new
        if lines:
            out.changes[c.id] = lines
    return replace(out, campaign_renames=tuple(camp_renames), step_renames=tuple(step_renames))


@dataclass(frozen=True, slots=True)
class _Counted:
    """How many customers had a step of one campaign, its sends under an old id (``renamed_from``) counted too."""

    campaign: str
    old_id: str | None
    sent: Mapping[tuple[str, str], int]

    def __call__(self, key: str) -> int:
        old = self.sent.get((self.old_id, key), 0) if self.old_id is not None else 0
        return self.sent.get((self.campaign, key), 0) + old


def _carry_step_renames(c: Campaign, rec: dict[str, StepState], sent_count: _Counted,
                        lines: list[str]) -> list[tuple[str, str, str]]:
    """Apply the steps' ``renamed_from`` (and a held step whose old key came back) to ``rec``; the renames."""
    renames: list[tuple[str, str, str]] = []
    for s in c.steps:
        old_key = s.renamed_from
        if old_key is not None and (old_key in rec or sent_count(old_key) > 0):
            renames.append((c.id, old_key, s.key))
            before = rec.pop(old_key, None)
            if s.key not in rec and before is not None:
                rec[s.key] = before
    current_keys = {s.key for s in c.steps}
    for key, st in list(rec.items()):
        # A held step that left again while a step it may replace came back (``id``/``step_id`` set to the
        # old key): the admin said they are one email, so who had this one had that one.
        back = next((u for u in st.unresolved if u in current_keys), None)
        if key not in current_keys and back is not None:
            renames.append((c.id, key, back))
            del rec[key]
            lines.append(f"step {key!r} is {back!r} again: who had either does not get it again")
    return renames


def _new_states(c: Campaign, rec: Mapping[str, StepState], sent_count: _Counted,
                lines: list[str]) -> dict[str, StepState]:
    """The campaign's new record: its steps now (inserted ones maybe held), and removed ones retired or kept."""
    current = {s.key: s for s in c.steps}
    gone = tuple(sorted(k for k, st in rec.items() if k not in current and not st.retired and sent_count(k) > 0))
    new: dict[str, StepState] = {}
    for s in c.steps:
        before = rec.get(s.key)
        if before is None:
            unclear = () if s.resend else gone
            new[s.key] = StepState(s.template, s.number, unresolved=unclear)
            lines.append(f"step {s.key!r} inserted as {place_name(s.number)}" + (
                f"; held: it may replace {' / '.join(map(repr, gone))}" if unclear else ""))
            continue
        unclear = () if s.resend else tuple(u for u in before.unresolved if u in gone)
        new[s.key] = StepState(s.template, s.number, unresolved=unclear)
        if before.retired:
            lines.append(f"step {s.key!r} is back as {place_name(s.number)}: who had it does not get it again")
        elif before.position != s.number:
            lines.append(f"step {s.key!r} moved from {place_name(before.position)} to {place_name(s.number)}")
        elif before.template != s.template:
            lines.append(f"step {s.key!r} now uses template {s.template!r}")
    pending = {u for st in new.values() for u in st.unresolved}
    for k, st in rec.items():
        if k in current:
            continue
        keep = replace(st, retired=st.retired or k not in pending)
        new[k] = keep
        if not st.retired:
            lines.append(f"step {k!r} removed ({sent_count(k)} had it)" + (
                "" if keep.retired else "; a new step may be replacing it"))
    return new


def place_name(n: int) -> str:
    """A step's place as the admin reads it: "the first email", "follow-up 2"."""
    return "the first email" if n == 0 else f"follow-up {n}"
