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
from typing import Protocol

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
    def data(self) -> MappingOf[str, object]:
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
    value: object


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
    new_field = mapping.key
    cols = _key_columns(old_field, mapping, data, customers)
    if isinstance(cols, str):
        return RekeyPlan(old_field, new_field, "", (), (), (cols,))
    moves, rows_of_old, problems = _match_rows(old_field, mapping, data, customers, cols)
    if old_field not in mapping.fields:
        problems += _moved_rows(mapping, data, customers, moves)
    problems += _left_over(old_field, mapping, data.source, customers, moves, rows_of_old)
    kept = tuple(sorted(c.key for c in customers.values() if not c.present and c.key not in rows_of_old))
    return RekeyPlan(old_field, new_field, cols.by, tuple(moves), kept, tuple(problems))


@dataclass(frozen=True, slots=True)
class _KeyColumns:
    """Per sheet data row: the customer it is taken for (``old``, None: not known) and its new key, converted.

    ``by`` says how rows were matched, for the plan's report.
    """

    old: list[str | None]
    raw_new: list[object]
    new: list[object]
    new_errors: dict[int, str]
    by: str


def _key_columns(old_field: str, mapping: Mapping, data: SheetData,
                 customers: MappingOf[str, KnownCustomer]) -> _KeyColumns | str:
    """Read the new key column, and the old key column or the rows of the last sync; the refusal when one is missing.

    Kept apart from the matching so the one decision of the module docstring
    (the old key's value while it is mapped, else the row number) is made in
    one place.
    """
    from crm_automation.fieldtypes import convert_column

    new_spec = mapping.fields[mapping.key]
    headers = _headers(data)
    found = ", ".join(f"\"{h}\"" for h in data.headers if h) or "none"
    new_header = headers.get(new_spec.column.strip())
    if new_header is None:
        return (f"{data.source}: the new key column \"{new_spec.column}\" (field {mapping.key}) is not in the header "
                f"row (headers found: {found}); expected it to hold each customer's {mapping.key}")
    raw_new = data.column(new_header)
    new_values, new_errors = convert_column(new_spec, raw_new)
    old_spec = mapping.fields.get(old_field)
    if old_spec is None:
        by_row = {c.row: c.key for c in customers.values() if c.present}
        return _KeyColumns([by_row.get(row) for row in data.row_numbers], raw_new, new_values, new_errors,
                           f"sheet row number (field {old_field} is no longer mapped)")
    old_header = headers.get(old_spec.column.strip())
    if old_header is None:
        return (f"{data.source}: the old key column \"{old_spec.column}\" (field {old_field}) is not in the header "
                f"row (headers found: {found}); expected it, to find each customer's row")
    old_values, _ = convert_column(old_spec, data.column(old_header))
    return _KeyColumns([None if v is None else str(v) for v in old_values], raw_new, new_values, new_errors,
                       f"the old key column \"{old_spec.column}\" (field {old_field})")


def _match_rows(old_field: str, mapping: Mapping, data: SheetData, customers: MappingOf[str, KnownCustomer],
                cols: _KeyColumns) -> tuple[list[Move], dict[str, int], list[str]]:
    """(moves, customer -> its row, problems): each known customer's row gives its new key, once and to it alone."""
    new_field = mapping.key
    column = mapping.fields[new_field].column
    src = data.source
    problems: list[str] = []
    rows_of_old: dict[str, int] = {}
    owner_of_new: dict[str, tuple[int, str]] = {}
    moves: list[Move] = []
    for i, row in enumerate(data.row_numbers):
        old = cols.old[i]
        if old is None or old not in customers:
            continue  # a row the log does not know yet: a new customer at the next sync, as it would have been
        if old in rows_of_old:
            problems.append(f"{src} rows {rows_of_old[old]} and {row}: both are customer {old!r} ({old_field}); "
                            f"the log has one customer for them (expected each {old_field} once: delete or "
                            f"correct the duplicate row)")
            continue
        rows_of_old[old] = row
        new = cols.new[i]
        if new is None:
            got = "is empty" if i not in cols.new_errors else f"{cols.raw_new[i]!r} {cols.new_errors[i]}"
            problems.append(f"{src} row {row}, \"{column}\" {got}: customer {old!r} would have no "
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
    return moves, rows_of_old, problems


def _left_over(old_field: str, mapping: Mapping, src: str, customers: MappingOf[str, KnownCustomer],
               moves: list[Move], rows_of_old: dict[str, int]) -> list[str]:
    """Customers of the last sync no row was matched to, and new keys that are another customer's key already.

    Either would lose a customer's history or merge two, so the re-key is refused (all or nothing).
    """
    new_field = mapping.key
    by_key = old_field in mapping.fields  # matched by the old key's column, else by row number
    problems: list[str] = []
    for c in sorted(customers.values(), key=lambda c: c.row):
        if c.present and c.key not in rows_of_old:
            how = f"no row with {old_field} {c.key!r}" if by_key else f"row {c.row} was not matched"
            problems.append(f"{src}: customer {c.key!r} (row {c.row} at the last sync) is not in the sheet ({how}); "
                            f"expected every customer of the last sync (if the row was deleted on purpose: set key "
                            f"= \"{old_field}\" back, run `crm-automation sync`, then set it again and re-key)")
    moving = {m.old for m in moves}
    for m in moves:
        if m.new != m.old and m.new in customers and m.new not in moving:
            problems.append(f"{src} row {m.row}: {new_field} {m.new!r} of customer {m.old!r} is already the key of "
                            f"another customer in the log (expected a key no other customer has)")
    return problems


def _moved_rows(mapping: Mapping, data: SheetData, customers: MappingOf[str, KnownCustomer],
                moves: list[Move]) -> list[str]:
    """Matched by row number: refuse a row none of whose other fields agree with the customer it is taken for."""
    from crm_automation.fieldtypes import convert_column

    headers = _headers(data)
    columns: dict[str, list[object]] = {}
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
