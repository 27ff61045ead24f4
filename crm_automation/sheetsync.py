"""The worker's view of the customer sheet between stages: sync, write-back and new rows (issue #10).

A stage, not an adapter: it uses the store, the stage context and the
workspace, so it lives beside the other stages rather than in ``sheets/``,
whose adapters import no orchestration (moved from ``sheets/session.py``,
issue #18). The pure parts — what write-back should change, the sheet's
evidence of earlier mail, the stage's report — are functions below the class.

One object holds what a cycle knows of the sheet — the version and the
write-back cells of the last read, the key column, the senders appended
since — so write-back reuses the sync's read where it may:

* **Skip if unchanged.** A file source's ``fingerprint()`` plus the
  mapping's digest, stored with the sync (``sheet_state``): an untouched
  file costs one hash, not a read (issue #3). After our own write-back the
  new digest still stands for the synced sheet (:meth:`_keep_synced_after_own_write`).
* **Metered sheets** (Google): one read and at most one write per cycle;
  the write follows the sync directly and places cells by that read.
* **Write-back** compares what it would write with what the cells show, so
  an up-to-date sheet is not written at all.
* **A bad sheet fails the sync stage only** (issue #17): a missing or renamed
  required column, a missing worksheet, a file that cannot be read, or a
  mapping key that is not the one the log was built on, is the sync's
  ``error``; :attr:`SheetSession.error` keeps it until a sync succeeds, and
  the worker holds sending and write-back meanwhile (fetch goes on).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING

from crm_automation.cells import cell_text
from crm_automation.errors import ConfigError, CrmError, DataError, LockedError, ServiceError
from crm_automation.fleet import STOP_WORKERS_FIRST, holding, others_alive
from crm_automation.models import SheetData
from crm_automation.sheets.base import SheetSource, WriteResult
from crm_automation.sheets.grid import norm_key
from crm_automation.stage import StageContext, StageResult, recorded
from crm_automation.status_words import shows_a_block
from crm_automation.store import identity
from crm_automation.store.customers import RekeyCounts
from crm_automation.workspace import Workspace

if TYPE_CHECKING:
    from crm_automation.mapping import MappingResult
    from crm_automation.rekey import RekeyPlan
    from crm_automation.store.customers import SheetState, StoredCustomer, SyncStats
    from crm_automation.store.repo import Store
    from crm_automation.store.reports import LastTimes

log = logging.getLogger("crm_automation")
SYNC_FAILED = "sync_failed"  # meta key: why the last sync failed (JSON), so another process holds sending too


def _error_json(e: CrmError) -> str:
    return json.dumps({"message": str(e), "hint": e.hint, "kind": "service" if isinstance(e, ServiceError)
                       else "config"}, ensure_ascii=False)


def _error_from_json(text: str) -> CrmError:
    """The error :func:`_error_json` recorded (another process's failed sync)."""
    d = json.loads(text)
    kind = ServiceError if d.get("kind") == "service" else ConfigError
    return kind(str(d.get("message", "")), hint=d.get("hint"))


@contextmanager
def gc_paused() -> Iterator[None]:
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


class SheetSession:
    """The sheet for one worker: its adapter, opened on first use, and what the last read showed."""

    def __init__(self, ws: Workspace, ctx: StageContext) -> None:
        self.ws = ws
        self.ctx = ctx
        self.store = ctx.store
        self._sheet: SheetSource | None = None
        self.version: str | None = None  # the file version (or revision) of the last read
        self._fresh_read = False  # the sync of this cycle read the sheet (a metered write-back may reuse it)
        self._keys: list[object] | None = None  # the key column as the last sync read it
        # (fingerprint, version) of the file content the log's last sync recorded, when this session knows both
        self._synced: tuple[str, str | None] | None = None
        self._appended: set[str] = set()  # senders appended to the sheet since that read
        # key -> write-back column -> text, as read (or a function building it: see _remember_cells)
        self._cells: dict[str, dict[str, str]] | Callable[[], dict[str, dict[str, str]]] | None = None
        self.error: CrmError | None = None  # why the last sync failed; None once one succeeds
        self._synced_here = False  # whether this process ran a sync (else the log says how the last one went)

    @property
    def sheet(self) -> SheetSource:
        """The sheet adapter, opened on first use."""
        if self._sheet is None:
            self._sheet = self.ws.open_sheet()
        return self._sheet

    @property
    def metered(self) -> bool:
        """Whether the sheet's requests count against a quota (Google): one read and one write per cycle."""
        return self.sheet.metered

    # ------------------------------------------------------------ sync
    def sync(self, after_added: Callable[[], int] | None = None) -> StageResult:
        """Read the sheet, validate, record new customers and field changes.

        ``after_added`` runs when customers were added or came back (the
        worker relinks mail logged before they were customers, issue #9).
        """
        with recorded(self.ctx, "sync") as res:
            self._sync(res, after_added)
        self.error = res.error
        self._synced_here = True
        self.store.set_meta(SYNC_FAILED, _error_json(res.error) if res.error is not None else None)
        return res

    def last_error(self) -> CrmError | None:
        """Why the last sync failed, or None: this process's, else the one the log recorded (another process's).

        Why the log: a failed sync holds sending (issue #17), and a ``send``
        run by cron in a new process must not mail on a sheet that the last
        ``sync`` or ``run`` could not read.
        """
        if self._synced_here:
            return self.error
        text = self.store.meta(SYNC_FAILED)
        return None if text is None else _error_from_json(text)

    def _failed(self, res: StageResult, e: CrmError) -> None:
        """The sheet (or the key) stops this sync: recorded as its error; the worker goes on (issue #17)."""
        res.error = e
        log.warning("sync stopped: %s", e)

    def _key_problem(self) -> ConfigError | None:
        """The mapping's key must be the field the log's customers are keyed by (issue #17, :mod:`rekey`).

        A log that has recorded none yet adopts one now: the mapping's key
        for a new log, the field its keys were built from for an older one.
        """
        from crm_automation.rekey import infer_key_field, key_change  # only where a key is checked: sync, rekey

        current = self.ws.mapping.key
        recorded_key = self.store.key_field()
        if recorded_key is None:
            adopted = infer_key_field(current, self.store.customers(present_only=False).values()) \
                if self.store.has_customers() else current
            self.store.set_key_field(adopted)
            recorded_key = adopted
        elif recorded_key != current and not self.store.has_customers():
            self.store.set_key_field(current)  # nobody recorded yet: nothing is keyed by the old field
            recorded_key = current
        return key_change(recorded_key, self.ws.mapping)

    def _sync(self, res: StageResult, after_added: Callable[[], int] | None) -> None:
        problem = self._key_problem()
        if problem is not None:
            self._failed(res, problem)
            return
        try:
            fp = self._fingerprint()
        except (ConfigError, DataError) as e:  # a sheet that cannot be opened as configured (a worksheet gone)
            self._failed(res, e)
            return
        last = self.store.sheet_state(self.sheet.name)
        if fp is not None and last is not None and last.fingerprint == fp:
            # The file's bytes and the mapping are as they were at the last complete sync: nothing to do.
            _report_unchanged(res, last)
            known = self._synced[1] if self._synced is not None and self._synced[0] == fp else None
            self._synced = (fp, known)
            return
        applied = self._read_and_record(res)
        if applied is None:
            return
        result, stats, n_rows = applied
        relinked = after_added() if after_added is not None and (stats.added or stats.returned) else 0
        _report_sync(res, result, stats, n_rows, relinked)
        self.store.set_sheet_state(self.sheet.name, fp, n_rows, res.problems, self.ctx.clock.now(), res.notes,
                                   rejected=result.rejected_rows)
        self._synced = (fp, self.version) if fp is not None else None

    def _read_and_record(self, res: StageResult) -> tuple[MappingResult, SyncStats, int] | None:
        """Read the sheet, validate its rows and record them in the log; None when the sheet stops the sync."""
        with gc_paused(), ThreadPoolExecutor(1, thread_name_prefix="sheet-read") as pool:
            # The read runs beside the log's row digests and the validators' set-up: calamine
            # parses without holding the GIL, and Google's answer is network time.
            reading = pool.submit(self.sheet.read)
            previous = self.store.row_hashes()
            self.ws.mapping.prepare()
            try:
                data = reading.result()
                result = self.ws.mapping.apply(data, previous, blank_invalid=True)
            except (ConfigError, DataError) as e:  # a required column renamed or deleted (issue #17)
                self._failed(res, e)
                return None
            self._fresh_read = True
            self._keys = data.column(self.ws.mapping.fields[self.ws.mapping.key].column)
            self._appended = set()
            self.version = data.version
            self._remember_cells(data)
            identity.note_sheet_evidence(self.store, sheet_evidence(data, self.ws.mapping.writeback))
            keep = dict(result.unchanged)
            for k, r in result.rejected_keys.items():
                keep.setdefault(k, r)
            n_rows, source_name = len(data), data.source
            del data  # the rows are mapped: free them before the log's bulk insert (100,000 rows ~ 150 MB)
            stats = self.store.apply_sync(source_name, result.customers, keep, result.hashes,
                                          self.ctx.clock.now())
        return result, stats, n_rows

    def _fingerprint(self) -> str | None:
        """The file's digest plus the mapping's, for sources that have one (Excel, CSV); None otherwise."""
        file_digest = self.sheet.fingerprint()
        if file_digest is None:
            return None
        mapping_digest = hashlib.sha256(self.ws.mapping.path.read_bytes()).hexdigest()[:16]
        return f"{file_digest}:{mapping_digest}"

    def _keep_synced_after_own_write(self, base: str | None, r: WriteResult) -> None:
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
        if last is None or last.fingerprint != self._synced[0]:
            return
        new = f"{r.fingerprint}:{last.fingerprint.partition(':')[2]}"  # the mapping the rows were validated with
        self.store.set_sheet_state(self.sheet.name, new, last.rows, last.problems, self.ctx.clock.now(), last.notes,
                                   rejected=last.rejected)
        self._synced = (new, r.version)

    def _remember_cells(self, data: SheetData) -> None:
        """Keep the write-back columns' values as read, so write-back only asks the sheet when a value differs.

        Only references to the columns are kept here; the key -> cells lookup
        is built when a write-back first needs it (:meth:`cells`), so a plain
        ``sync`` of 100,000 rows does not pay for it (issue #3).
        """
        if not self.ws.cfg.sheet.writeback or not self.ws.mapping.writeback:
            self._cells = {}
            return
        key_col = self.ws.mapping.fields[self.ws.mapping.key].column
        cols = list(self.ws.mapping.writeback.values())
        present = [data.column(c) if c in data.headers else None for c in cols]
        self._cells = partial(_shown_cells, data.column(key_col), cols, present)  # the columns, not all of data

    def cells(self) -> dict[str, dict[str, str]]:
        """The write-back columns as last read (key -> column -> text), built on first use."""
        if callable(self._cells):
            self._cells = self._cells()
        return self._cells or {}

    # ------------------------------------------------------------ write-back
    def writeback(self, *, reuse_read: bool = False) -> StageResult:
        """Fill the worker's own columns in the sheet (rows found by key at write time).

        ``reuse_read``: called right after :meth:`sync` for a metered sheet
        (Google): the cells are placed by the sync's read, so the cycle costs
        one read; without a read in this cycle, nothing is written.
        """
        fresh, self._fresh_read = self._fresh_read, False
        with recorded(self.ctx, "writeback") as res:
            wb = self.ws.mapping.writeback
            if not wb or not self.ws.cfg.sheet.writeback:
                res.stats = {"skipped": "write-back is off ([sheet] writeback = false or no [writeback] columns)"}
                return res
            if reuse_read and not fresh:
                res.stats = {"skipped": "the sheet was not read in this cycle; the next sync writes back"}
                return res
            if self.error is not None:  # a sheet whose columns no longer fit the mapping is not written (issue #17)
                res.stats = {"skipped": "the last sync failed; write-back resumes once a sync succeeds"}
                return res
            if identity.sheet_evidence_hold(self.store, self.ws.cfg) is not None:
                # The sheet's own columns are the evidence that holds sending: overwriting them with what a log
                # that never sent anything says would erase it, and the next edit of the sheet would mail everyone.
                res.stats = {"skipped": "the sheet shows mail this log never sent (see the send stage); write-back "
                             "waits until the log is restored or accepted"}
                return res
            if self.version is None or self._cells is None:
                data = self.sheet.read()
                self.version = data.version
                self._remember_cells(data)
            changed = self._changes(wb)
            if not changed:
                res.stats = {"cells": 0, "note": "the sheet already shows these values; nothing to write"}
                return res
            base = self.version
            key_col = self.ws.mapping.fields[self.ws.mapping.key].column
            r = self.sheet.write_back(key_col, changed, version=base, reuse_read=reuse_read)
            res.stats = {"rows": len(changed), "cells": r.cells, "added_columns": list(r.added_columns),
                         "missing_keys": len(r.missing_keys)}
            if r.postponed:
                res.stats["postponed"] = r.postponed
                self.version = None
                self._cells = None
                log.info("write-back postponed: %s", r.postponed)
            else:
                cells = self.cells()
                for k, v in changed.items():
                    cells.setdefault(norm_key(k), {}).update(v)
                self._keep_synced_after_own_write(base, r)
                if r.version:
                    self.version = r.version
        return res

    def _changes(self, wb: dict[str, str]) -> dict[str, dict[str, str]]:
        """Key -> column -> text that differs from what the sheet shows (in the team's words, status_words.py)."""
        from crm_automation.status_words import status_words

        # The team's words and date format; the log keeps ok | bounced | unsubscribed.
        words = status_words(self.ws.mapping.writeback_language or self.ws.cfg.language)
        customers = self.store.customers()
        wants_contact = "last_contact" in wb or "days_quiet" in wb
        contact = contact_cells(self.ws, self.store, self.ctx.clock.now(), customers) if wants_contact else None
        return writeback_changes(customers, self.store.last_times(), wb, self.cells(),
                                 lambda t: words.time(t, self.ws.cfg.timezone), words.status, contact)

    # ------------------------------------------------------------ new rows
    def add_senders(self, senders: dict[str, str], known: dict[str, str]) -> int:
        """``new_senders = "add_to_sheet"``: unknown senders become new rows (key and name columns).

        Not while the sheet or the mapping has a problem (issue #17): rows
        appended by a mapping that no longer fits the sheet would land in the
        wrong columns. The senders' mail is logged all the same.
        """
        if self.error is not None or self.ws.mapping_error is not None:
            log.warning("not adding %d new sender(s) to the sheet: %s; their mail is logged", len(senders),
                        "the last sync failed" if self.error is not None else "mappings/customers.toml has a problem")
            return 0
        m = self.ws.mapping
        ef = self.ws.email_field
        if ef is None or ef != m.key:
            log.warning("new_senders = \"add_to_sheet\" needs the mapping key to be an email field; not adding")
            return 0
        name_field = m.fields[m.roles.name] if m.roles.name else None
        key_col = m.fields[ef].column
        # Not yet synced rows count too: a sender added by the last fetch is in the sheet, not yet in the log.
        if self.metered and self._keys is not None:
            # Google: no second read of the worksheet; the keys of the last sync's read plus those added since.
            in_sheet = {norm_key(v) for v in self._keys} | self._appended
        else:
            in_sheet = {norm_key(v) for v in self.sheet.read().column(key_col)}
        rows = []
        for addr, name in sorted(senders.items()):
            if addr in known or addr in in_sheet:
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

    # ------------------------------------------------------------ re-key
    def rekey(self, *, dry_run: bool = False) -> Rekeyed:
        """Move every customer's history to the key the mapping now names (issue #17): see :func:`rekey_log`."""
        return rekey_log(self, dry_run=dry_run)


REKEY_STAGES = ("sync", "send-plan", "writeback")  # the stages that read or write customers' keys in bulk


def _rekey_alone(session: SheetSession, moves: list[tuple[str, str, object]], current: str,
                 stats: dict[str, object]) -> RekeyCounts:
    """Apply the moves in one transaction, with no other worker alive (issue #20), recorded as a run.

    On PostgreSQL other workers may share the log: a send recorded or a
    reply logged under an old key while the keys move would belong to no
    customer. So the re-key holds the stages that read customers' keys in
    bulk (a worker starting meanwhile skips them) and refuses while any other
    worker is alive (:func:`~crm_automation.fleet.others_alive`).
    """
    fleet = session.ctx.fleet
    with holding(fleet, REKEY_STAGES, "rekey"):
        others = others_alive(fleet, session.store)
        if others:
            raise LockedError(f"rekey refused: {len(others)} other worker(s) are running on this workspace "
                              f"({', '.join(others)}); nothing was changed", hint=STOP_WORKERS_FIRST)
        run_id = session.store.start_run("rekey", session.ctx.clock.now())
        try:
            counts = session.store.rekey(moves, current)
        except CrmError as e:  # rolled back: the log is as it was; the run says why
            with suppress(CrmError):
                session.store.finish_run(run_id, session.ctx.clock.now(), ok=False, stats=stats, error=str(e))
            raise
        session.store.finish_run(run_id, session.ctx.clock.now(), ok=True, error=None,
                                 stats={**stats, "rows": counts.tables})
    return counts


def rekey_log(session: SheetSession, *, dry_run: bool = False) -> Rekeyed:
    """Move every customer's history to the key the mapping now names, from the sheet (issue #17).

    Plans with :func:`~crm_automation.rekey.plan_rekey` (every conflict
    listed, nothing changed: a ConfigError) and applies the plan in one
    transaction of the log; ``dry_run`` counts what would move. A log
    already keyed by the mapping's key has nothing to do.
    """
    from crm_automation.rekey import plan_rekey

    recorded_key = session.store.key_field()
    current = session.ws.mapping.key
    if recorded_key is None or recorded_key == current:
        return Rekeyed(recorded_key or current, current, dry_run, None, None)
    data = session.sheet.read()
    plan = plan_rekey(recorded_key, session.ws.mapping, data, session.store.customers(present_only=False))
    if plan.problems:
        raise ConfigError.collect(
            [f"rekey refused: {p}" for p in plan.problems],
            hint=f"fix these rows in {data.source} (or the mapping), then run `crm-automation rekey --dry-run` "
                 "again; nothing was changed")
    moves = [(m.old, m.new, m.value) for m in plan.moves]
    if dry_run:
        return Rekeyed(recorded_key, current, True, plan, session.store.rekey(moves, current, dry_run=True))
    counts = _rekey_alone(session, moves, current, {"from": recorded_key, "to": current,
                                                    "customers": len(plan.moves)})
    session._synced = None  # the next sync reads the sheet again
    log.info("re-keyed %d customer(s) from %s to %s", len(plan.moves), recorded_key, current)
    return Rekeyed(recorded_key, current, False, plan, counts)


def _report_unchanged(res: StageResult, last: SheetState) -> None:
    """A sync skipped by the file's digest reports what the last complete sync found (issue #3)."""
    # Rejected ROWS, not problems: a row with three bad cells is one (issue #17).
    rejected = last.rejected if last.rejected is not None else len(last.problems)
    res.stats = {"rows": last.rows, "added": 0, "changed": 0,
                 "unchanged": max(last.rows - rejected, 0), "removed": 0,
                 "rejected": rejected, "note": "sheet unchanged since the last sync"}
    res.problems += last.problems
    res.notes += last.notes
    if last.notes:
        res.stats["blanked"] = len(last.notes)


def _report_sync(res: StageResult, result: MappingResult, stats: SyncStats, n_rows: int, relinked: int) -> None:
    """The sync's counts, rejected rows and blanked cells, as the stage reports them."""
    res.problems += [str(e) for e in result.errors]
    res.notes += [str(b) for b in result.blanked]
    for w in result.warnings:
        log.warning("%s", w)
    # "unchanged" counts rows whose cells are as at the last sync (not the rejected rows kept present).
    # Rows that come back (a wiped sheet restored) count as added, and are shown apart too (issue #9).
    res.stats = {"rows": n_rows, "added": stats.added + stats.returned, "changed": stats.changed,
                 "unchanged": len(result.unchanged), "removed": stats.removed,
                 "rejected": result.rejected_rows}  # rows, not bad cells (issue #17)
    if stats.returned:
        res.stats["returned"] = stats.returned
    if relinked:
        res.stats["earlier_mail_linked"] = relinked
    if result.blanked:
        # Reported at every sync until fixed (issue #11): kept with the sheet's state for a skipped
        # unchanged sheet; their rows have no row hash, so a changed sheet validates them again.
        res.stats["blanked"] = len(result.blanked)


def _shown_cells(keys: list[object], cols: list[str], present: list[list[object] | None]) -> dict[str, dict[str, str]]:
    """Key -> write-back column -> text, as read (``present``: each column's cells, None when the sheet lacks it)."""
    blank = [""] * len(keys)  # a column the sheet does not have yet reads as empty
    texts = [blank if col is None else [cell_text(v) for v in col] for col in present]
    return {norm_key(k): dict(zip(cols, vals, strict=True))
            for k, vals in zip(keys, zip(*texts, strict=True), strict=True)}

def sheet_evidence(data: SheetData, wb: dict[str, str]) -> identity.SheetEvidence | None:
    """Rows whose write-back columns show earlier mail: a "last sent" date, or a bounced/unsubscribed status.

    Only the worker writes these columns, so such rows mean a log once
    sent to these customers; a log that has sent nothing must not start
    over without the admin's word (issue #17, :func:`identity.sheet_evidence_hold`).
    """
    found: dict[int, str] = {}
    for name, shows in (("last_sent", bool), ("email_status", shows_a_block)):
        col = wb.get(name)
        if col is None or col not in data.headers:
            continue
        for row, value in zip(data.row_numbers, data.column(col), strict=True):
            if row not in found and shows(cell_text(value).strip()):
                found[row] = col
    if not found:
        return None
    rows = sorted(found)
    return identity.SheetEvidence(len(rows), tuple(rows[:5]), found[rows[0]])


def contact_cells(ws: Workspace, store: Store, now: datetime, customers: dict[str, StoredCustomer]
                  ) -> dict[str, tuple[datetime | None, int]]:
    """Key -> (last contact, days quiet) at ``now``, by :mod:`crm_automation.contact`'s rules (issue #21)."""
    from crm_automation.contact import last_contact, quiet, stage_limit

    m = ws.mapping
    zone = ws.cfg.timezone
    times = store.contact_times(m.roles.stage)
    out: dict[str, tuple[datetime | None, int]] = {}
    for k, c in customers.items():
        t = times.get(k)
        last = last_contact(t.last_in, t.last_out) if t is not None else None
        stage = c.data.get(m.roles.stage) if m.roles.stage is not None else None
        q = quiet(last, t.stage_changed if t is not None else None, c.first_seen, now, zone,
                  stage_limit(stage, m.stale_after_days))
        out[k] = (last.at if last is not None else None, q.days)
    return out


def writeback_changes(customers: dict[str, StoredCustomer], last: LastTimes, wb: dict[str, str],
                      shown: dict[str, dict[str, str]], fmt: Callable[[datetime | None], str],
                      status: Callable[[str], str],
                      contact: dict[str, tuple[datetime | None, int]] | None = None) -> dict[str, dict[str, str]]:
    """Key -> column -> text the worker's columns should show, where it differs from what they ``shown``.

    ``fmt`` and ``status`` write a time and an email status in the team's
    words (:mod:`~crm_automation.status_words`): the log keeps
    ok | bounced | unsubscribed. ``contact``: key -> (last contact, days
    quiet) for the ``last_contact``/``days_quiet`` columns (issue #21).
    """
    updates: dict[str, dict[str, str]] = {}
    for k, c in customers.items():
        vals = {}
        if "last_sent" in wb:
            vals[wb["last_sent"]] = fmt(last.sent.get(k))
        if "last_reply" in wb:
            vals[wb["last_reply"]] = fmt(last.replied.get(k))
        if "email_status" in wb:
            vals[wb["email_status"]] = status(c.email_status)
        if contact is not None and k in contact:
            at, days = contact[k]
            if "last_contact" in wb:
                vals[wb["last_contact"]] = fmt(at)
            if "days_quiet" in wb:
                vals[wb["days_quiet"]] = str(days)
        updates[k] = vals
    return {k: v for k, v in updates.items()
            if any(shown.get(norm_key(k), {}).get(col, "") != val for col, val in v.items())}


@dataclass(frozen=True, slots=True)
class Rekeyed:
    """What ``rekey`` did (or, with ``dry_run``, would do); ``plan`` is None when there was nothing to do."""

    old_field: str
    new_field: str
    dry_run: bool
    plan: RekeyPlan | None
    counts: RekeyCounts | None

    def to_json(self) -> dict[str, object]:
        """Machine-readable form for ``--json``."""
        out: dict[str, object] = {"dry_run": self.dry_run, "from": self.old_field, "to": self.new_field,
                               "needed": self.plan is not None}
        if self.plan is not None and self.counts is not None:
            out.update({"matched_by": self.plan.by, "customers": len(self.plan.moves),
                        "same_key": self.plan.unchanged, "kept_old_key": list(self.plan.kept),
                        "rows": self.counts.tables,
                        "moves": [{"old": m.old, "new": m.new, "row": m.row} for m in self.plan.moves]})
        return out
