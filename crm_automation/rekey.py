"""A changed mapping key is never a new customer (issue #17, item 3): the check, and the re-key plan.

Why: the log knows each customer by the value of the mapping's ``key`` field
(``customers.key``, and ``customer_key`` in activities, sends, quarantine).
When an admin changes ``key = "email"`` to ``key = "customer_id"``, a sync
would find none of the new keys in the log: every customer "removed" and
"added", and the ``new`` campaigns mail them all again. So the log records
the key field it was built on (``meta``, see
:meth:`~crm_automation.store.customers.CustomerLog.key_field`); sync and send
stop while the mapping names another (:func:`key_change`), and
``crm-automation rekey`` moves every customer's history to its new key in one
transaction (:func:`plan_rekey` decides, the store applies).

Pure: values in, values out; no I/O, no clock.

How a sheet row finds its customer in the log (the decision the issue asked
for): by the **old key field's value** when the new mapping still maps that
field (moving from ``email`` to ``customer_id`` usually keeps the email
column), because it is the only identity that does not depend on where a row
is: people sort, insert and delete rows between two syncs. Only when the old
key field is no longer mapped is the **sheet row number** used (the row each
customer had at the last sync), with a guard: a matched row none of whose
other fields agree with the log is refused as "rows moved since the last
sync". Either way a conflict refuses the whole re-key, with every problem
listed, so a half-moved log can never exist.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping as MappingOf
from dataclasses import dataclass
from typing import Any, Protocol

from crm_automation.errors import ConfigError
from crm_automation.mapping import Mapping
from crm_automation.models import SheetData

REKEY_COMMAND = "crm-automation rekey"


class KnownCustomer(Protocol):
    """A customer as the log knows it (``StoredCustomer`` fits)."""

    @property
    def key(self) -> str:
        """The customer's key in the log."""
        ...

    @property
    def row(self) -> int:
        """Its sheet row at the last sync."""
        ...

    @property
    def data(self) -> dict[str, Any]:
        """Its mapped fields at the last sync."""
        ...

    @property
    def present(self) -> bool:
        """Whether it was in the sheet at the last sync."""
        ...


def key_change(recorded: str | None, mapping: Mapping) -> ConfigError | None:
    """The error that stops sync and send while the mapping's key is not the field the log is keyed by.

    ``recorded`` is None for a log that has not recorded its key yet (it
    adopts one at its next sync, :func:`infer_key_field`).
    """
    if recorded is None or recorded == mapping.key:
        return None
    return ConfigError(
        f"{mapping.path}: key = \"{mapping.key}\", but the activity log's customers are keyed by "
        f"\"{recorded}\" (the key it was built on): synced with the new key, every customer would look new and "
        f"campaigns would mail them again. Nothing was synced and nothing is sent until the log is re-keyed: "
        f"run `{REKEY_COMMAND} --dry-run`, then `{REKEY_COMMAND}`",
        hint=f"`{REKEY_COMMAND}` gives each customer its \"{mapping.key}\" from the sheet and keeps its history; "
             f"or set key = \"{recorded}\" back in {mapping.path.name}")


def infer_key_field(current: str, customers: Iterable[KnownCustomer]) -> str:
    """The key field a log built before it recorded one was keyed by: ``current``, unless the data says otherwise.

    Why: an existing log adopts the mapping's key once (issue #17). If that
    mapping was edited in the same upgrade, adopting it blindly would hide
    exactly the change this check exists for. A customer's key is the
    string of its key field's value, so the field whose values equal the
    keys of every customer is the one the log was built on; ``current`` wins
    whenever it fits (or nothing else does).
    """
    candidates: set[str] | None = None
    for c in customers:
        fits = {f for f, v in c.data.items() if v is not None and str(v) == c.key}
        if current in fits:
            return current
        candidates = fits if candidates is None else candidates & fits
        if not candidates:
            return current
    if not candidates:
        return current
    return sorted(candidates)[0]


@dataclass(frozen=True, slots=True)
class Move:
    """One customer's new key: ``value`` is the new key field's value as the mapping converts it."""

    old: str
    new: str
    row: int
    value: Any


@dataclass(frozen=True, slots=True)
class RekeyPlan:
    """What ``rekey`` would do; nothing is done while ``problems`` is not empty.

    ``kept``: customers who were no longer in the sheet at the last sync
    and have no row now; they keep their old key (their history stays
    theirs; a row that comes back with a new key would be a new customer).
    """

    old_field: str
    new_field: str
    by: str
    moves: tuple[Move, ...]
    kept: tuple[str, ...]
    problems: tuple[str, ...]

    @property
    def unchanged(self) -> int:
        """Customers whose new key is the same text as the old one."""
        return sum(m.old == m.new for m in self.moves)


def _headers(data: SheetData) -> dict[str, str]:
    return {h.strip(): h for h in data.headers if h}


def plan_rekey(old_field: str, mapping: Mapping, data: SheetData,
               customers: MappingOf[str, KnownCustomer]) -> RekeyPlan:
    """Match each sheet row to its customer in the log and give it the new key (see the module docstring).

    Refused (``problems``): the new key column is not in the sheet; a row
    of a known customer has no valid new key; two customers would get the
    same new key; two rows claim one customer; a customer present at the
    last sync has no row now; a new key is already another customer's key;
    (by row number) a row that does not look like the customer it replaces.
    """
    from crm_automation.fieldtypes import convert_column

    new_field = mapping.key
    new_spec = mapping.fields[new_field]
    headers = _headers(data)
    found = ", ".join(f"\"{h}\"" for h in data.headers if h) or "none"
    src = data.source

    def refused(problem: str, by: str = "") -> RekeyPlan:
        return RekeyPlan(old_field, new_field, by, (), (), (problem,))

    new_header = headers.get(new_spec.column.strip())
    if new_header is None:
        return refused(f"{src}: the new key column \"{new_spec.column}\" (field {new_field}) is not in the header row "
                       f"(headers found: {found}); expected it to hold each customer's {new_field}")
    raw_new = data.column(new_header)
    new_values, new_errors = convert_column(new_spec, raw_new)
    old_spec = mapping.fields.get(old_field)
    by_row: dict[int, str] = {}
    old_values: list[Any] = []
    if old_spec is not None:
        old_header = headers.get(old_spec.column.strip())
        if old_header is None:
            return refused(f"{src}: the old key column \"{old_spec.column}\" (field {old_field}) is not in the header "
                           f"row (headers found: {found}); expected it, to find each customer's row")
        old_values, _ = convert_column(old_spec, data.column(old_header))
        by = f"the old key column \"{old_spec.column}\" (field {old_field})"
    else:
        by_row = {c.row: c.key for c in customers.values() if c.present}
        by = f"sheet row number (field {old_field} is no longer mapped)"

    problems: list[str] = []
    rows_of_old: dict[str, int] = {}
    owner_of_new: dict[str, tuple[int, str]] = {}
    moves: list[Move] = []
    for i, row in enumerate(data.row_numbers):
        if old_spec is not None:
            v = old_values[i]
            old = None if v is None else str(v)
        else:
            old = by_row.get(row)
        if old is None or old not in customers:
            continue  # a row the log does not know yet: a new customer at the next sync, as it would have been
        if old in rows_of_old:
            problems.append(f"{src} rows {rows_of_old[old]} and {row}: both are customer {old!r} ({old_field}); "
                            f"the log has one customer for them (expected each {old_field} once: delete or "
                            f"correct the duplicate row)")
            continue
        rows_of_old[old] = row
        new = new_values[i]
        if new is None:
            raw = raw_new[i]
            got = "is empty" if i not in new_errors else f"{raw!r} {new_errors[i]}"
            problems.append(f"{src} row {row}, \"{new_spec.column}\" {got}: customer {old!r} would have no "
                            f"{new_field} (expected a value: the new key)")
            continue
        new_text = str(new)
        if new_text in owner_of_new:
            first_row, first_old = owner_of_new[new_text]
            problems.append(f"{src} rows {first_row} and {row}: customers {first_old!r} and {old!r} would both get "
                            f"{new_field} {new_text!r} (expected one customer per {new_field})")
            continue
        owner_of_new[new_text] = (row, old)
        moves.append(Move(old, new_text, row, new))
    if old_spec is None:
        problems += _moved_rows(mapping, data, customers, moves)
    for c in sorted(customers.values(), key=lambda c: c.row):
        if c.present and c.key not in rows_of_old:
            how = f"no row with {old_field} {c.key!r}" if old_spec is not None else f"row {c.row} was not matched"
            problems.append(f"{src}: customer {c.key!r} (row {c.row} at the last sync) is not in the sheet ({how}); "
                            f"expected every customer of the last sync (if the row was deleted on purpose: set key "
                            f"= \"{old_field}\" back, run `crm-automation sync`, then set it again and re-key)")
    moving = {m.old for m in moves}
    for m in moves:
        if m.new != m.old and m.new in customers and m.new not in moving:
            problems.append(f"{src} row {m.row}: {new_field} {m.new!r} of customer {m.old!r} is already the key of "
                            f"another customer in the log (expected a key no other customer has)")
    kept = tuple(sorted(c.key for c in customers.values() if not c.present and c.key not in rows_of_old))
    return RekeyPlan(old_field, new_field, by, tuple(moves), kept, tuple(problems))


def _moved_rows(mapping: Mapping, data: SheetData, customers: MappingOf[str, KnownCustomer],
                moves: list[Move]) -> list[str]:
    """Matched by row number: refuse a row none of whose other fields agree with the customer it is taken for."""
    from crm_automation.fieldtypes import convert_column

    headers = _headers(data)
    columns: dict[str, list[Any]] = {}
    for name, spec in mapping.fields.items():
        h = headers.get(spec.column.strip())
        if name != mapping.key and h is not None:
            columns[name] = convert_column(spec, data.column(h))[0]
    index = {row: i for i, row in enumerate(data.row_numbers)}
    problems = []
    for m in moves:
        c = customers[m.old]
        i = index[m.row]
        pairs = [(f, c.data.get(f), col[i]) for f, col in columns.items()
                 if c.data.get(f) is not None and col[i] is not None]
        if pairs and all(a != b for _, a, b in pairs):
            f, a, b = pairs[0]
            problems.append(f"{data.source} row {m.row}: taken for customer {m.old!r} by its row number, but none of "
                            f"its fields agree with the log ({f}: the log has {a!r}, the row {b!r}); expected the "
                            f"rows where they were at the last sync (were rows sorted or inserted since?)")
    return problems
