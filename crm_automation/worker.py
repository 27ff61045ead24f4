"""The worker: stage order, the clock, and the failure policy.

One pass is sync, fetch, send, write-back: sync first so inbound mail can
match new rows, fetch before send so a fresh reply or bounce stops a send.
Each stage is recorded in ``runs``. This module owns the per-item failure
boundary: a bad row, message or send is recorded and the stage carries on;
a service that cannot be reached stops the stage, and the next pass retries.
"""

from __future__ import annotations

import gc
import json
import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import parseaddr
from typing import Any, Protocol

from crm_automation.config import parse_duration, parse_window
from crm_automation.effects import effects
from crm_automation.errors import (
    ConfigError,
    CrmError,
    DataError,
    MessageError,
    PermanentSendError,
    ServiceError,
    StorageError,
    TransientSendError,
    UncertainSendError,
)
from crm_automation.mailbox.base import Cursor, MailboxSource
from crm_automation.match import match
from crm_automation.models import Classification, Kind, ParsedMessage, Permanence, RawMessage
from crm_automation.planner import (
    QUARANTINED,
    CustomerView,
    History,
    PlannedSend,
    blocked_reason,
    plan,
    stop_reason,
)
from crm_automation.store import identity
from crm_automation.store.repo import Store, iso
from crm_automation.templating import build_message
from crm_automation.workspace import Clock, Workspace

log = logging.getLogger("crm_automation")
NOTIFY = "owner-notify"  # pseudo-campaign: owner notifications reuse the sends table's exactly-once rows
RETRY_BASE = timedelta(minutes=5)
# Providers answer a sending quota with a *permanent* code (Gmail 550 5.4.5, Microsoft 554 5.2.0
# SubmissionQuotaExceeded); failing the whole queue for it would be wrong, so these wait an hour instead.
_QUOTA = re.compile(r"quota|rate.?limit|too many|5\.4\.5|SubmissionQuotaExceeded|sending limit|超过|频率|限制",
                    re.IGNORECASE)
MAX_CONSECUTIVE_5XX = 3
RETRY_MAX = timedelta(hours=6)


class Progress(Protocol):
    """Where long stages report progress (a rich bar on a terminal, log lines otherwise)."""

    def __call__(self, desc: str, total: int | None) -> Any:
        """Return an object with ``advance(n=1)`` and ``close()``."""
        ...


class _NoBar:
    def advance(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a sync builds its many objects.

    Reading, validating and logging 100,000 rows allocates millions of
    lists, dicts and strings and no reference cycles; each allocation burst
    set off full collections that walked every one of them again, about a
    second of a first sync (issue #3). Reference counting still frees
    everything as usual.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def no_progress(desc: str, total: int | None) -> _NoBar:
    """The default: no progress display."""
    return _NoBar()


@dataclass
class StageResult:
    """How one stage went. ``problems`` are per-item failures (exit 1); ``error`` a stopped stage (exit 3).

    ``notes`` are shown like problems but fail nothing: e.g. sheet cells blanked in rows that were kept (issue #11).
    """

    job: str
    stats: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    error: CrmError | None = None
    details: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problems and no error."""
        return self.error is None and not self.problems

    def exit_code(self) -> int:
        """SPEC §7: 0 done; 1 some items failed; 3 a service could not be reached (2 raised earlier)."""
        if self.error is not None:
            return self.error.exit_code
        return 1 if self.problems else 0

    def to_json(self) -> dict[str, Any]:
        """Machine-readable form for ``--json``."""
        out: dict[str, Any] = {"job": self.job, "ok": self.ok, "stats": self.stats, "problems": self.problems}
        if self.error is not None:
            out["error"] = str(self.error)
        if self.details:
            out["details"] = self.details
        if self.notes:
            out["notes"] = self.notes
        return out


class _LazyIndex(dict):  # type: ignore[type-arg]
    """address -> customer key, loaded on first use: a poll that finds no mail never decodes the customers."""

    def __init__(self, load: Callable[[], dict[str, str]]) -> None:
        super().__init__()
        self._load: Callable[[], dict[str, str]] | None = load

    def _ensure(self) -> None:
        if self._load is not None:
            load, self._load = self._load, None
            self.update(load())

    def get(self, key: str, default: Any = None) -> Any:
        self._ensure()
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self._ensure()
        return super().__contains__(key)


class Worker:
    """Runs stages against one workspace. Library entry point; the CLI is a thin layer over it."""

    def __init__(self, ws: Workspace, *, clock: Clock | None = None, progress: Progress = no_progress,
                 stop: threading.Event | None = None, sleep: Callable[[float], None] = time.sleep,
                 store: Store | None = None, accept_new_log: bool = False) -> None:
        self.ws = ws
        self.clock = clock or Clock()
        self.progress = progress
        self.stop = stop or threading.Event()
        self.sleep = sleep
        if store is None:
            store = ws.open_store()
            try:
                identity.guard(store, ws.cfg, accept_new=accept_new_log)
            except CrmError:
                store.close()
                raise
        self.store = store
        self.sheet_version: str | None = None
        self._fresh_read = False  # the sync of this cycle read the sheet (a metered write-back may reuse it)
        self._sheet_keys: list[Any] | None = None  # the key column as the last sync read it
        # (fingerprint, version) of the file content the log's last sync recorded, when this worker knows both
        self._synced: tuple[str, str | None] | None = None
        self._appended: set[str] = set()  # senders this worker appended to the sheet since that read
        # key -> write-back column -> text, as read (or a function building it: see _remember_cells)
        self._sheet_cells: dict[str, dict[str, str]] | Callable[[], dict[str, dict[str, str]]] | None = None
        self._consecutive_5xx = 0
        # The ``sent`` record of the message just handed over rides in the same commit as the next
        # message's ``sending`` mark: one commit a message instead of two, same exactly-once guarantee.
        self._pending_sent: tuple[Any, ...] | None = None
        ob = ws.cfg.outbound
        self._from_name, self._from_addr = parseaddr(ob.from_)
        self._domain = self._from_addr.rpartition("@")[2] or "localhost"
        self._mailto = parseaddr(ob.unsubscribe_mailto or ob.from_)[1]
        self._sheet = None

    def close(self) -> None:
        """Close the log."""
        self.store.close()

    @property
    def sheet(self) -> Any:
        """The sheet adapter, opened on first use."""
        if self._sheet is None:
            self._sheet = self.ws.open_sheet()
        return self._sheet

    @property
    def _metered(self) -> bool:
        """Whether the sheet's requests count against a quota (Google): see :meth:`run_once`."""
        return bool(getattr(self.sheet, "metered", False))

    @contextmanager
    def _run(self, job: str) -> Iterator[StageResult]:
        """Record one stage in ``runs``; a service that fails stops the stage (``res.error``), not the worker.

        The log file is checked first (deleted or replaced under the worker:
        ConfigError, the worker stops). A log that cannot be written
        (StorageError) cannot record the stage either: that is raised.
        """
        self.store.check_file()
        res = StageResult(job)
        run_id = self.store.start_run(job, self.clock.now())
        try:
            yield res
        except ServiceError as e:
            res.error = e
            log.warning("%s stopped: %s", job, e)
        finally:
            with suppress(StorageError):  # the stage's own error already says the log cannot be written
                self.store.finish_run(run_id, self.clock.now(), ok=res.ok, stats=res.stats,
                                      error=str(res.error) if res.error else ("; ".join(res.problems[:5]) or None))

    # ------------------------------------------------------------------ sync
    def sync(self) -> StageResult:
        """Read the sheet, validate, record new customers and field changes."""
        with self._run("sync") as res:
            fp = self._fingerprint()
            last = self.store.sheet_state(self.sheet.name)
            if fp is not None and last is not None and last[0] == fp:
                # The file's bytes and the mapping are as they were at the last complete sync: nothing to do.
                res.stats = {"rows": last[1], "added": 0, "changed": 0, "unchanged": max(last[1] - len(last[2]), 0),
                             "removed": 0, "rejected": len(last[2]), "note": "sheet unchanged since the last sync"}
                res.problems += last[2]
                res.notes += last[3]
                if last[3]:
                    res.stats["blanked"] = len(last[3])
                known = self._synced[1] if self._synced is not None and self._synced[0] == fp else None
                self._synced = (fp, known)
                return res
            with _gc_paused(), ThreadPoolExecutor(1, thread_name_prefix="sheet-read") as pool:
                # The read runs beside the log's row digests and the validators' set-up: calamine
                # parses without holding the GIL, and Google's answer is network time.
                reading = pool.submit(self.sheet.read)
                previous = self.store.row_hashes()
                self.ws.mapping.prepare()
                data = reading.result()
                self._fresh_read = True
                self._sheet_keys = data.column(self.ws.mapping.fields[self.ws.mapping.key].column)
                self._appended = set()
                self.sheet_version = data.version
                self._remember_cells(data)
                result = self.ws.mapping.apply(data, previous, blank_invalid=True)
                keep = dict(result.unchanged)
                for k, r in result.rejected_keys.items():
                    keep.setdefault(k, r)
                n_rows, source_name = len(data), data.source
                del data  # the rows are mapped: free them before the log's bulk insert (100,000 rows ~ 150 MB)
                stats = self.store.apply_sync(source_name, result.customers, keep, result.hashes, self.clock.now())
            relinked = self._relink() if stats.added or stats.returned else 0
            res.problems += [str(e) for e in result.errors]
            res.notes += [str(b) for b in result.blanked]
            for w in result.warnings:
                log.warning("%s", w)
            # "unchanged" counts rows whose cells are as at the last sync (not the rejected rows kept present).
            # Rows that come back (a wiped sheet restored) count as added, and are shown apart too (issue #9).
            res.stats = {"rows": n_rows, "added": stats.added + stats.returned, "changed": stats.changed,
                         "unchanged": len(result.unchanged), "removed": stats.removed, "rejected": len(result.errors)}
            if stats.returned:
                res.stats["returned"] = stats.returned
            if relinked:
                res.stats["earlier_mail_linked"] = relinked
            if result.blanked:
                # Reported at every sync until fixed (issue #11): kept with the sheet's state for a skipped
                # unchanged sheet; their rows have no row hash, so a changed sheet validates them again.
                res.stats["blanked"] = len(result.blanked)
            self.store.set_sheet_state(self.sheet.name, fp, n_rows, res.problems, self.clock.now(), res.notes)
            self._synced = (fp, self.sheet_version) if fp is not None else None
        return res

    def _email_fields(self) -> list[str]:
        """The mapped fields that hold a customer's own address (an ``owner`` is a colleague, not them)."""
        return [f.name for f in self.ws.mapping.fields.values() if f.type.value == "email" and f.name != "owner"]

    def _relink(self) -> int:
        """Attach mail logged before its sender was a customer (issue #9); after a sync that added customers."""
        return self.store.relink_inbound(_LazyIndex(lambda: self.store.keys_by_email(self._email_fields())),
                                         self.clock.now())

    def _keep_synced_after_own_write(self, base: str | None, r: Any) -> None:
        """After our write-back, the file's new digest still stands for the synced sheet.

        Why: the write changes only the worker's own columns, which are never
        mapped fields, so re-reading the file would find nothing new; without
        this, every write-back would cost the next sync a full read. Only when
        the write was made on the very file we synced (``base`` is that read's
        version; the source postpones otherwise) and nobody has synced since.
        The digest is of the bytes we wrote, so a save by someone else a moment
        later still differs and is read.
        """
        if not r.fingerprint or self._synced is None or not base or base != self._synced[1]:
            return
        last = self.store.sheet_state(self.sheet.name)
        if last is None or last[0] != self._synced[0]:
            return
        new = f"{r.fingerprint}:{last[0].partition(':')[2]}"  # the mapping the rows were validated with
        self.store.set_sheet_state(self.sheet.name, new, last[1], last[2], self.clock.now(), last[3])
        self._synced = (new, r.version)

    def _fingerprint(self) -> str | None:
        """The file's digest plus the mapping's, for sources that have one (Excel, CSV); None otherwise."""
        fn = getattr(self.sheet, "fingerprint", None)
        if fn is None:
            return None
        import hashlib

        mapping_digest = hashlib.sha256(self.ws.mapping.path.read_bytes()).hexdigest()[:16]
        return f"{fn()}:{mapping_digest}"

    def _remember_cells(self, data: Any) -> None:
        """Keep the write-back columns' values as read, so write-back only asks the sheet when a value differs.

        Only references to the columns are kept here; the key -> cells lookup
        is built when a write-back first needs it (:meth:`_cells`), so a
        plain ``sync`` of 100,000 rows does not pay for it (issue #3).
        """
        if not self.ws.cfg.sheet.writeback or not self.ws.mapping.writeback:
            self._sheet_cells = {}
            return
        key_col = self.ws.mapping.fields[self.ws.mapping.key].column
        cols = list(self.ws.mapping.writeback.values())
        keys = data.column(key_col)
        present = [data.column(c) if c in data.headers else None for c in cols]

        def build() -> dict[str, dict[str, str]]:
            from crm_automation.sheets.csv import cell_text, norm_key

            blank = [""] * len(keys)  # a column the sheet does not have yet reads as empty
            texts = [blank if col is None else [cell_text(v) for v in col] for col in present]
            return {norm_key(k): dict(zip(cols, vals, strict=True))
                    for k, vals in zip(keys, zip(*texts, strict=True), strict=True)}

        self._sheet_cells = build

    def _cells(self) -> dict[str, dict[str, str]]:
        """The write-back columns as last read (key -> column -> text), built on first use."""
        if callable(self._sheet_cells):
            self._sheet_cells = self._sheet_cells()
        return self._sheet_cells or {}

    # ------------------------------------------------------------------ fetch
    def fetch(self) -> StageResult:
        """Read new mail and log each message exactly once (or quarantine it whole)."""
        with self._run("fetch") as res:
            source = self.ws.open_mailbox()
            try:
                self._fetch(source, res)
            finally:
                with suppress(CrmError, OSError):
                    source.close()
        return res

    def _fetch(self, source: MailboxSource, res: StageResult) -> None:
        mb = self.ws.cfg.mailbox
        email_fields = self._email_fields()
        by_email = _LazyIndex(lambda: self.store.keys_by_email(email_fields))  # built on the first message
        unsub = self._unsubscribe_addresses()
        counts: dict[str, int] = {"messages": 0, "duplicates": 0, "quarantined": 0, "unknown": 0}
        new_senders: dict[str, str] = {}
        bar = self.progress("fetch", None)
        try:
            for folder in source.folders():
                uv = source.uidvalidity(folder)
                stored = self.store.mailbox_cursor(folder)
                cursor = None
                if source.tracks_names:
                    cursor = Cursor(uv, stored[1] if stored else 0, self.store.maildir_seen(folder))
                elif stored is not None and stored[0] == uv:
                    cursor = Cursor(*stored)
                elif stored is not None:
                    log.warning("%s: UIDVALIDITY changed (%s -> %s): re-reading the folder; messages already "
                                "logged are recognised by Message-ID", folder, stored[0], uv)
                done: list[RawMessage] = []
                for raw in source.fetch(folder, cursor, batch=mb.batch_size):
                    if self.stop.is_set():
                        break
                    kind = self._handle(raw, source.name, by_email, unsub, new_senders)
                    counts[kind] = counts.get(kind, 0) + 1
                    counts["messages"] += 1
                    bar.advance()
                    done.append(raw)
                    if len(done) >= mb.batch_size:
                        source.mark_processed(done)
                        done = []
                if done:
                    source.mark_processed(done)
                if self.stop.is_set():
                    break
        finally:
            bar.close()
        if new_senders and mb.new_senders == "add_to_sheet":
            counts["added_to_sheet"] = self._add_senders(new_senders, by_email)
        res.stats = counts

    def _unsubscribe_addresses(self) -> frozenset[str]:
        ob = self.ws.cfg.outbound
        if ob.unsubscribe_mailto:
            addr = parseaddr(ob.unsubscribe_mailto)[1].lower()
            if addr and addr != parseaddr(ob.from_)[1].lower():
                return frozenset({addr})
        return frozenset()

    def _handle(self, raw: RawMessage, source_name: str, by_email: dict[str, str], unsub: frozenset[str],
                new_senders: dict[str, str]) -> str:
        """Log one message; returns the kind logged, ``duplicates`` or ``quarantined``. The per-item boundary."""
        from crm_automation.classify import classify
        from crm_automation.parse import content_digest, parse

        now = self.clock.now()
        src = f"{source_name}/{raw.folder}"
        limit = self.ws.cfg.mailbox.max_message_bytes
        if raw.size is not None and raw.size > limit:
            return self._quarantine(raw, src, f"message: {raw.size} bytes is over max_message_bytes = {limit}; "
                                    f"its first {limit} bytes are kept here, the whole message stays in the mailbox",
                                    now, by_email)
        try:
            msg = parse(raw.raw, max_bytes=limit)
            cls = classify(msg, unsubscribe_addresses=unsub, is_ours=by_email.__contains__)
            cls = self._own_unsubscribe(msg, cls)
            refs = [r for r in (msg.in_reply_to, *msg.references) if r]
            sent = {m: v[0] for m, v in self.store.sent_message_ids(refs).items()} if refs else {}
            key, how = match(msg, cls, by_email, sent)
        except MessageError as e:
            return self._quarantine(raw, src, str(e), now, by_email)
        except Exception as e:
            log.debug("parse failure", exc_info=True)
            return self._quarantine(raw, src, f"internal error while reading the message: {type(e).__name__}: {e}",
                                    now, by_email)
        if cls.kind is Kind.BOUNCE and cls.failures:
            return self._log_bounce(raw, msg, cls, src, by_email, now)
        cust_email = None
        if key is not None:
            c = self.store.customer(key)
            ef = self.ws.email_field
            cust_email = c.data.get(ef) if (c and ef) else None
        with self.store.transaction():
            aid = self.store.add_activity(
                kind=cls.kind.value, occurred_at=msg.date or now, now=now, customer_key=key, subject=msg.subject,
                body=msg.reply, message_id=msg.message_id, in_reply_to=msg.in_reply_to, source=src,
                details={"from": msg.from_addr, "to": list(msg.to_addrs), "evidence": cls.evidence,
                         "matched_by": how, "recipients": list(cls.recipients), "permanent": cls.permanent,
                         "uid": raw.uid}, digest=content_digest(msg))
            if aid is not None:
                self._queue_notification(aid, key, cls, now)
                for eff in effects(msg, cls, cust_email):
                    self.store.suppress(eff.email, eff.reason, f"{cls.kind.value} {msg.message_id}", now)
                    if eff.status:
                        k = key if key is not None else by_email.get(eff.email)
                        if k is not None:
                            self.store.set_email_status(k, eff.status)
            self._advance(raw, now)
        if aid is None:
            return "duplicates"
        if key is None and cls.kind is Kind.EMAIL_IN and msg.from_addr:
            new_senders.setdefault(msg.from_addr, msg.from_name)
        return cls.kind.value if key is not None else "unknown"

    def _log_bounce(self, raw: RawMessage, msg: ParsedMessage, cls: Classification, src: str,
                    by_email: dict[str, str], now: datetime) -> str:
        """One ``bounce`` activity per failed recipient, each with its own permanence and effects (issue #11).

        Why one each: the timeline, ``report`` and the planner read bounces
        per customer; a report naming two customers used to mark only the
        first. The bounced message (``original_message_id``) tells which
        send, so the activity carries its campaign and step. All of it, with
        the cursor, in one transaction.
        """
        from crm_automation.effects import bounce_effects
        from crm_automation.parse import content_digest

        original = self.store.sent_message_ids([cls.original_message_id]).get(cls.original_message_id or "") \
            if cls.original_message_id else None
        inb = self.ws.cfg.inbound
        since = now - timedelta(days=inb.soft_bounce_days)
        digest = content_digest(msg)
        logged = 0
        first_key: str | None = None
        with self.store.transaction():
            for f in cls.failures:
                key = by_email.get(f.address)
                how = f"failed recipient {f.address}"
                if key is None and original is not None and len(cls.failures) == 1:
                    key, how = original[0], f"bounced message {cls.original_message_id}"
                campaign, step = (original[1], original[2]) if original and original[0] == key else (None, None)
                aid = self.store.add_activity(
                    kind=Kind.BOUNCE.value, occurred_at=msg.date or now, now=now, customer_key=key,
                    subject=msg.subject, body=msg.reply, message_id=msg.message_id, in_reply_to=msg.in_reply_to,
                    campaign=campaign, step=step, source=src, digest=f"{digest}:{f.address}",
                    details={"from": msg.from_addr, "to": list(msg.to_addrs), "evidence": cls.evidence,
                             "matched_by": how if key else "unknown recipient", "recipient": f.address,
                             "permanence": f.permanence.value, "status": f.status,
                             "permanent": f.permanence is Permanence.HARD, "recipients": list(cls.recipients),
                             "original_message_id": cls.original_message_id, "uid": raw.uid})
                if aid is None:
                    continue
                logged += 1
                first_key = first_key or key
                soft = 0
                if f.permanence is not Permanence.HARD and inb.soft_bounce_limit:
                    soft = self.store.soft_bounce_count(f.address, key, since)
                for eff in bounce_effects(f, soft_count=soft, soft_limit=inb.soft_bounce_limit):
                    why = (f"bounce {msg.message_id}" if eff.reason == "bounced" else
                           f"{soft} soft bounces within {inb.soft_bounce_days} days (last {msg.message_id})")
                    self.store.suppress(eff.email, eff.reason, why, now)
                    if eff.status and key is not None:
                        self.store.set_email_status(key, eff.status)
            self._advance(raw, now)
        if not logged:
            return "duplicates"
        return Kind.BOUNCE.value if first_key is not None else "unknown"

    def _queue_notification(self, activity_id: int, key: str | None, cls: Classification, now: datetime) -> None:
        """``notify_owner``: queue a note to the customer's owner in the activity's own transaction."""
        if not self.ws.cfg.outbound.notify_owner or key is None or cls.kind is not Kind.EMAIL_IN:
            return
        c = self.store.customer(key)
        owner = c.data.get("owner") if c else None
        if not isinstance(owner, str) or "@" not in owner:
            return
        self.store.queue_sends([{"campaign": NOTIFY, "step": activity_id, "customer_key": key, "status": "queued",
                                 "message_id": self._message_id(), "queued_at": iso(now), "error": None,
                                 "email": owner}])

    def _notification(self, s: Any, view: CustomerView, message_id: str) -> tuple[bytes, str, str]:
        """The owner's note: who replied, what they newly wrote, and a reply link that keeps the thread."""
        from urllib.parse import quote

        from crm_automation.templating import Rendered

        a = self.store.activity(s.step) or {}
        name = view.data.get("name") or view.key
        subj = a.get("subject") or ""
        reply_link = f"mailto:{view.email}?subject={quote('Re: ' + subj)}"
        if a.get("message_id"):
            reply_link += f"&In-Reply-To={quote(a['message_id'])}"
        text = (f"{name} <{view.email}> replied / 客户回复:\n\nSubject / 主题: {subj}\n\n{a.get('body') or ''}\n\n"
                f"Reply / 回复: {reply_link}\nTimeline / 时间线: crm-automation timeline {view.key}\n")
        r = Rendered(subject=f"[CRM] {name}: {subj}", text=text, html=None, reply_to=view.email)
        extra = {"In-Reply-To": a["message_id"], "References": a["message_id"]} if a.get("message_id") else {}
        data = build_message(r, sender=self.ws.cfg.outbound.from_, to_name=None, to_email=s.email or "",
                             message_id=message_id, now=self.clock.now(), reply_to=view.email, extra_headers=extra)
        return data, r.subject, text

    def _own_unsubscribe(self, msg: ParsedMessage, cls: Classification) -> Classification:
        """A reply to our own ``mailto:...?subject=unsubscribe`` link is an unsubscribe request."""
        if cls.kind is Kind.EMAIL_IN and msg.subject.strip().lower() in {"unsubscribe", "退订"}:
            return Classification(Kind.UNSUBSCRIBE, f"subject {msg.subject.strip()!r} (the List-Unsubscribe mailto)")
        return cls

    def _advance(self, raw: RawMessage, now: datetime) -> None:
        """Move the folder's cursor past ``raw`` (inside the transaction that logs it)."""
        self.store.set_cursor(raw.folder, raw.uidvalidity, raw.uid, now)
        if raw.seen_key is not None:
            self.store.mark_maildir_seen(raw.folder, raw.seen_key)

    def _quarantine(self, raw: RawMessage, src: str, error: str, now: datetime, by_email: dict[str, str]) -> str:
        """Keep a message that could not be understood, with whose it was when its From header tells."""
        from crm_automation.parse import sender_of

        limit = self.ws.cfg.mailbox.max_message_bytes
        sender = sender_of(raw.raw)
        with self.store.transaction():
            self.store.quarantine(source=f"{src} uid {raw.uid}", raw=raw.raw[:limit], error=error, now=now,
                                  from_addr=sender, customer_key=by_email.get(sender) if sender else None,
                                  size=raw.size)
            self._advance(raw, now)
        log.warning("%s uid %s quarantined: %s", src, raw.uid, error)
        return "quarantined"

    def _add_senders(self, senders: dict[str, str], by_email: dict[str, str]) -> int:
        """``new_senders = "add_to_sheet"``: unknown senders become new rows (key and name columns)."""
        m = self.ws.mapping
        ef = self.ws.email_field
        if ef is None or ef != m.key:
            log.warning("new_senders = \"add_to_sheet\" needs the mapping key to be an email field; not adding")
            return 0
        name_field = m.fields.get("name")
        from crm_automation.sheets.csv import norm_key

        key_col = m.fields[ef].column
        # Not yet synced rows count too: a sender added by the last fetch is in the sheet, not yet in the log.
        if self._metered and self._sheet_keys is not None:
            # Google: no second read of the worksheet; the keys of the last sync's read plus those added since.
            in_sheet = {norm_key(v) for v in self._sheet_keys} | self._appended
        else:
            in_sheet = {norm_key(v) for v in self.sheet.read().column(key_col)}
        rows = []
        for addr, name in sorted(senders.items()):
            if addr in by_email or addr in in_sheet:
                continue
            row = {m.fields[ef].column: addr}
            if name_field is not None:
                row[name_field.column] = name or addr.split("@")[0]
            rows.append(row)
        if not rows:
            return 0
        n = self.sheet.append_rows(rows)
        self._appended.update(r[key_col] for r in rows)
        return n

    # ------------------------------------------------------------------ send
    def _views(self) -> dict[str, CustomerView]:
        ef = self.ws.email_field
        return {k: CustomerView(k, (c.data.get(ef) if ef else None), c.data, c.first_seen, c.email_status)
                for k, c in self.store.customers().items()}

    def _history(self) -> History:
        h = History()
        for s in self.store.sends():
            h.send_keys.add((s.campaign, s.step, s.customer_key))
            if s.status == "sent" and s.sent_at is not None:
                h.sent_at[(s.campaign, s.step, s.customer_key)] = s.sent_at
        for key, kind, at, details, campaign in self.store.inbound_history():
            if kind == "bounce":
                d = json.loads(details or "{}")
                permanence = d.get("permanence") or ("hard" if d.get("permanent") else "delayed")
                if permanence == Permanence.DELAYED:
                    continue  # a delay never stops a sequence: the message may still arrive
                if permanence == Permanence.SOFT:
                    h.lost.setdefault(key, []).append((campaign, at))  # that message is lost (issue #11)
                    continue
            h.inbound.setdefault(key, []).append((kind, at))
        for f in {c.field for c in self.ws.campaigns if c.trigger == "change" and c.field}:
            h.changes[f] = self.store.field_changes(f)
        h.suppressed = frozenset(self.store.suppressions())
        for key, at, error in self.store.quarantined_contacts():
            h.inbound.setdefault(key, []).append((QUARANTINED, at))
            h.quarantine_reasons[key] = error
        return h

    def _message_id(self) -> str:
        return f"<crm.{uuid.uuid4().hex}@{self._domain}>"

    def recover(self) -> StageResult:
        """Resolve sends left in ``sending`` by a killed worker: found in Sent, or ``uncertain``; never resent."""
        with self._run("recover") as res:
            stuck = self.store.sends(status=["sending"])
            if not stuck:
                return res
            ob = self.ws.cfg.outbound
            found: set[str] = set()
            if ob.transport == "outbox":
                from crm_automation.transports.outbox import OutboxTransport

                box = OutboxTransport.from_config(self.ws.cfg)
                found = {s.message_id for s in stuck if s.message_id and box.path_for(s.message_id).exists()}
                for s in stuck:
                    if s.message_id not in found:  # the file was never renamed into place: not handed over
                        self.store.mark_status(s.id, "queued", "requeued after a crash: no .eml was written")
            elif ob.sent_folder and self.ws.cfg.mailbox.source == "imap":
                source = self.ws.open_mailbox()
                try:
                    found = source.find_message_ids(ob.sent_folder, [s.message_id for s in stuck if s.message_id])
                finally:
                    with suppress(CrmError, OSError):
                        source.close()
            now = self.clock.now()
            n_sent = n_unc = 0
            for s in stuck:
                if s.message_id in found:
                    self._record_sent(s.id, s.customer_key, s.campaign, s.step, s.message_id or "", now,
                                      "(recovered after a crash)", "", note="found after a crash")
                    n_sent += 1
                elif ob.transport != "outbox":
                    self.store.mark_status(s.id, "uncertain", "the worker stopped while handing this message over; "
                                           "it may or may not have been delivered (see `crm-automation report`)")
                    n_unc += 1
            res.stats = {"stuck": len(stuck), "confirmed_sent": n_sent, "uncertain": n_unc}
            if n_unc:
                res.problems.append(f"{n_unc} send(s) marked uncertain after a crash; `crm-automation report` "
                                    f"lists them and `crm-automation requeue` sends them again on purpose")
        return res

    def _record_sent(self, send_id: int, key: str, campaign: str, step: int, message_id: str, now: datetime,
                     subject: str, body: str, note: str = "") -> None:
        self.store.mark_sent(send_id, now, customer_key=key, campaign=campaign, step=step, message_id=message_id,
                             subject=subject, body=body, source=note or self.ws.cfg.outbound.transport)

    def plan(self, *, record: bool = True) -> list[PlannedSend]:
        """What is due now (pure planning over the log); ``record`` notes campaigns seen for the first time."""
        now = self.clock.now()
        first_seen = self.store.campaign_first_seen([c.id for c in self.ws.campaigns], now, record=record)
        return plan(self.ws.campaigns, self._views(), first_seen, self._history(), now,
                    one_per_cycle=self.ws.cfg.outbound.one_per_cycle)

    def _context(self, view: CustomerView, campaign_id: str, step: int, message_id: str) -> dict[str, Any]:
        ob = self.ws.cfg.outbound
        unsubscribe = self._unsubscribe_text(view.email or "", message_id)
        return {"customer": {**view.data, "_key": view.key}, "campaign": {"id": campaign_id, "step": step},
                "sender": {"name": self._from_name, "email": self._from_addr, "from": ob.from_},
                "unsubscribe": unsubscribe,
                "now": self.clock.now().astimezone(self.ws.cfg.timezone)}

    def _unsubscribe_text(self, email: str, message_id: str) -> str:
        ob = self.ws.cfg.outbound
        if ob.unsubscribe_url:
            from urllib.parse import quote

            return ob.unsubscribe_url.replace("{token}", message_id.strip("<>").partition("@")[0]).replace(
                "{email}", quote(email))
        return f"mailto:{self._mailto}?subject=unsubscribe"

    def _list_unsubscribe(self, email: str, message_id: str) -> str:
        ob = self.ws.cfg.outbound
        parts = [f"<mailto:{self._mailto}?subject=unsubscribe>"]
        if ob.unsubscribe_url:
            parts.append(f"<{self._unsubscribe_text(email, message_id)}>")
        return ", ".join(parts)

    def render_send(self, template: str, view: CustomerView, campaign_id: str, step: int, message_id: str
                    ) -> tuple[bytes, str, str]:
        """Render and build one message: (bytes, subject, text)."""
        ctx = self._context(view, campaign_id, step, message_id)
        r = self.ws.templates.render(template, ctx)
        ob = self.ws.cfg.outbound
        name = view.data.get("name") if isinstance(view.data.get("name"), str) else None
        if not view.email or "@" not in view.email or any(c in view.email for c in " \r\n<>,;\""):
            raise DataError(f"customer {view.key!r}: {view.email!r} is not a usable address")
        data = build_message(r, sender=ob.from_, to_name=name, to_email=view.email, message_id=message_id,
                             now=self.clock.now(), reply_to=ob.reply_to,
                             list_unsubscribe=self._list_unsubscribe(view.email, message_id),
                             one_click=bool(ob.unsubscribe_url))
        return data, r.subject, r.text

    def send(self, *, dry_run: bool = False, limit: int | None = None) -> StageResult:
        """Queue what is due and send it, exactly once each."""
        if not dry_run:
            rec = self.recover()
        with self._run("send-dry-run" if dry_run else "send") as res:
            if not dry_run and rec.problems:
                res.problems += rec.problems
            if not dry_run:
                identity.guard(self.store, self.ws.cfg)  # emptied under a running worker: stop before mailing
            held = self.template_problems()
            res.problems += [p for problems in held.values() for p in problems]
            planned = self.plan(record=not dry_run)
            views = self._views()
            if dry_run:
                self._dry_run(planned, views, res, limit, held)
                self._hold(held, res)
                return res
            now = self.clock.now()
            rows = [{"campaign": p.campaign, "step": p.step, "customer_key": p.customer_key, "status": p.status,
                     "message_id": self._message_id() if p.status == "queued" else None, "queued_at": iso(now),
                     "error": p.reason, "email": p.email} for p in planned]
            if rows:
                self.store.queue_sends(rows)
            res.stats["planned"] = sum(p.status == "queued" for p in planned)
            res.stats["skipped"] = sum(p.status == "skipped" for p in planned)
            try:
                self._send_queue(views, res, limit, held)
            finally:
                self._record_sent_count()
            self._hold(held, res)
        return res

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

    @staticmethod
    def _hold(held: dict[str, list[str]], res: StageResult) -> None:
        """A held campaign is a configuration error of this pass (exit 2); the rest of the queue went."""
        if held and res.error is None:
            res.error = ConfigError(f"template problems hold campaign(s) {', '.join(sorted(held))}; their sends "
                                    "stay queued and the other campaigns were sent",
                                    hint="fix the templates (`crm-automation check` lists the problems); the held "
                                         "sends go out at the next pass")

    def _record_sent_count(self) -> None:
        """Let the workspace's log marker know how many messages this log has sent (issue #9)."""
        try:
            identity.record(self.store, self.ws.cfg)
        except StorageError as e:  # not dangerous: the marker only guards against a log with *fewer* sends
            log.warning("%s", e)

    def fetch_and_send(self, *, limit: int | None = None) -> list[StageResult]:
        """Fetch, then send only if the fetch succeeded: campaigns never go out on a stale inbound view.

        Why (issue #9): with the mailbox unreachable (a wrong path, IMAP down,
        a changed password), an unsubscribe or bounce waiting there would be
        missed and the customer mailed. The send is recorded as held, with
        the fetch's error (exit 3); the next pass tries both again.
        """
        fetched = self.fetch()
        if self.stop.is_set():
            return [fetched]
        if fetched.error is None:
            return [fetched, self.send(limit=limit)]
        with self._run("send") as res:
            res.stats = {"sent": 0, "note": "held: the fetch stage failed"}
            res.error = ServiceError(
                f"nothing was sent: the mailbox could not be read ({fetched.error}), so a reply, bounce or "
                "unsubscribe waiting there would be missed", hint=fetched.error.hint or "the next pass tries again")
        return [fetched, res]

    def _dry_run(self, planned: list[PlannedSend], views: dict[str, CustomerView], res: StageResult,
                 limit: int | None, held: dict[str, list[str]]) -> None:
        shown = 0
        for p in planned:
            item: dict[str, Any] = {"campaign": p.campaign, "step": p.step, "customer": p.customer_key,
                                    "email": p.email, "status": p.status}
            if p.status == "skipped":
                item["reason"] = p.reason
            elif p.campaign in held:
                item["status"] = "held"
                item["reason"] = "template problems (see above)"
            elif limit is None or shown < limit:
                try:
                    _, subject, _ = self.render_send(p.template, views[p.customer_key], p.campaign, p.step,
                                                     "<dry-run@localhost>")
                    item["subject"] = subject
                    shown += 1
                except DataError as e:
                    item["status"] = "would fail"
                    item["reason"] = str(e)
                    res.problems.append(str(e))
            res.details.append(item)
        res.stats = {"would_send": sum(d["status"] == "queued" for d in res.details),
                     "held": sum(d["status"] == "held" for d in res.details),
                     "would_skip": sum(d["status"] == "skipped" for d in res.details),
                     "would_fail": sum(d["status"] == "would fail" for d in res.details)}

    def _in_window(self, now: datetime) -> bool:
        w = self.ws.cfg.outbound.send_window
        if not w:
            return True
        start, end = parse_window(w) or (0, 1440)
        local = now.astimezone(self.ws.cfg.timezone)
        minute = local.hour * 60 + local.minute
        return start <= minute < end if start < end else (minute >= start or minute < end)

    def _send_queue(self, views: dict[str, CustomerView], res: StageResult, limit: int | None,
                    held: dict[str, list[str]]) -> None:
        ob = self.ws.cfg.outbound
        now = self.clock.now()
        queued = self.store.sends(status=["queued"])
        due = [s for s in queued
               if (s.next_attempt_at is None or s.next_attempt_at <= now or s.attempts == 0)
               and s.campaign not in held]
        stats = {"sent": 0, "failed": 0, "retry_later": 0, "uncertain": 0, "skipped_now": 0, "waiting": 0}
        res.stats.update(stats)
        if held:
            res.stats["held"] = sum(s.campaign in held for s in queued)
        if not due:
            return
        if not self._in_window(now):
            res.stats["waiting"] = len(due)
            res.stats["note"] = f"outside send_window {ob.send_window} ({self.ws.cfg.timezone.key})"
            return
        h = self._history()
        campaigns = {c.id: c for c in self.ws.campaigns}
        recent = deque(self.store.sent_times_since(now - timedelta(minutes=1)))
        day_count = self.store.sent_count_since(now - timedelta(days=1))
        res.stats["waiting"] = len(due)
        transport = self.ws.open_transport()
        transport.open()
        bar = self.progress("send", len(due))
        try:
            for s in due:
                if self.stop.is_set() or (limit is not None and res.stats["sent"] >= limit):
                    break
                now = self.clock.now()
                if not self._in_window(now):
                    res.stats["note"] = f"send_window {ob.send_window} closed during the pass"
                    break
                if ob.max_per_day and day_count >= ob.max_per_day:
                    res.stats["note"] = f"max_per_day {ob.max_per_day} reached (rolling 24 hours)"
                    break
                if ob.max_per_minute and not self._pace(recent, ob.max_per_minute):
                    break
                bar.advance()
                self._send_one(s, views, campaigns, h, transport, res)
                if res.error is not None:
                    break
                day_count += 1
                recent.append(self.clock.now())
        finally:
            self._flush_sent()
            bar.close()
            with suppress(CrmError, OSError):
                transport.close()
        res.stats["waiting"] = len(self.store.sends(status=["queued"]))

    def _flush_sent(self) -> None:
        """Commit the ``sent`` record still held for the last message handed over."""
        if self._pending_sent is not None:
            args, self._pending_sent = self._pending_sent, None
            self._record_sent(*args)

    def _pace(self, recent: deque[datetime], per_minute: int) -> bool:
        """Wait until one more message fits in the last 60 s; False if asked to stop meanwhile."""
        while True:
            now = self.clock.now()
            while recent and recent[0] <= now - timedelta(minutes=1):
                recent.popleft()
            if len(recent) < per_minute:
                return True
            wait = (recent[0] + timedelta(minutes=1) - now).total_seconds()
            self._flush_sent()  # never hold a delivered message's record across a wait
            if self.stop.wait(min(max(wait, 0.05), 5.0)):
                return False

    def _send_one(self, s: Any, views: dict[str, CustomerView], campaigns: dict[str, Any], h: History,
                  transport: Any, res: StageResult) -> None:
        view = views.get(s.customer_key)
        camp = campaigns.get(s.campaign)
        why = None
        if s.campaign == NOTIFY and view is not None:
            self._deliver(s, view, transport, res, lambda mid: self._notification(s, view, mid), s.email or "")
            return
        if view is None:
            why = "customer no longer in the sheet"
        elif camp is None or not camp.enabled:
            why = "campaign removed or disabled"
        else:
            why = blocked_reason(view, h)
            if why is None and s.step > 0:
                t0 = h.sent_at.get((s.campaign, 0, s.customer_key))
                if t0 is not None:
                    why = stop_reason(camp, view, t0, h)
        if why is not None:
            self.store.mark_status(s.id, "skipped", why)
            res.stats["skipped_now"] += 1
            return
        assert view is not None  # noqa: S101
        assert camp is not None  # noqa: S101
        step = camp.steps[s.step] if s.step < len(camp.steps) else None
        if step is None:
            self.store.mark_status(s.id, "skipped", f"step {s.step} no longer in the campaign")
            return
        self._deliver(s, view, transport, res,
                      lambda mid: self.render_send(step.template, view, s.campaign, s.step, mid), view.email or "")

    def _deliver(self, s: Any, view: CustomerView, transport: Any, res: StageResult,
                 build: Callable[[str], tuple[bytes, str, str]], recipient: str) -> None:
        """Build, mark ``sending`` (committed), hand over, record: the exactly-once sequence for one send."""
        now = self.clock.now()
        message_id = s.message_id or self._message_id()
        try:
            data, subject, text = build(message_id)
        except (DataError, ConfigError) as e:
            self.store.mark_failed(s.id, str(e), now, customer_key=s.customer_key, campaign=s.campaign, step=s.step)
            res.stats["failed"] += 1
            res.problems.append(f"send {s.campaign}/{s.step} to {s.customer_key}: {e}")
            return
        with self.store.transaction():
            if self._pending_sent is not None:
                args, self._pending_sent = self._pending_sent, None
                self._record_sent(*args)
            marked = self.store.mark_sending(s.id, message_id, now)
        if not marked:
            return
        try:
            transport.send(data, sender=self._from_addr, recipients=[recipient],
                           message_id=message_id)
        except UncertainSendError as e:
            self.store.mark_status(s.id, "uncertain", str(e))
            res.stats["uncertain"] += 1
            res.problems.append(f"send {s.campaign}/{s.step} to {s.customer_key}: uncertain: {e}")
            return
        except TransientSendError as e:
            delay = min(RETRY_BASE * (2 ** max(s.attempts, 0)), RETRY_MAX)
            self.store.mark_retry(s.id, str(e), now + delay)
            res.stats["retry_later"] += 1
            return
        except PermanentSendError as e:
            if _QUOTA.search(str(e)):
                self.store.mark_retry(s.id, str(e), now + timedelta(hours=1))
                res.stats["retry_later"] += 1
                res.error = ServiceError(f"the server refuses more mail for now (a sending quota): {e}",
                                         hint="the queue waits; lower max_per_day / max_per_minute")
                return
            if e.unknown_recipient is not None:
                # Refused at RCPT as non-existent: a hard bounce for that address, not a server problem, so it
                # does not count towards the 5xx streak (issue #11).
                self._refused_recipient(s, e, e.unknown_recipient, now)
                res.stats["failed"] += 1
                res.stats["bounced_at_rcpt"] = res.stats.get("bounced_at_rcpt", 0) + 1
                res.problems.append(f"send {s.campaign}/{s.step} to {s.customer_key}: {e}")
                return
            self.store.mark_failed(s.id, str(e), now, customer_key=s.customer_key, campaign=s.campaign, step=s.step)
            res.stats["failed"] += 1
            res.problems.append(f"send {s.campaign}/{s.step} to {s.customer_key}: {e}")
            self._consecutive_5xx += 1
            if self._consecutive_5xx >= MAX_CONSECUTIVE_5XX:
                res.error = ServiceError(
                    f"{self._consecutive_5xx} messages in a row were refused with a 5xx answer; stopping this pass "
                    f"so the rest of the queue is not failed too (last: {e})",
                    hint="check [outbound] from and the account; `crm-automation requeue --all-failed` resends")
            return
        except ServiceError as e:
            # Raised only when the message was not handed over (no connection): safe to queue again.
            self.store.mark_retry(s.id, str(e), now)
            res.error = e
            return
        self._pending_sent = (s.id, s.customer_key, s.campaign, s.step, message_id, self.clock.now(), subject, text)
        res.stats["sent"] += 1
        self._consecutive_5xx = 0

    def _refused_recipient(self, s: Any, e: PermanentSendError, address: str, now: datetime) -> None:
        """The send failed, and the address is a hard bounce: activity, suppression, email_status, one commit."""
        with self.store.transaction():
            self.store.mark_failed(s.id, str(e), now, customer_key=s.customer_key, campaign=s.campaign, step=s.step)
            self.store.add_activity(
                kind=Kind.BOUNCE.value, occurred_at=now, now=now, customer_key=s.customer_key,
                subject=f"refused at RCPT: {e.code} {e.enhanced or ''}".strip(), campaign=s.campaign, step=s.step,
                message_id=s.message_id, source="smtp",
                details={"recipient": address.lower(), "permanence": Permanence.HARD.value, "permanent": True,
                         "status": e.enhanced or str(e.code or ""), "evidence": f"refused at RCPT: {e}",
                         "recipients": [address.lower()], "original_message_id": s.message_id})
            self.store.suppress(address, "bounced", f"refused at RCPT for {s.message_id}", now)
            self.store.set_email_status(s.customer_key, "bounced")

    # ------------------------------------------------------------------ write-back
    def writeback(self, *, reuse_read: bool = False) -> StageResult:
        """Fill the worker's own columns in the sheet (rows found by key at write time).

        ``reuse_read``: called right after :meth:`sync` for a metered sheet
        (Google): the cells are placed by the sync's read, so the cycle costs
        one read; without a read in this cycle, nothing is written.
        """
        fresh, self._fresh_read = self._fresh_read, False
        with self._run("writeback") as res:
            wb = self.ws.mapping.writeback
            if not wb or not self.ws.cfg.sheet.writeback:
                res.stats = {"skipped": "write-back is off ([sheet] writeback = false or no [writeback] columns)"}
                return res
            if reuse_read and not fresh:
                res.stats = {"skipped": "the sheet was not read in this cycle; the next sync writes back"}
                return res
            if self.sheet_version is None or self._sheet_cells is None:
                data = self.sheet.read()
                self.sheet_version = data.version
                self._remember_cells(data)
            tz = self.ws.cfg.timezone
            sent, replied = self.store.last_times()
            from crm_automation.sheets.status_words import status_words

            # The team's words and date format; the log keeps ok | bounced | unsubscribed (status_words.py).
            words = status_words(self.ws.mapping.writeback_language or self.ws.cfg.language)

            def fmt(t: datetime | None) -> str:
                return words.time(t, tz)

            updates: dict[str, dict[str, str]] = {}
            for k, c in self.store.customers().items():
                vals = {}
                if "last_sent" in wb:
                    vals[wb["last_sent"]] = fmt(sent.get(k))
                if "last_reply" in wb:
                    vals[wb["last_reply"]] = fmt(replied.get(k))
                if "email_status" in wb:
                    vals[wb["email_status"]] = words.status(c.email_status)
                updates[k] = vals
            key_col = self.ws.mapping.fields[self.ws.mapping.key].column
            from crm_automation.sheets.csv import norm_key

            cells = self._cells()
            changed = {k: v for k, v in updates.items()
                       if any(cells.get(norm_key(k), {}).get(col, "") != val for col, val in v.items())}
            if not changed:
                res.stats = {"cells": 0, "note": "the sheet already shows these values; nothing to write"}
                return res
            base = self.sheet_version
            r = self.sheet.write_back(key_col, changed, version=base, reuse_read=reuse_read)
            res.stats = {"rows": len(changed), "cells": r.cells, "added_columns": list(r.added_columns),
                         "missing_keys": len(r.missing_keys)}
            if r.postponed:
                res.stats["postponed"] = r.postponed
                self.sheet_version = None
                self._sheet_cells = None
                log.info("write-back postponed: %s", r.postponed)
            else:
                for k, v in changed.items():
                    cells.setdefault(norm_key(k), {}).update(v)
                self._keep_synced_after_own_write(base, r)
                if r.version:
                    self.sheet_version = r.version
        return res

    # ------------------------------------------------------------------ cycles
    def run_once(self, *, dry_run: bool = False) -> list[StageResult]:
        """One cycle: sync, fetch, send, write-back. A failed stage does not stop the later ones.

        A metered sheet (Google) is written back right after the sync, on the
        sync's read: one read and at most one write per cycle (issue #3); what
        fetch and send change reaches the sheet at the next cycle's sync.
        """
        metered = self._metered
        out = [self.sync()]
        if metered and not self.stop.is_set() and not dry_run:
            out.append(self.writeback(reuse_read=True))
        if not self.stop.is_set():
            if dry_run:
                out += [self.fetch(), self.send(dry_run=True)]
            else:
                out += self.fetch_and_send()  # no send on a stale inbound view (issue #9)
        if not metered and not self.stop.is_set() and not dry_run:
            out.append(self.writeback())
        return out

    def run_forever(self, on_result: Callable[[StageResult], None] = lambda r: None) -> None:
        """The scheduled worker: intervals from ``[schedule]``, one job at a time, until ``stop`` is set.

        Uses its own ``schedule.Scheduler`` (no module-level default, schedule
        issue #151). Job errors are the worker's policy: a stage that fails
        is recorded and retried at its next interval.
        """
        import schedule

        sc = self.ws.cfg.schedule
        sched = schedule.Scheduler()

        def job(fn: Callable[[], StageResult | list[StageResult]], wb: bool) -> None:
            if self.stop.is_set():
                return
            r = fn()
            for one in r if isinstance(r, list) else [r]:
                on_result(one)
            if wb and not self.stop.is_set():
                on_result(self.writeback(reuse_read=metered))

        # A metered sheet (Google) is written back only on the sync's read; files after every change.
        metered = self._metered
        # The send job fetches first and sends only on a fresh inbound view (issue #9).
        jobs: list[tuple[str, Callable[[], StageResult | list[StageResult]], bool]] = [
            (sc.sync_every, self.sync, metered), (sc.fetch_every, self.fetch, not metered),
            (sc.send_every, self.fetch_and_send, not metered)]
        for every, fn, wb in jobs:
            d = parse_duration(every)
            assert d is not None  # noqa: S101 - validated in config.py
            sched.every(int(d.total_seconds())).seconds.do(job, fn, wb)
        for r in self.run_once():
            on_result(r)
        while not self.stop.is_set():
            sched.run_pending()
            idle = sched.idle_seconds
            self.stop.wait(min(max(idle if idle is not None else 1.0, 0.1), 1.0))


__all__ = ["Progress", "StageResult", "Worker"]
