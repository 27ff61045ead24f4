"""Is the worker alive: each scheduled stage ran within twice its interval (issue #19, ``GET /healthz``).

A monitor (Uptime Kuma, a Nagios/Icinga HTTP check, Prometheus's blackbox
exporter) asks every minute or so and alerts on anything but 200. The
answer is built from :func:`crm_automation.app.reports.health` — the last run
of each stage — and ``[schedule]``:

- ``sync`` runs every ``sync_every``; ``send`` every ``send_every``;
  ``fetch`` every ``fetch_every`` and also before each send pass, so every
  ``min(fetch_every, send_every)``.
- A stage is *late* when its last run started more than twice its interval
  before ``now``, or never ran. One late stage makes the whole answer
  unhealthy (``ok`` false; ``serve`` answers 503).
- A stage that ran and failed is not late: a sheet or mail server being
  down is reported per stage (``ok`` of its last run) and in the team's
  health page, while ``/healthz`` answers "is the worker running at all".
  Twice the interval leaves room for one slow pass.

The JSON carries no customer data: no error texts (they can name a
customer or an address), no stats, only times, intervals and counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from crm_automation.app import reports
from crm_automation.app.results import JsonObject, JsonValue, utc_text
from crm_automation.config import Config, parse_duration
from crm_automation.workspace import Workspace

GRACE = 2  # a stage is late after this many of its intervals without a run


@dataclass(frozen=True, slots=True)
class StageLiveness:
    """One scheduled stage: its interval, its last run's start and result, whether it is late."""

    job: str
    every: timedelta
    last_started: datetime | None
    last_ok: bool | None
    late: bool


@dataclass(frozen=True, slots=True)
class Liveness:
    """The answer to ``/healthz``: every scheduled stage, and whether none is late."""

    at: datetime
    stages: tuple[StageLiveness, ...]
    queued: int
    due: int
    uncertain: int
    failed: int
    quarantined: int

    @property
    def ok(self) -> bool:
        """No stage is late."""
        return not any(s.late for s in self.stages)

    def to_json(self) -> JsonObject:
        """Times in the log's format, intervals in seconds; counts only."""
        stages: dict[str, JsonValue] = {
            s.job: {"every_seconds": int(s.every.total_seconds()), "last_started_at": utc_text(s.last_started),
                    "last_ok": s.last_ok, "late": s.late} for s in self.stages}
        return {"ok": self.ok, "at": utc_text(self.at), "stages": stages,
                "queue": {"queued": self.queued, "due": self.due, "uncertain": self.uncertain,
                          "failed": self.failed},
                "quarantined": self.quarantined}


def intervals(cfg: Config) -> dict[str, timedelta]:
    """Each scheduled stage's interval from ``[schedule]`` (fetch also runs before every send pass)."""
    sc = cfg.schedule

    def d(text: str) -> timedelta:
        value = parse_duration(text)
        return value if value is not None else timedelta(0)  # pragma: no cover - config.py validated it

    return {"sync": d(sc.sync_every), "fetch": min(d(sc.fetch_every), d(sc.send_every)), "send": d(sc.send_every)}


def liveness(ws: Workspace, now: datetime) -> Liveness:
    """Whether each scheduled stage ran within :data:`GRACE` times its interval before ``now``."""
    h = reports.health(ws, now)
    last = {r.job: r for r in h.runs}
    stages = []
    for job, every in intervals(ws.cfg).items():
        run = last.get(job)
        started = run.started_at if run is not None else None
        late = started is None or now - started > GRACE * every
        stages.append(StageLiveness(job, every, started, run.ok if run is not None else None, late))
    q = h.queue
    return Liveness(now, tuple(stages), q.queued, q.due, q.uncertain, q.failed, h.quarantined)
