"""Digest planning: each owner's digest of the day written as a queued (or skipped) send, once (issue #21).

The send pass calls :func:`queue_digests` after it queued the campaigns'
sends. On the first pass at or after ``[digest] at`` on a digest weekday
(:func:`crm_automation.owner_digest.digest_day`) it asks the contents of
every owner's digest (a :class:`DigestSource`, the application layer's
:mod:`crm_automation.app.digest`, handed in by the worker: this stage does not
import the layer above it) and writes one ``sends`` row per owner in one
transaction: ``queued`` when there is something to say, else ``skipped``
with why (nothing to say, the owner's address is not an address, or is
suppressed). From then on that day is planned (:meth:`digest_planned`): a
later pass, or a worker restarted after a kill, plans nothing for it, and
the unique key (``owner-digest``, day, owner) holds even if two tried.
A kill before the commit leaves nothing, and the next pass plans the day.

The queued digests then go through dispatch like every send (``sending``
committed before the hand-over, recovery after a crash, ``uncertain`` never
repeated): at most one digest per owner and day, whatever instant the
worker is killed at.

A digest still queued from an earlier pass (outside the send window, a
limit reached, a 4xx) has its contents read again for the hand-over, its
events up to the moment it was queued; one superseded by a later day's
digest of the same owner is skipped (the later one's window covers it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Protocol

from crm_automation.models import SendStatus
from crm_automation.owner_digest import digest_day
from crm_automation.stage import StageResult
from crm_automation.store.repo import Store
from crm_automation.store.sends import digest_row
from crm_automation.workspace import Workspace

NOTHING_TO_SAY = "nothing to say"
DigestKey = tuple[str, str]  # (owner address, local day YYYY-MM-DD): a digest's exactly-once key


class DigestContent(Protocol):
    """One owner's digest as the send pass needs it: whether it says anything, and what its template sees."""

    @property
    def empty(self) -> bool:
        """Nothing to say: no digest is sent."""
        ...

    def context(self) -> dict[str, object]:
        """The names the digest template sees."""
        ...


DigestSource = Callable[[Store, datetime, Mapping[str, datetime] | None], Mapping[str, "DigestContent | str"]]
"""(log, now, owners) -> owner address -> their digest, or why they are not mailed.

``owners`` None: every owner, events up to ``now``; else those owners, each
with the end of their digest's window (when it was queued).
"""


def queue_digests(ws: Workspace, store: Store, now: datetime, source: DigestSource,
                  new_message_id: Callable[[], str], res: StageResult) -> dict[DigestKey, DigestContent]:
    """Plan today's digests if due and not planned yet; the contents of every digest waiting to be handed over."""
    cfg = ws.cfg.digest
    if cfg is None or ws.mapping.roles.owner is None:
        return {}
    out: dict[DigestKey, DigestContent] = {}
    day = digest_day(now, ws.cfg.timezone, cfg.weekday_numbers, cfg.minute_of_day)
    if day is not None and not store.digest_planned(day.isoformat()):
        today = day.isoformat()
        rows = []
        for owner, content in sorted(source(store, now, None).items()):
            why = content if isinstance(content, str) else NOTHING_TO_SAY if content.empty else None
            rows.append(digest_row(owner, today, now, message_id=None if why else new_message_id(), why_not=why))
            if not isinstance(content, str) and why is None:
                out[(owner, today)] = content
        if rows:
            store.queue_sends(rows)
        res.stats["digests_planned"] = len(out)
        res.stats["digests_skipped"] = len(rows) - len(out)
    earlier = [s for s in store.digest_sends(SendStatus.QUEUED) if (s.customer_key, s.step_id or "") not in out]
    if not earlier:
        return out
    latest: dict[str, str] = {}
    for s in earlier:
        latest[s.customer_key] = max(latest.get(s.customer_key, ""), s.step_id or "")
    for owner, d in out:
        latest[owner] = max(latest.get(owner, ""), d)
    waiting: dict[str, datetime] = {}
    for s in earlier:
        if (s.step_id or "") < latest[s.customer_key]:
            store.mark_status(s.id, SendStatus.SKIPPED, f"superseded by the digest of {latest[s.customer_key]}")
        else:
            waiting[s.customer_key] = s.queued_at or now
    again = source(store, now, waiting) if waiting else {}
    for s in earlier:
        if s.customer_key not in waiting:
            continue
        content = again.get(s.customer_key, NOTHING_TO_SAY)
        why = content if isinstance(content, str) else NOTHING_TO_SAY if content.empty else None
        if why is not None or isinstance(content, str):
            store.mark_status(s.id, SendStatus.SKIPPED, f"{why} when its turn came")
        else:
            out[(s.customer_key, s.step_id or "")] = content
    return out
