"""A quarantined message whole, for a person to look at (issue #19: the attention page's download).

SPEC §8 keeps every message that could not be understood in ``quarantine``
with its bytes exactly as received (``raw``); the attention page lists them
without the bytes (:func:`crm_automation.app.reports.attention`) and offers
each as an ``.eml`` file that a mail program opens, which is where a person
sees why the parser gave up. Read-only, like every report.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from crm_automation.app.access import reading
from crm_automation.app.results import JsonObject, utc_text

if TYPE_CHECKING:
    from crm_automation.workspace import Workspace


@dataclass(frozen=True, slots=True)
class QuarantinedMessage:
    """One quarantined message: where it came from, when, why it was not understood, and its bytes."""

    id: int
    source: str
    received_at: datetime
    error: str
    raw: bytes

    @property
    def filename(self) -> str:
        """A download name that sorts by id and says what it is: ``quarantine-12.eml``."""
        return f"quarantine-{self.id}.eml"

    def to_json(self) -> JsonObject:
        """What is known about the message (not its bytes: they are the download)."""
        return {"id": self.id, "source": self.source, "received_at": utc_text(self.received_at),
                "error": self.error, "size": len(self.raw)}


def message(ws: Workspace, qid: int) -> QuarantinedMessage | None:
    """Quarantined message ``qid`` with its raw bytes, or None when the log has none by that id."""
    with reading(ws) as store:
        found = store.quarantined_message(qid)
    if found is None:
        return None
    r = found.row
    return QuarantinedMessage(r.id, r.source, r.received_at, r.error, found.raw)
