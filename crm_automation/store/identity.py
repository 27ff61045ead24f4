"""Which activity log belongs to a workspace: a marker file beside the config (issue #9).

Why: an empty log looks exactly like "nobody has been mailed". If the log
is deleted, replaced by another workspace's copy, restored from an older
backup or emptied, the next run would mail every customer again. The log
carries an identity (``meta.log_id``, made when it is created); the
workspace keeps, outside the log's folder, a small marker naming that
identity and how many messages the log had sent. Before a worker
uses the log, the two must agree:

- no marker yet (a new workspace, or one upgraded from before this check):
  one is written;
- the log's identity differs from the marker's, and the marker's log had
  sent messages: refused (exit 2), unless the admin says so with
  ``--accept-new-log``; a marker whose log never sent anything is simply
  moved to the new log;
- the same log, but it has fewer sent messages than the marker
  recorded (emptied, or an older copy put back): refused likewise.

The marker lives beside the config file (``.<config name>.log-id.json``),
so deleting the runtime folder (``var/``) does not delete it; for a
PostgreSQL log (issue #20), shared by several machines, it is also a row of
the log's ``meta`` table (``_load`` says why both).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from crm_automation.errors import ConfigError, StorageError
from crm_automation.store.repo import Store

log = logging.getLogger("crm_automation")
ACCEPT_HINT = ("if you really mean to start over with this log, run the command once with --accept-new-log "
               "(every customer may then be mailed again by campaigns that already ran)")


class WorkspacePaths(Protocol):
    """What this module needs of the workspace's config: where the config file and the log are.

    A protocol, not ``config.Config`` itself (which it is): the store imports
    nothing above it (issue #18).
    """

    @property
    def path(self) -> Path:
        """The config file (the marker lives beside it)."""
        ...

    @property
    def database(self) -> Path | str:
        """The activity log's file, or its PostgreSQL URL (issue #20)."""
        ...


@dataclass(frozen=True, slots=True)
class Marker:
    """What the workspace remembers of its log."""

    log_id: str
    database: str
    sent: int


def marker_path(cfg: WorkspacePaths) -> Path:
    """``.<config stem>.log-id.json`` beside the config file."""
    return cfg.path.with_name(f".{cfg.path.stem}.log-id.json")


def read_marker(path: Path) -> Marker | None:
    """The marker, or None when there is none (a damaged one is reported, not ignored)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Marker(str(data["log_id"]), str(data.get("database", "")), int(data.get("sent", 0)))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: the workspace's log marker cannot be read ({e})",
                          hint="delete the file only if you are sure the activity log is this workspace's own; "
                               "it is written again at the next run") from None


def write_marker(path: Path, marker: Marker) -> None:
    """Write the marker atomically: a temporary file in the same folder, then ``os.replace``."""
    text = json.dumps({"log_id": marker.log_id, "database": marker.database, "sent": marker.sent}, indent=2) + "\n"
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            with contextlib.suppress(OSError):
                Path(tmp).chmod(path.stat().st_mode & 0o7777)  # keep the bits an admin gave the marker
            Path(tmp).replace(path)
        except BaseException:
            with contextlib.suppress(OSError):
                Path(tmp).unlink()
            raise
    except OSError as e:
        raise StorageError(f"{path}: cannot write the workspace's log marker: {e.strerror}",
                           hint=f"make {path.parent} writable by the user running crm-automation") from None


def guard(store: Store, cfg: WorkspacePaths, *, accept_new: bool = False, write: bool = True) -> None:
    """Check that ``store`` is this workspace's log (see the module docstring); raise ConfigError if not.

    ``write=False`` (dry runs and ``check``, which take no lock, issue #17)
    checks the same and leaves the marker as it is.
    """
    path = marker_path(cfg)
    marker = _load(store, path)
    current = Marker(store.log_id(), str(cfg.database), store.sent_count())
    if marker is None or accept_new:
        if marker is not None and (marker.log_id != current.log_id or current.sent < marker.sent):
            log.warning("%s: accepting %s as this workspace's log (--accept-new-log); the previous log had "
                        "sent %d message(s)", path, cfg.database, marker.sent)
        if write:
            _save(store, path, current)
        return
    if marker.log_id != current.log_id:
        if marker.sent == 0:
            if write:
                _save(store, path, current)  # the old log never mailed anyone: nothing can be sent twice
            return
        raise ConfigError(
            f"{cfg.database}: this is not the activity log this workspace was using (the workspace's log had "
            f"sent {marker.sent} message(s); this one is "
            f"{'one that has sent nothing' if current.sent == 0 else 'another log'}). It was deleted, replaced or "
            "moved; starting from it would mail customers again",
            hint=f"put the original log back at {cfg.database}, or fix [workspace] database; {ACCEPT_HINT}")
    if current.sent < marker.sent:
        raise ConfigError(
            f"{cfg.database}: the activity log has {current.sent} sent message(s), but this "
            f"workspace recorded {marker.sent}: it was emptied or replaced by an older copy; starting from "
            "it would mail customers again",
            hint=f"put the newest copy of the log back; {ACCEPT_HINT}")


EVIDENCE = "sheet_evidence"  # meta key: what the sheet showed of earlier mail while the log had sent nothing
ACCEPTED = "accepted_new_log"  # meta key: when the admin accepted this log with --accept-new-log


@dataclass(frozen=True, slots=True)
class SheetEvidence:
    """Rows of the sheet whose write-back columns show mail this log never sent (issue #17).

    ``rows`` counts them; ``examples`` are a few sheet row numbers;
    ``column`` names the column that showed it.
    """

    rows: int
    examples: tuple[int, ...]
    column: str

    def to_json(self) -> str:
        """The form kept in the log's ``meta`` table."""
        return json.dumps({"rows": self.rows, "examples": list(self.examples), "column": self.column},
                          ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> SheetEvidence:
        """Inverse of :meth:`to_json`."""
        d = json.loads(text)
        return cls(int(d["rows"]), tuple(int(r) for r in d["examples"]), str(d["column"]))


def note_sheet_evidence(store: Store, evidence: SheetEvidence | None) -> None:
    """After a sync read the sheet: remember what it shows, while the log has sent nothing (else forget it)."""
    keep = evidence if evidence is not None and evidence.rows and not store.has_sent() else None
    store.set_meta(EVIDENCE, keep.to_json() if keep is not None else None)


def sheet_evidence_hold(store: Store, cfg: WorkspacePaths) -> ConfigError | None:
    """Why sending must wait: a new or empty log, and a sheet that shows this workspace mailed people before.

    Why: a workspace set up again from git (``var/`` and the marker are both
    ignored) or a log lost with its marker looks exactly like "nobody has
    been mailed", and would mail everyone again, although the sheet's own
    "last sent" column shows who was. The sheet cannot tell which campaign
    or step each had, so the log cannot be rebuilt from it: the admin must
    restore the log, or accept starting afresh (``--accept-new-log``).
    """
    text = store.meta(EVIDENCE)
    if text is None or store.meta(ACCEPTED) is not None or store.has_sent():
        return None
    ev = SheetEvidence.from_json(text)
    rows = ", ".join(str(r) for r in ev.examples) + (", ..." if ev.rows > len(ev.examples) else "")
    return ConfigError(
        f"{cfg.database}: this activity log has never sent anything, but the sheet's \"{ev.column}\" column "
        f"shows earlier mail for {ev.rows} customer(s) (sheet rows {rows}): the log that recorded those sends "
        "is missing (a new set-up, or the log was lost with its marker). Nothing is sent until that is settled",
        hint=f"either put the original log back at {cfg.database} (from a backup or the old machine), or, to "
             "start this log afresh, run once with --accept-new-log: every campaign then treats every customer "
             "as never mailed, so those who had a campaign's emails get them again (`crm-automation send "
             "--dry-run --accept-new-log` lists who)")


def accept(store: Store, now: datetime) -> None:
    """``--accept-new-log`` on a real send pass: the admin starts this log knowingly; the sheet no longer holds it."""
    if store.meta(ACCEPTED) is None:
        store.set_meta(ACCEPTED, now.isoformat(timespec="seconds"))


def record(store: Store, cfg: WorkspacePaths) -> None:
    """After a send pass: remember how many messages the log has sent (the marker only grows)."""
    path = marker_path(cfg)
    marker = _load(store, path)
    n = store.sent_count()
    current = Marker(store.log_id(), str(cfg.database), n)
    if marker is None or marker.log_id != current.log_id or n > marker.sent:
        _save(store, path, current)
    elif store.dialect.name != "sqlite":  # another machine's worker recorded first: this machine's copy catches up
        on_file = read_marker(path)
        if on_file is None or on_file.log_id != current.log_id or on_file.sent < n:
            try:
                write_marker(path, current)
            except StorageError as e:
                log.warning("%s", e)


MARKER = "workspace_marker"  # meta key: the marker of a PostgreSQL log (issue #20)


def _load(store: Store, path: Path) -> Marker | None:
    """The workspace's marker: the file beside the config; for PostgreSQL also a row of the log's ``meta``.

    Why both for PostgreSQL (issue #20): several machines share one server's
    log, and a file beside one machine's config is not seen by the others,
    so the log carries the marker too (a machine that joins later finds it
    there). But a database put back from an older ``pg_dump`` carries its
    older marker along: only a copy kept outside the database can tell. So
    each machine keeps the file as well, and the higher count of the same
    log wins: a restore older than this machine's last record is refused,
    as for SQLite. The file is this machine's lower bound; a machine whose
    config folder cannot be written still runs on the database's marker.
    """
    on_file = read_marker(path)
    if store.dialect.name == "sqlite":
        return on_file
    text = store.meta(MARKER)
    in_log = None
    if text is not None:
        data = json.loads(text)
        in_log = Marker(str(data["log_id"]), str(data.get("database", "")), int(data.get("sent", 0)))
    if on_file is None:
        return in_log
    if in_log is None or on_file.log_id != in_log.log_id or on_file.sent > in_log.sent:
        return on_file  # another log than this machine used, or a log put back older than this machine saw
    return in_log


def _save(store: Store, path: Path, marker: Marker) -> None:
    if store.dialect.name == "sqlite":
        write_marker(path, marker)
        return
    store.set_meta(MARKER, marker_text(marker))
    try:
        write_marker(path, marker)
    except StorageError as e:  # the database's own marker still guards (see _load)
        log.warning("%s", e)


def marker_text(marker: Marker) -> str:
    """A PostgreSQL log's marker as ``meta`` keeps it (``db copy`` writes the copied log's, issue #20)."""
    return json.dumps({"log_id": marker.log_id, "database": marker.database, "sent": marker.sent})
