"""The owner digest's rules (issue #21): which day a pass plans, where a digest's window starts, who may be mailed.

Pure: values in, values out; the time comes in as ``now``. The send pass
(:mod:`crm_automation.send.digests`) and the digest's contents
(:mod:`crm_automation.app.digest`) ask these, and ``check``/``report`` name
the owners :func:`owner_problem` refuses.

- A digest is planned once per owner and local day, by the first pass at or
  after ``[digest] at`` (workspace time) on one of ``[digest] weekdays``:
  a worker that was down at 08:30 sends the day's digests when it comes back
  the same day, and none for the days it missed (the next digest covers them:
  its window starts at the owner's last digest that went out).
- A first digest (no earlier one sent) covers the time since the previous
  workday's digest moment: Monday's covers the weekend.
- The owner is the mapped ``owner`` role's value, an address, compared without
  case. One that is not an address, or is on the suppression list, is never
  mailed (a digest is mail to the team, but a suppressed address asked for no
  mail, and a bounced one would bounce again).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from crm_automation.fieldtypes import address_problem


def owner_address(value: object) -> str | None:
    """The owner field's value as the digest's key: the text, trimmed and lower-cased; None for an empty cell."""
    if value is None:
        return None
    text = str(value).strip().lower()
    return text or None


def digest_day(now: datetime, tz: ZoneInfo, weekdays: Collection[int], at_minute: int) -> date | None:
    """The local day whose digests are due ``now``, or None (not a digest weekday, or before ``at``)."""
    local = now.astimezone(tz)
    if local.weekday() not in weekdays or local.hour * 60 + local.minute < at_minute:
        return None
    return local.date()


def digest_moment(day: date, tz: ZoneInfo, at_minute: int) -> datetime:
    """``[digest] at`` on ``day``, workspace time (aware)."""
    return datetime.combine(day, time(at_minute // 60, at_minute % 60), tzinfo=tz)


def first_window_start(day: date, tz: ZoneInfo, weekdays: Collection[int], at_minute: int) -> datetime:
    """Where an owner's first digest's window starts: the digest moment of the workday before ``day``.

    ``weekdays`` is never empty (config.py refuses it), so a week back always finds one.
    """
    for back in range(1, 8):
        d = day - timedelta(days=back)
        if d.weekday() in weekdays:
            return digest_moment(d, tz, at_minute)
    return digest_moment(day - timedelta(days=7), tz, at_minute)


def owner_problem(owner: str, suppressed: Collection[str]) -> str | None:
    """Why an owner's digest must not be mailed, to follow the address (``is not an address ...``), or None.

    ``owner`` as :func:`owner_address` gives it; ``suppressed``: the
    suppression list's addresses (lower-case). The address rule is the
    sheet's own (:func:`crm_automation.fieldtypes.address_problem`), so an
    owner column typed ``text`` is held to what an ``email`` column would be.
    """
    why = address_problem(owner)
    if why is not None:
        return why  # "is not an address (expected name@domain...)"
    if owner in suppressed:
        return "is on the suppression list"
    return None


@dataclass(frozen=True, slots=True)
class OwnerProblem:
    """An owner value that is never mailed a digest, why, and the keys of the customers it owns."""

    owner: str
    problem: str
    customers: tuple[str, ...]

    @property
    def line(self) -> str:
        """``owner 'bob@' is not an address (...): no digest is mailed to it; owns 2 customer(s): a, b``."""
        shown = ", ".join(self.customers[:10]) + (f" and {len(self.customers) - 10} more"
                                                  if len(self.customers) > 10 else "")
        return (f"owner {self.owner!r} {self.problem}: no digest is mailed to it; owns {len(self.customers)} "
                f"customer(s): {shown}")

    def to_json(self) -> dict[str, str | list[str]]:
        """The owner value, why, and the keys of its customers."""
        return {"owner": self.owner, "problem": self.problem, "customers": list(self.customers)}


def owner_problems(owned: Iterable[tuple[str, object]], suppressed: Collection[str]) -> tuple[OwnerProblem, ...]:
    """The owners :func:`owner_problem` refuses, by owner; ``owned``: (customer key, owner field's value)."""
    by_owner: dict[str, list[str]] = {}
    for key, value in owned:
        owner = owner_address(value)
        if owner is not None:
            by_owner.setdefault(owner, []).append(key)
    out = []
    for owner, keys in sorted(by_owner.items()):
        why = owner_problem(owner, suppressed)
        if why is not None:
            out.append(OwnerProblem(owner, why, tuple(keys)))
    return tuple(out)
