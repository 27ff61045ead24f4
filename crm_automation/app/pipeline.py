"""``report pipeline`` (issue #21 items 3, 4 and 5): the pipeline by stage and owner, read from the log.

Per stage x owner (the mapping's ``stage`` and ``owner`` roles): the
customers present in the sheet, how many are stale (the rule of
:mod:`crm_automation.contact`, with ``[stale_after_days]``), the median days
in their current stage, and their replies and enquiries of the last 30 days.
Per owner: the same totals, and the median first-response time over the
last 30 days. With ``since``: each move between stages since then, and a
simple funnel (how many customers entered each stage). The CLI
(``report pipeline``, table / ``--json`` / ``--csv``) and the web page
``/pipeline`` render the one :class:`Pipeline` this returns.

Why pandas (the dependency the project declared for this): the work is
group-bys, medians and one "first answer after each mail" pairing
(``merge_asof``) over every customer and a month of mail. The store reads a
few set-based queries as plain rows (:mod:`crm_automation.store.pipeline`);
the times are parsed in bulk and grouped in C. On the benchmark log
(100,000 customers, 1,000,000 activities; benchmarks/bench_pipeline.py)
this is within a small factor of the bare reads.

Definitions (the README repeats them):

- **Stale**: :func:`crm_automation.contact.quiet` per customer whose stage has
  a limit, as the stale list applies it (:func:`crm_automation.app.sales.stale_from`:
  the rule is applied, not re-implemented; customers in a stage without a
  limit are never stale, and those written to since ``contact.fresh_since``
  surely not, so neither is looked at further).
- **Days in stage**: from when the customer entered their current stage
  (the latest logged change of the stage field, else when they were first
  seen) to ``now``, in days with a decimal (12.5); the median over the cell.
- **Replies**: ``email_in`` activities (replies and enquiries; never
  auto-replies, bounces or unsubscribes) received in the last 30 days.
- **First response**: for each customer mail of the last 30 days, our first
  answer: the earliest of a ``reply_out`` naming it (In-Reply-To/References,
  read from the Sent folder) and our first email to that customer after it
  (:func:`crm_automation.contact.answered`'s rule). The time between counts
  *working* hours (:class:`crm_automation.contact.WorkingTime`, ``[digest]
  working_hours`` and ``weekdays``), as ``answer_within_hours`` does; mail
  not answered yet is counted as ``unanswered`` and left out of the median.
- **Owner**: the owner field's value without case (``A@x.com`` and ``a@x.com``
  are one owner); customers without one are grouped under ``null``.
- **Stage order** (the funnel's and the tables'): the stage field's
  ``choices`` when it is a ``choice`` field (the order written in
  mappings/customers.toml: 线索, 接洽, 报价, 签约); values outside them, or
  all values of a text field, follow in the order the log first shows them
  (a customer first seen in it, or a move to or from it).
- **Moves** since ``since``: each logged change of the stage field, counted
  by (from, to). **Funnel**: per stage, the customers who entered it since
  then (moved into it, or were first seen in it: ``added``), each counted
  once per stage however often they moved.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import pandas as pd

from crm_automation.app.access import reading
from crm_automation.app.results import JsonObject, utc_text
from crm_automation.app.sales import stale_from, working_time
from crm_automation.errors import ConfigError
from crm_automation.models import FieldType

if TYPE_CHECKING:
    from crm_automation.store.contact import SalesRow
    from crm_automation.store.repo import Store
    from crm_automation.workspace import Workspace

_LOG_TIME = "%Y-%m-%dT%H:%M:%S%z"
WINDOW_DAYS = 30  # replies and first responses are counted over the last 30 days (issue #21)


class StageOrder(enum.StrEnum):
    """Where the order of the stages comes from: the stage field's ``choices``, or the log (first appearance)."""

    CHOICES = "choices"
    LOG = "log"


@dataclass(frozen=True, slots=True)
class Cell:
    """One stage x owner: customers, stale ones, median days in the stage, replies of the last 30 days."""

    stage: str | None
    owner: str | None
    customers: int
    stale: int
    median_days_in_stage: float | None
    replies: int

    def to_json(self) -> JsonObject:
        """One row of ``report pipeline --json``'s ``cells``."""
        return {"stage": self.stage, "owner": self.owner, "customers": self.customers, "stale": self.stale,
                "median_days_in_stage": self.median_days_in_stage, "replies_30d": self.replies}


@dataclass(frozen=True, slots=True)
class OwnerLine:
    """One owner's totals and first responses over the last 30 days (median in working hours)."""

    owner: str | None
    customers: int
    stale: int
    replies: int
    answered: int
    unanswered: int
    median_first_response_hours: float | None

    def to_json(self) -> JsonObject:
        """One row of ``report pipeline --json``'s ``owners``."""
        return {"owner": self.owner, "customers": self.customers, "stale": self.stale, "replies_30d": self.replies,
                "answered_30d": self.answered, "unanswered_30d": self.unanswered,
                "median_first_response_hours": self.median_first_response_hours}


@dataclass(frozen=True, slots=True)
class Move:
    """``count`` logged changes of the stage field from ``from_stage`` to ``to_stage`` (None: an empty cell)."""

    from_stage: str | None
    to_stage: str | None
    count: int

    def to_json(self) -> JsonObject:
        """One row of ``moves``."""
        return {"from": self.from_stage, "to": self.to_stage, "count": self.count}


@dataclass(frozen=True, slots=True)
class FunnelStep:
    """Customers who entered ``stage`` since the report's ``since``; ``added``: of them, first seen in it."""

    stage: str
    entered: int
    added: int

    def to_json(self) -> JsonObject:
        """One row of ``funnel``."""
        return {"stage": self.stage, "entered": self.entered, "added": self.added}


@dataclass(frozen=True, slots=True)
class Pipeline:
    """The pipeline ``at`` a time: cells by stage and owner, owners, and (with ``since``) moves and the funnel."""

    at: datetime
    stages: tuple[str, ...]
    stage_order: StageOrder
    cells: tuple[Cell, ...]
    owners: tuple[OwnerLine, ...]
    since: datetime | None = None
    moves: tuple[Move, ...] = ()
    funnel: tuple[FunnelStep, ...] = ()

    def to_json(self) -> JsonObject:
        """``report pipeline --json``: moves and funnel are null without ``since``."""
        return {"at": utc_text(self.at), "window_days": WINDOW_DAYS, "stages": list(self.stages),
                "stage_order": self.stage_order.value,
                "cells": [c.to_json() for c in self.cells], "owners": [o.to_json() for o in self.owners],
                "since": utc_text(self.since),
                "moves": None if self.since is None else [m.to_json() for m in self.moves],
                "funnel": None if self.since is None else [f.to_json() for f in self.funnel]}


# ------------------------------------------------------------------------------------------------ reading
@dataclass(frozen=True, slots=True)
class Rows:
    """What the store read, as DataFrames (times parsed, stage and owner values as text or None)."""

    customers: pd.DataFrame  # key, stage, owner, first_seen
    contact: pd.DataFrame  # key, last_in, last_out, stage_changed: each customer's latest (NaT: none)
    inbound: pd.DataFrame  # id, key, at, message_id, out_at: customer mail of the window, our first email after it
    named: pd.DataFrame  # message_id, at: messages a reply_out names
    moves: pd.DataFrame  # key, at, old, new: stage changes since ``since`` (empty without)
    sales: list[SalesRow] = dataclasses.field(default_factory=list)  # as read: the stale rule's input


def _times(texts: pd.Series | list[str] | list[str | None]) -> pd.Series:
    """The log's ISO 8601 UTC text (``store.iso``: ``2026-11-27T02:00:00Z``) as aware UTC times, NaT for None.

    The log's one format is parsed with that exact format: 8x faster than
    pandas' general ISO 8601 parser (0.06 s against 0.47 s for 390,000
    times); a value in another ISO form falls back to the general parser.
    """
    values = texts if isinstance(texts, pd.Series) else pd.Series(texts, dtype=object)
    try:
        return pd.Series(pd.to_datetime(values, utc=True, format=_LOG_TIME))
    except ValueError:
        return pd.Series(pd.to_datetime(values, utc=True, format="ISO8601"))


def _texts(values: Iterable[object], *, lower: bool = False) -> pd.Series:
    """Cells as text, stripped, NA when empty (as :mod:`crm_automation.app.sales` reads stage and owner).

    A column holds a few distinct values (stages, owners) over 100,000
    customers: each distinct value is cleaned once (0.02 s, against 0.2 s
    for pandas' string methods over every cell).
    """
    cells = list(values)
    clean: dict[object, str | None] = {}
    for v in set(cells):
        text = "" if v is None else str(v).strip()
        clean[v] = (text.lower() if lower else text) or None
    return pd.Series([clean[v] for v in cells], dtype="string")


def _latest(a: str | None, b: str | None, *, first: bool = False) -> str | None:
    """The later (``first``: the earlier) of two log times, None for none (the log's one ISO form orders as text)."""
    if a is None or b is None:
        return a or b
    return min(a, b) if first else max(a, b)


def read_rows(ws: Workspace, store: Store, now: datetime, since: datetime | None) -> Rows:
    """The pipeline's rows from an open log: a few set-based reads, into DataFrames.

    Every customer with their contact times (``store.sales_rows``: one query,
    four index seeks a customer), the month's customer mail with our first
    email after each (two seeks a mail), the replies naming mail, and the
    stage moves since ``since``.
    """
    roles = ws.mapping.roles
    start = now - timedelta(days=WINDOW_DAYS)
    people = store.sales_rows(None, roles.stage, roles.owner, timed=True)
    customers = pd.DataFrame({
        "key": pd.Series([p[0] for p in people], dtype=object), "stage": _texts(p[2] for p in people),
        "owner": _texts((p[3] for p in people), lower=True), "first_seen": _times([p[4] for p in people])})
    contact = pd.DataFrame({
        "key": customers["key"], "last_in": _times([p[5] for p in people]),
        "last_out": _times([_latest(p[6], p[7]) for p in people]), "stage_changed": _times([p[8] for p in people])})
    mail = store.customer_mail_between(start, now)
    inbound = pd.DataFrame({
        "id": pd.Series([m[0] for m in mail], dtype="int64"), "key": pd.Series([m[1] for m in mail], dtype=object),
        "at": _times([m[2] for m in mail]), "message_id": pd.Series([m[3] for m in mail], dtype=object),
        "out_at": _times([_latest(m[4], m[5], first=True) for m in mail])})
    named = pd.DataFrame(store.named_replies_between(start, now), columns=["message_id", "at"])
    named["at"] = _times(named["at"])
    raw = store.stage_moves_between(roles.stage, since, now) if since is not None and roles.stage else []
    moves = pd.DataFrame({"key": pd.Series([m[0] for m in raw], dtype=object), "at": _times([m[1] for m in raw]),
                          "old": _texts(m[2] for m in raw), "new": _texts(m[3] for m in raw)})
    return Rows(customers, contact, inbound, named, moves, people)


# ------------------------------------------------------------------------------------------------ computing
def _py(values: pd.Series, zone: ZoneInfo) -> list[datetime | None]:
    """Plain datetimes in ``zone`` (None for NaT) for the rules of contact.py, converted in one go.

    Why in the workspace's zone: the rules take each time's local date
    (``astimezone(zone)``), which returns at once for a time already in that
    very zone object: 60,000 customers' conversions are done here in bulk.
    """
    return [None if v is pd.NaT else v for v in values.dt.tz_convert(zone).dt.to_pydatetime()]


def _stale(ws: Workspace, rows: Rows, people: pd.DataFrame, now: datetime) -> pd.Series:
    """Per customer, stale or not, as the stale list finds them (:func:`crm_automation.app.sales.stale_from`).

    One path for the rule, shared with the digests and ``sales.stale``: it
    applies :func:`crm_automation.contact.quiet` only where it can matter
    (a limited stage, quiet since before ``contact.fresh_since``).
    """
    if not ws.mapping.stale_after_days or people.empty:
        return pd.Series(False, index=people.index)
    found = {c.key for c in stale_from(ws, rows.sales, now)}
    return people["key"].isin(found)


def _median(value: object, digits: int = 1) -> float | None:
    """A median as JSON shows it: rounded, None for none (NaN: an empty group, or nobody answered yet)."""
    if not isinstance(value, int | float) or value != value:  # NaN: the one value unequal to itself
        return None
    return round(float(value), digits)


def _count(value: object) -> int:
    return int(value) if isinstance(value, int | float) and value == value else 0


def _first_responses(ws: Workspace, rows: Rows, owner_of: pd.Series) -> pd.DataFrame:
    """Per customer mail of the window: owner, answered, working hours to our first answer (NaN: none yet).

    Our first answer: the earlier of our first email to that customer after
    the mail (read with it: ``out_at``) and the first reply naming it.
    """
    mail = rows.inbound[rows.inbound["key"].isin(owner_of.index)]
    if mail.empty:
        return pd.DataFrame({"owner": pd.Series(dtype=object), "answered": pd.Series(dtype=bool),
                             "hours": pd.Series(dtype=float)})
    first_named = rows.named.groupby("message_id")["at"].min()
    named_at = pd.to_datetime(mail["message_id"].map(first_named.to_dict()), utc=True)
    answer = pd.concat([mail["out_at"], named_at], axis=1).min(axis=1)
    working = working_time(ws)
    hours = [working.hours_between(a, b) if a is not None and b is not None else float("nan")
             for a, b in zip(_py(mail["at"], working.zone), _py(answer, working.zone), strict=True)]
    return pd.DataFrame({"owner": mail["key"].map(owner_of).to_numpy(), "answered": answer.notna().to_numpy(),
                         "hours": hours})


def stage_order(ws: Workspace, first_shown: pd.Series) -> tuple[tuple[str, ...], StageOrder]:
    """The stages in order: the stage field's choices, then other values by first appearance (``first_shown``)."""
    roles = ws.mapping.roles
    spec = ws.mapping.fields.get(roles.stage) if roles.stage else None
    choices = tuple(spec.choices) if spec is not None and spec.type is FieldType.CHOICE else ()
    rest = first_shown[~first_shown.index.isin(choices)]
    rest = rest.sort_index(kind="stable").sort_values(kind="stable")
    return choices + tuple(str(s) for s in rest.index), StageOrder.CHOICES if choices else StageOrder.LOG


def _order_key(stages: tuple[str, ...]) -> dict[str | None, int]:
    return {s: i for i, s in enumerate(stages)}


def compute(ws: Workspace, rows: Rows, now: datetime, since: datetime | None) -> Pipeline:
    """The :class:`Pipeline` from rows already read (pure: no I/O; ``now`` given)."""
    people = rows.customers.merge(rows.contact, on="key", how="left")
    people["stale"] = _stale(ws, rows, people, now)
    entered = people["stage_changed"].fillna(people["first_seen"])
    people["days"] = ((pd.Timestamp(now) - entered).dt.total_seconds() / 86400).clip(lower=0)
    replies = rows.inbound.groupby("key").size()
    people["replies"] = people["key"].map(replies).fillna(0).astype(int)

    shown = [people.groupby("stage")["first_seen"].min()]
    if not rows.moves.empty:
        shown += [rows.moves.groupby(col)["at"].min() for col in ("old", "new")]
    first_shown = pd.concat(shown).groupby(level=0).min() if shown else pd.Series(dtype=object)
    stages, order_from = stage_order(ws, first_shown)
    rank = _order_key(stages)

    by_cell = people.groupby(["stage", "owner"], dropna=False).agg(
        customers=("key", "size"), stale=("stale", "sum"), days=("days", "median"), replies=("replies", "sum"))
    cells = [Cell(_none(r["stage"]), _none(r["owner"]), _count(r["customers"]), _count(r["stale"]),
                  _median(r["days"]), _count(r["replies"])) for r in by_cell.reset_index().to_dict("records")]
    cells.sort(key=lambda c: (rank.get(c.stage, len(rank)), c.stage is None, c.owner is None, c.owner or ""))

    owner_of = people.set_index("key")["owner"]
    firsts = _first_responses(ws, rows, owner_of)
    by_owner = people.groupby("owner", dropna=False).agg(
        customers=("key", "size"), stale=("stale", "sum"), replies=("replies", "sum"))
    answers = firsts.groupby("owner", dropna=False).agg(
        answered=("answered", "sum"), mail=("answered", "size"), hours=("hours", "median"))
    answered_by = {_none(a["owner"]): a for a in answers.reset_index().to_dict("records")}
    owners = []
    for r in by_owner.reset_index().to_dict("records"):
        owner = _none(r["owner"])
        a = answered_by.get(owner, {})
        answered = _count(a.get("answered"))
        owners.append(OwnerLine(owner, _count(r["customers"]), _count(r["stale"]), _count(r["replies"]), answered,
                                _count(a.get("mail")) - answered, _median(a.get("hours"))))
    owners.sort(key=lambda o: (o.owner is None, o.owner or ""))

    moves: list[Move] = []
    funnel: list[FunnelStep] = []
    if since is not None:
        moves, funnel = _moves(rows, people, since, rank, stages)
    return Pipeline(now, stages, order_from, tuple(cells), tuple(owners), since, tuple(moves), tuple(funnel))


def _none(value: object) -> str | None:
    """A stage or owner from a group-by key: text, or None for a missing one (None, NaN or NA)."""
    return value if isinstance(value, str) else None


def _moves(rows: Rows, people: pd.DataFrame, since: datetime, rank: dict[str | None, int],
           stages: tuple[str, ...]) -> tuple[list[Move], list[FunnelStep]]:
    m = rows.moves
    counts = m.groupby(["old", "new"], dropna=False).size().rename("n").reset_index()
    moves = [Move(_none(r["old"]), _none(r["new"]), _count(r["n"])) for r in counts.to_dict("records")]
    end = len(rank)
    moves.sort(key=lambda x: (rank.get(x.from_stage, end), x.from_stage is None, x.from_stage or "",
                              rank.get(x.to_stage, end), x.to_stage is None, x.to_stage or ""))
    # customers first seen since then: the stage they came in with (the old value of their first move, else now's)
    new = people[people["first_seen"] >= pd.Timestamp(since)][["key", "stage"]]
    first_old = m.sort_values("at").drop_duplicates("key").set_index("key")["old"]
    new = new.assign(stage=new["key"].map(first_old).where(new["key"].isin(first_old.index), new["stage"]))
    came = pd.concat([m[["key", "new"]].rename(columns={"new": "stage"}), new])
    entered = came.dropna(subset=["stage"]).drop_duplicates().groupby("stage")["key"].size()
    added = new.dropna(subset=["stage"]).groupby("stage")["key"].size()
    funnel = [FunnelStep(s, int(entered.get(s, 0)), int(added.get(s, 0))) for s in stages]
    return moves, funnel


def pipeline(ws: Workspace, now: datetime, since: datetime | None = None) -> Pipeline:
    """The pipeline ``now`` by stage and owner; with ``since``, the moves between stages since then.

    Read-only (works beside a running worker). Raises ConfigError when
    ``since`` is after ``now``.
    """
    if since is not None and since > now:
        raise ConfigError(f"report pipeline: --since {utc_text(since)} is after now ({utc_text(now)})",
                          hint="give a date in the past, e.g. --since 2026-11-01")
    with reading(ws) as store:
        rows = read_rows(ws, store, now, since)
    return compute(ws, rows, now, since)


__all__ = [
    "WINDOW_DAYS",
    "Cell",
    "FunnelStep",
    "Move",
    "OwnerLine",
    "Pipeline",
    "Rows",
    "StageOrder",
    "compute",
    "pipeline",
    "read_rows",
    "stage_order",
]
