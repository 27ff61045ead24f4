"""Sends a person decides on: ``requeue`` puts uncertain or failed sends back in the queue (issue #18)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from crm_automation.app.access import writing
from crm_automation.app.results import JsonObject
from crm_automation.errors import ConfigError
from crm_automation.models import SendStatus

if TYPE_CHECKING:
    from crm_automation.workspace import Workspace


@dataclass(frozen=True, slots=True)
class Requeued:
    """How many sends went back in the queue, and why the named ones that did not could not."""

    count: int
    problems: tuple[str, ...]

    def to_json(self) -> JsonObject:
        """``requeue --json``."""
        return {"requeued": self.count, "problems": list(self.problems)}


def requeue(ws: Workspace, ids: Sequence[int] = (), *, uncertain: bool = False, failed: bool = False) -> Requeued:
    """Queue sends again on purpose: those named by ``ids`` (uncertain or failed), or every uncertain/failed one.

    Why only on purpose (SPEC §10): an uncertain send may have reached the
    customer; only a person who checked may decide to send it again. The
    sends go out on the next send pass.
    """
    if not ids and not uncertain and not failed:
        raise ConfigError("requeue: name the sends to queue again by id, or ask for every uncertain or failed one")
    statuses = tuple(s.value for s, on in ((SendStatus.UNCERTAIN, uncertain or bool(ids)),
                                           (SendStatus.FAILED, failed or bool(ids))) if on)
    with writing(ws) as store:
        problems = store.requeue_problems(list(ids), statuses)
        n = store.requeue(list(ids) or None, statuses)
    return Requeued(n, tuple(problems))
