"""mappings/customers.toml and mappings/campaigns.toml (SPEC §4, §5).

``Mapping.apply`` turns the raw sheet into :class:`Customer` values or
:class:`RowError` reports. Columns are found by header name, never by
position, because people reorder and insert columns. Each row's raw mapped
cells are hashed: a row whose hash was already seen at the last sync is not
validated again, which keeps a re-sync of an unchanged 100,000-row sheet cheap.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import marshal
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Literal, cast
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from crm_automation.errors import ConfigError
from crm_automation.models import (
    Customer,
    CustomerColumns,
    FieldSpec,
    FieldType,
    OnInvalid,
    RowError,
    SheetData,
    Trigger,
)
from crm_automation.sheets.base import GridData
from crm_automation.status_words import LANGUAGES, expected_languages

CUSTOMERS_FILE = "customers.toml"
CAMPAIGNS_FILE = "campaigns.toml"
WRITEBACK_NAMES = ("last_sent", "last_reply", "email_status", "last_contact", "days_quiet")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _FieldModel(_Strict):
    column: str = Field(min_length=1)
    type: FieldType = FieldType.TEXT
    required: bool = False
    choices: tuple[str, ...] = ()
    region: str | None = None
    # None: "reject_row" for the key and required fields, "blank" for the others (issue #11)
    on_invalid: Literal["reject_row", "blank"] | None = None


RoleName = Literal["email", "name", "owner", "stage"]


class _CustomersModel(_Strict):
    key: str
    fields: dict[str, _FieldModel]
    # the worker's columns, plus ``language``: the words and dates written into them (default: the workspace's)
    writeback: dict[Literal["last_sent", "last_reply", "email_status", "last_contact", "days_quiet", "language"],
                    str] = {}
    # which field plays each role the product relies on (issue #18); "" says no field plays it
    roles: dict[RoleName, str] = {}
    # stage value -> days without contact after which a customer in that stage is stale (issue #21); checked by
    # hand in load_mapping (pydantic would read "7" or true as a number of days)
    stale_after_days: dict[str, object] = {}


_ID = r"^[A-Za-z0-9_.-]+$"


class _FollowUp(_Strict):
    after_days: float = Field(gt=0)
    template: str = Field(min_length=1)
    id: str | None = Field(default=None, min_length=1, pattern=_ID)
    renamed_from: str | None = Field(default=None, min_length=1)
    resend: bool = False


class _CampaignModel(_Strict):
    id: str = Field(min_length=1, pattern=_ID)
    template: str = Field(min_length=1)
    step_id: str | None = Field(default=None, min_length=1, pattern=_ID)
    renamed_from: str | None = Field(default=None, min_length=1, pattern=_ID)
    resend: bool = False
    trigger: Literal["new", "change", "at"]
    where: dict[str, str | list[str] | bool | int | float] = {}
    follow_up: tuple[_FollowUp, ...] = ()
    stop_on: tuple[Literal["reply", "bounce", "unsubscribe"], ...] = ("reply", "bounce", "unsubscribe")
    field: str | None = None
    to: str | int | float | bool | None = None
    at: str | None = None
    include_existing: bool = False
    skip_if_already_wrote: bool | None = None
    enabled: bool = True
    # strict: "yes" or 1 is refused with the type expected, not read as true (issue #19; off is the safe default)
    track_clicks: bool = Field(default=False, strict=True)
    track_opens: bool = Field(default=False, strict=True)
    account: str | None = Field(default=None, min_length=1)  # issue #20 part 3: the SMTP account it always uses

    @field_validator("at")
    @classmethod
    def _at(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            datetime.fromisoformat(v)
        except ValueError:
            msg = f"{v!r} is not a date and time (expected e.g. \"2026-12-20T10:00\", local time)"
            raise ValueError(msg) from None
        return v


class _CampaignsModel(_Strict):
    campaign: tuple[_CampaignModel, ...] = ()


@dataclass(frozen=True, slots=True)
class Step:
    """One email of a campaign: step 0 is the first, 1.. the follow-ups (``number`` is its place now).

    A step is known by its :attr:`key`, not by its place (issue #17): the
    ``id`` the admin gave it, else its template's name. Sends are recorded
    under that key, so inserting, removing or reordering steps never makes a
    customer's earlier email look like another step. ``renamed_from`` says
    that this step is one that used to have another key (its sends count as
    this step's); ``resend`` says that a new step appearing while another
    disappeared is really new (see :mod:`crm_automation.edits`).
    """

    number: int
    template: str
    after_days: float = 0.0
    id: str | None = None
    renamed_from: str | None = None
    resend: bool = False

    @property
    def key(self) -> str:
        """The step's stable identity: its ``id``, else its template's name."""
        return self.id or self.template


@dataclass(frozen=True, slots=True)
class Campaign:
    """A validated campaign (SPEC §5). ``at`` is aware UTC."""

    id: str
    trigger: Trigger
    steps: tuple[Step, ...]
    where: dict[str, tuple[str, ...]]
    stop_on: frozenset[str]
    field: str | None = None
    to: str | None = None
    at: datetime | None = None
    include_existing: bool = False
    enabled: bool = True
    # ``new`` campaigns: a lead whose mail is already in the log (an enquiry before they were added to the
    # sheet) is not sent the first email as if they had never written (issue #9).
    skip_if_already_wrote: bool = True
    # issue #17: this campaign used to be called ``renamed_from`` (it inherits that id's sends); ``resend``: it is a
    # new campaign even though customers already received its templates from a campaign no longer in the file.
    renamed_from: str | None = None
    resend: bool = False
    # issue #19: links rewritten to ``serve`` (``/c/{token}/{n}``) and an open pixel; off by default, and only with
    # ``[serve] public_url`` (see :mod:`crm_automation.tracking`)
    track_clicks: bool = False
    track_opens: bool = False
    # issue #20 part 3: ``[[outbound.accounts]]`` name (``"default"``: ``[outbound]``'s own) every send of it goes
    # through; None: the customer's account by the rule of :mod:`crm_automation.send.accounts`
    account: str | None = None

    def step(self, key: str) -> Step | None:
        """The step known by ``key`` (see :attr:`Step.key`), or None when the campaign no longer has it."""
        return next((s for s in self.steps if s.key == key), None)


@dataclass(frozen=True, slots=True)
class BlankedCell:
    """A cell of an ``on_invalid = "blank"`` field that failed: its row was kept with ``field`` empty (issue #11).

    Shown apart from rejected rows (``kept with phone blank: <the row error>``)
    because it is not a failed item: the customer is in the log and can be mailed.
    """

    field: str
    error: RowError

    def __str__(self) -> str:
        return f"kept with {self.field} blank: {self.error}"


@dataclass(frozen=True, slots=True)
class Roles:
    """Which mapped field plays each part the product relies on (``[roles]``, issue #18); None: no field does.

    Why a table and not field names: "owner" used to be a magic name (the
    owner notification went to ``customer.owner``), "name" too (the To:
    display name), and a team whose sheet calls these ``manager`` or
    ``contact`` had to rename its fields. Each role defaults to the field of
    that very name when the mapping has one (:func:`default_roles`), so a
    workspace without ``[roles]`` works as before.

    * ``email``: the address campaign emails go to; default: the key when it
      is an email field, else the first email field that is not the owner's.
    * ``name``: the customer's name in the To: header, the owner's note and
      rows added for new senders.
    * ``owner``: the address told of a customer's reply (``notify_owner``);
      never taken for the customer's own address.
    * ``stage``: where the customer is in the pipeline (the coming pipeline
      report and owner digests read it).
    """

    email: str | None = None
    name: str | None = None
    owner: str | None = None
    stage: str | None = None

    def get(self, role: RoleName) -> str | None:
        """The field playing ``role`` (None: none does)."""
        return {"email": self.email, "name": self.name, "owner": self.owner, "stage": self.stage}[role]


def default_roles(key: str, fields: dict[str, FieldSpec], declared: dict[str, str | None] | None = None) -> Roles:
    """The roles with the ``declared`` ones applied, the others by today's field names (see :class:`Roles`)."""
    declared = declared or {}

    def pick(role: str) -> str | None:
        return declared.get(role, role if role in fields else None)

    owner = pick("owner")
    if "email" in declared:
        email = declared["email"]
    elif key in fields and fields[key].type is FieldType.EMAIL:
        email = key
    else:
        email = next((f.name for f in fields.values() if f.type is FieldType.EMAIL and f.name != owner), None)
    return Roles(email=email, name=pick("name"), owner=owner, stage=pick("stage"))


_DEFAULT_ROLES = Roles()  # a Mapping built without roles takes default_roles (the identity is the mark)


@dataclass(slots=True)
class MappingResult:
    """What one pass over the sheet found.

    ``customers`` are rows validated now (new or changed since the last
    sync); ``unchanged`` are keys of rows whose raw cells hash the same as
    last time (not validated again); ``hashes`` maps every good key to its
    hash, except rows kept with a blanked cell: they have none, so they are
    validated, and their cells reported, again at every sync until fixed.
    ``errors`` reject rows; ``blanked`` are cells emptied in rows that were kept.
    ``rejected_rows`` counts the rows ``errors`` reject: a row with three bad
    cells is three errors and one rejected row (issue #17).
    """

    customers: Sequence[Customer] = field(default_factory=list)
    unchanged: dict[str, int] = field(default_factory=dict)
    errors: list[RowError] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)
    rejected_keys: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    blanked: list[BlankedCell] = field(default_factory=list)
    rejected_rows: int = 0


@dataclass(frozen=True, slots=True)
class _Pending:
    """The cells of one ``apply`` to validate now, column by column, as :meth:`Mapping._convert_columns` left them.

    ``items`` are (field, spec, header) of the mapped columns found; ``values``
    the raw cells and ``converted`` the converted ones of the rows not skipped
    by digest; ``bad`` and ``blanked`` {row position: {column index: reason}}.
    """

    items: list[tuple[str, FieldSpec, str]]
    values: list[list[object]]
    converted: list[list[object]]
    bad: dict[int, dict[int, str]]
    blanked: dict[int, dict[int, str]]
    key_idx: int


@dataclass(frozen=True, slots=True)
class Mapping:
    """The customer mapping: which column feeds which field, and the key."""

    path: Path
    key: str
    fields: dict[str, FieldSpec]
    writeback: dict[str, str]
    writeback_language: str | None = None  # [writeback] language; None: the workspace's ([workspace] language)
    roles: Roles = _DEFAULT_ROLES  # [roles]; built without: the defaults of default_roles
    # [stale_after_days] (issue #21): stage value -> days without contact before a customer in it is stale
    stale_after_days: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.roles is _DEFAULT_ROLES:
            object.__setattr__(self, "roles", default_roles(self.key, self.fields))

    def role(self, role: RoleName) -> str | None:
        """The field that plays ``role`` ("email", "name", "owner", "stage"), or None when none does."""
        return self.roles.get(role)

    def columns(self, headers: tuple[str, ...], source: str) -> dict[str, str | None]:
        """Field name -> header found (None for an optional column not in the sheet).

        A missing required column is one error listing the headers found.
        """
        present = {h.strip(): h for h in headers if h is not None}
        out: dict[str, str | None] = {}
        missing = []
        for name, spec in self.fields.items():
            h = present.get(spec.column.strip())
            if h is None and (spec.required or name == self.key):
                missing.append(f"\"{spec.column}\" (field {name})")
            out[name] = h
        if missing:
            found = ", ".join(f"\"{h}\"" for h in headers if h) or "none"
            raise ConfigError(
                f"{source}: required column {', '.join(missing)} not found in the header row; headers found: {found}",
                hint=f"rename the column in the sheet or change \"column\" in {self.path}",
            )
        return out

    def prepare(self) -> None:
        """Load the validators and compile their patterns now (the worker does it while the sheet is read)."""
        from crm_automation.fieldtypes import prepare

        prepare(tuple(self.fields.values()))

    def apply(self, data: SheetData, previous: dict[str, str] | None = None, *,
              blank_invalid: bool = False) -> MappingResult:
        """Validate rows; rows whose raw hash is in ``previous`` (hash -> key) are not validated again.

        Work is done column by column with a per-column memo (stages, owners
        and choices repeat thousands of times), which keeps a first sync of
        100,000 rows within issue #3's budget.

        ``blank_invalid`` (``sync``, ``check``): a failing cell of an
        ``on_invalid = "blank"`` field is emptied and reported in ``blanked``,
        and its row kept (issue #11). Without it every failing cell rejects
        its row, as ``import`` needs: it writes rows into the sheet, where a
        cell dropped on the way would be lost.
        """
        cols = self.columns(data.headers, data.source)
        res = MappingResult()
        self._report_columns(data, cols, res)
        previous = previous or {}
        items = [(n, self.fields[n], h) for n, h in cols.items() if h is not None]
        values = [data.column(h) for _, _, h in items]
        digests = _row_digests(values, repr([spec for _, spec, _ in items]))
        todo = [i for i, d in enumerate(digests) if d not in previous] if previous else range(len(digests))
        if len(todo) != len(digests):
            values = [[col[i] for i in todo] for col in values]
        converted, bad, blanked = self._convert_columns(items, values, self.key, blank_invalid=blank_invalid)
        key_idx = next(i for i, (n, _, _) in enumerate(items) if n == self.key)
        pending = _Pending(items, values, converted, bad, blanked, key_idx)
        if not previous and not bad and self._all_new(res, data.row_numbers, digests, converted, items):
            for position in sorted(blanked):  # the bulk path stays; these rows only lose their hash
                self._report_blanked(res, data.source, data.row_numbers[position], items, values, position,
                                     blanked[position])
                k = converted[key_idx][position]
                del res.hashes[k if k.__class__ is str else str(k)]
            return res
        self._rows(res, data, previous, digests, pending)
        return res

    def _report_columns(self, data: SheetData, cols: dict[str, str | None], res: MappingResult) -> None:
        """Duplicate header names (issue #9) and optional columns the sheet lacks, before any row."""
        if isinstance(data, GridData) and data.duplicate_headers:
            self._report_duplicate_headers(data, res)
        for name, h in cols.items():
            if h is None:
                res.warnings.append(
                    f"{data.source}: optional column \"{self.fields[name].column}\" (field {name}) not found; "
                    f"customer.{name} is empty")

    def _rows(self, res: MappingResult, data: SheetData, previous: dict[str, str], digests: list[str],
              p: _Pending) -> None:
        """Row by row: unchanged rows by their digest, the converted ones kept, rejected or found twice.

        ``p`` holds the converted cells of the rows whose digest is not in
        ``previous``, in sheet order; ``position`` walks them.
        """
        results = zip(*p.converted, strict=True)
        position = -1
        key_col = self.fields[self.key].column
        names = [n for n, _, _ in p.items]
        empty = dict.fromkeys(self.fields) if len(names) != len(self.fields) else None
        bad, blanked, key_idx = p.bad, p.blanked, p.key_idx
        seen: dict[str, int] = {}
        customers: list[Customer] = []
        res.customers = customers
        for row, digest in zip(data.row_numbers, digests, strict=True):
            key = previous.get(digest) if previous else None
            if key is None:
                out = next(results)
                position += 1
                if position in bad:
                    self._reject(res, data.source, row, p, position, out)
                    continue
                key = out[key_idx]
                if key.__class__ is not str:
                    key = str(key)
                if key in seen:
                    res.errors.append(RowError(data.source, row, key_col, key,
                                               f"duplicates the key of row {seen[key]} (the first row wins)"))
                    res.rejected_rows += 1
                    continue
                if empty is None:
                    d = dict(zip(names, out, strict=True))
                else:
                    d = dict(empty)
                    d.update(zip(names, out, strict=True))
                customers.append(Customer(key=key, row=row, data=d))
                if blanked and position in blanked:
                    self._report_blanked(res, data.source, row, p.items, p.values, position, blanked[position])
                    seen[key] = row
                    continue  # no hash: validated, and reported, again at the next sync
            elif key in seen:
                res.errors.append(RowError(data.source, row, key_col, key,
                                           f"duplicates the key of row {seen[key]} (the first row wins)"))
                res.rejected_rows += 1
                continue
            else:
                res.unchanged[key] = row
            seen[key] = row
            res.hashes[key] = digest

    @staticmethod
    def _reject(res: MappingResult, source: str, row: int, p: _Pending, position: int, out: tuple[object, ...]) -> None:
        """A row with a cell that rejects it: every failing cell reported; its key kept aside if it has one."""
        cells = p.bad[position]
        if p.blanked and position in p.blanked:  # a rejected row reports every cell that fails
            cells = cells | p.blanked[position]
        for j, reason in sorted(cells.items()):
            res.errors.append(RowError(source, row, p.items[j][2], p.values[j][position], reason))
        res.rejected_rows += 1
        k = out[p.key_idx]
        if k is not None and p.key_idx not in p.bad[position]:
            res.rejected_keys.setdefault(str(k), row)

    @staticmethod
    def _report_blanked(res: MappingResult, source: str, row: int, items: list[tuple[str, FieldSpec, str]],
                        values: list[list[object]], position: int, cells: dict[int, str]) -> None:
        """Report the cells emptied in a kept row: sheet row, column, value as read, reason (issue #11)."""
        for j, reason in sorted(cells.items()):
            name, _, header = items[j]
            res.blanked.append(BlankedCell(name, RowError(source, row, header, values[j][position], reason)))

    def _report_duplicate_headers(self, data: GridData, res: MappingResult) -> None:
        """A header over several columns (issue #9): an error when the mapping uses it, else a warning.

        Only the first (leftmost) column is read and written (``grid_to_data``,
        ``plan_writeback``), so a mapped name there may be read from the column
        the user did not mean: the row error makes ``sync`` and ``check`` exit 1.
        """
        used = {spec.column.strip(): (f"field {name}", "reads") for name, spec in self.fields.items()}
        for name, col in self.writeback.items():
            used.setdefault(col.strip(), (f"write-back column {name}", "reads and writes"))
        for dup in data.duplicate_headers:
            first, *rest = dup.letters
            where = f"columns {', '.join(dup.letters[:-1])} and {dup.letters[-1]}"
            role = used.get(dup.name)
            if role is None:
                res.warnings.append(
                    f"{data.source}: header \"{dup.name}\" is in {where}; no field uses it, so only column "
                    f"{first} counts (rename the others if they matter)")
                continue
            what, verb = role
            res.errors.append(RowError(
                data.source, 1, dup.name, None,
                f"heads {where}, so {what} is ambiguous: the worker {verb} column {first} (the first) and "
                f"ignores {' and '.join(rest)} (expected each header once: rename one of the columns)"))

    def _all_new(self, res: MappingResult, numbers: list[int], digests: list[str], converted: list[list[object]],
                 items: list[tuple[str, FieldSpec, str]]) -> bool:
        """The first sync's common case, in bulk: every row valid and every key distinct.

        Fills ``res`` and returns True, or returns False (nothing touched) for
        the row-by-row path. Same result, a third of the time (issue #3).
        """
        key_idx = next(i for i, (n, _, _) in enumerate(items) if n == self.key)
        column = converted[key_idx]
        # the key column is text but for number keys; only then is it copied (100,000 rows, issue #3)
        keys = cast("list[str]", column) if all(k.__class__ is str for k in column) else [str(k) for k in column]
        if len(set(keys)) != len(keys):
            return False
        res.customers = CustomerColumns(tuple(self.fields), tuple(n for n, _, _ in items), keys, numbers, converted)
        res.hashes = dict(zip(keys, digests, strict=True))
        return True

    @staticmethod
    def _convert_columns(items: list[tuple[str, FieldSpec, str]], values: list[list[object]], key_field: str, *,
                         blank_invalid: bool = False
                         ) -> tuple[list[list[object]], dict[int, dict[int, str]], dict[int, dict[int, str]]]:
        """Convert the pending cells column by column: (columns, bad, blanked).

        ``bad`` and ``blanked`` are {row position: {column index: reason}}:
        cells that reject their row, and cells of ``on_invalid = "blank"``
        fields (with ``blank_invalid``), already None in ``columns``. The key
        and required fields always reject, whatever a hand-made FieldSpec says.

        fieldtypes (email-validator, phonenumbers: ~0.1 s to import) loads here, not at start-up,
        so commands that never validate a row (send, fetch, report) start faster.
        """
        from crm_automation.fieldtypes import convert_column

        columns: list[list[object]] = []
        bad: dict[int, dict[int, str]] = {}
        blanked: dict[int, dict[int, str]] = {}
        for j, ((name, spec, _), col) in enumerate(zip(items, values, strict=True)):
            out, errors = convert_column(spec, col)
            strict = spec.required or name == key_field
            if errors:
                into = blanked if blank_invalid and not strict and spec.on_invalid is OnInvalid.BLANK else bad
                for i, reason in errors.items():
                    into.setdefault(i, {})[j] = reason
            if strict:
                for i in (i for i, v in enumerate(out) if v is None):
                    bad.setdefault(i, {}).setdefault(j, _EMPTY)
            columns.append(out)
        return columns, bad, blanked


_EMPTY = "is empty (expected a value: the column is required)"


def _row_digests(columns: list[list[object]], rules: str) -> list[str]:
    """A digest of each row's raw cells: a row whose digest is as at the last sync is not validated again.

    ``rules`` (the mapped fields' specs) salts every digest, so a change to
    the mapping (a type, a region, the choices) validates every row again.

    ``marshal`` format 0 encodes str, int, float, bool and None exactly and
    deterministically (no references, no interning marks) at C speed; a
    sheet holding other cell types (dates from Excel) takes a ``%r`` per
    cell instead. Types count: 1, 1.0, True and "1" differ.
    """
    salt = hashlib.blake2b(rules.encode(), digest_size=16).digest()
    blake = hashlib.blake2b
    rows = list(zip(*columns, strict=True))
    try:
        return [blake(marshal.dumps(raw, 0), digest_size=12, salt=salt).hexdigest() for raw in rows]
    except ValueError:  # a value marshal cannot encode (datetime)
        fmt = "\x1f".join(["%r"] * len(columns))
        return [blake((fmt % raw).encode(), digest_size=12, salt=salt).hexdigest() for raw in rows]


def _problems(path: Path, e: ValidationError) -> list[str]:
    from crm_automation.config import _explain, _loc

    return [f"{path}: {_loc(err['loc'])} {_explain(err)}" for err in e.errors()]


def _read_toml(path: Path) -> dict[str, object]:
    if not path.is_file():
        raise ConfigError(f"{path}: file not found", hint="see the mappings/ folder of the example workspace")
    try:
        # utf-8-sig: a byte order mark from Notepad is accepted; tomllib alone refuses it (issue #17).
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}{_bare_key_hint(path, e)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text (save the file as UTF-8)") from None


def _bare_key_hint(path: Path, e: tomllib.TOMLDecodeError) -> str:
    """A hint when the line TOML refused starts with a key of non-ASCII letters, such as ``报价 = 7`` (issue #21).

    TOML 1.0 (Python's tomllib) allows only ASCII letters, digits, ``-`` and
    ``_`` in a bare key; a stage named in Chinese must be quoted. The
    parser's own message ("Invalid statement") does not say so.
    """
    found = re.search(r"at line (\d+)", str(e))  # Python 3.11's error has no lineno attribute, only the text
    if found is None:
        return ""
    try:
        line = path.read_text(encoding="utf-8-sig").splitlines()[int(found.group(1)) - 1]
    except (OSError, UnicodeDecodeError, IndexError):
        return ""
    key, eq, _ = line.partition("=")
    key = key.strip()
    if not eq or not key or key.startswith(("\"", "'")) or key.isascii():
        return ""
    return (f" ({key!r}: a key with Chinese or other non-ASCII letters must be in quotes, e.g. "
            f"\"{key}\" = ...)")


def _known_region(region: str) -> bool:
    """Whether phonenumbers has metadata for ``region`` (ISO 3166-1 alpha-2, any case: fieldtypes upper-cases it).

    Why (issue #17): an unknown region made every phone cell fail at ``sync``
    ("not a phone number") while ``check`` passed the mapping.

    Asked without importing phonenumbers, which costs ~40 ms at every start
    of every command (fieldtypes imports it only where cells are validated):
    the library keeps one module of metadata per region,
    ``phonenumbers/data/region_XX.py``, and loads it itself on first use,
    so the file's presence is its own answer. Where that layout is not found,
    the library is asked.
    """
    code = region.strip().upper()
    if len(code) != 2 or not code.isalpha() or not code.isascii():
        return False
    data = _phonenumbers_data()
    if data is not None:
        return (data / f"region_{code}.py").is_file()
    import phonenumbers

    return code in phonenumbers.SUPPORTED_REGIONS


@functools.cache
def _phonenumbers_data() -> Path | None:
    """The folder of phonenumbers' per-region metadata modules, found without importing the package (or None)."""
    spec = importlib.util.find_spec("phonenumbers")
    folders = list(spec.submodule_search_locations or ()) if spec is not None else []
    for folder in folders:
        data = Path(folder) / "data"
        if (data / "region_US.py").is_file():
            return data
    return None


def load_mapping(mappings_dir: Path) -> Mapping:
    """Load and check mappings/customers.toml."""
    path = mappings_dir / CUSTOMERS_FILE
    raw = _read_toml(path)
    try:
        m = _CustomersModel.model_validate(raw)
    except ValidationError as e:
        raise ConfigError.collect(_problems(path, e)) from None
    problems = []
    if m.key not in m.fields:
        problems.append(f"{path}: key = {m.key!r} is not one of the fields ({', '.join(m.fields)})")
    fields: dict[str, FieldSpec] = {}
    for name, f in m.fields.items():
        if not name.isidentifier():
            problems.append(f"{path}: fields.{name}: field names must be identifiers (letters, digits, _), "
                            f"because templates use them as customer.{name}")
        if f.type is FieldType.CHOICE and not f.choices:
            problems.append(f"{path}: fields.{name}: type \"choice\" needs choices = [...]")
        if f.region is not None and f.type is not FieldType.PHONE:
            problems.append(f"{path}: fields.{name}: region applies only to type \"phone\"")
        elif f.region is not None and not _known_region(f.region):
            uk = "; the United Kingdom is \"GB\"" if f.region.strip().upper() == "UK" else ""
            problems.append(f"{path}: fields.{name}.region is {f.region!r}, not a region phonenumbers knows "
                            f"(expected a two-letter ISO 3166 country code such as \"CN\", \"HK\", \"TW\" or "
                            f"\"US\"{uk}; numbers without a + country code are read as that country's)")
        strict = f.required or name == m.key
        if f.on_invalid == "blank" and strict:
            what = "the key field" if name == m.key else "a required field"
            problems.append(f"{path}: fields.{name}: on_invalid = \"blank\" is not allowed on {what}: a row without "
                            f"it cannot be kept (expected \"reject_row\", or leave on_invalid out)")
        on_invalid = OnInvalid(f.on_invalid) if f.on_invalid else (OnInvalid.REJECT_ROW if strict else OnInvalid.BLANK)
        fields[name] = FieldSpec(name=name, column=f.column, type=f.type, required=f.required,
                                 choices=f.choices, region=f.region, on_invalid=on_invalid)
    cols = [f.column.strip() for f in m.fields.values()]
    dup_cols = sorted({c for c in cols if cols.count(c) > 1})
    if dup_cols:
        problems.append(f"{path}: column(s) {', '.join(dup_cols)} mapped to more than one field")
    writeback: dict[str, str] = dict(m.writeback.items())
    language = writeback.pop("language", None)
    if language is not None and language not in LANGUAGES:
        problems.append(f"{path}: writeback.language is {language!r}, not a supported language "
                        f"(expected {expected_languages()}, or leave it out to use [workspace] language)")
    for name, col in writeback.items():
        if col.strip() in cols:
            problems.append(f"{path}: writeback.{name} = {col!r} is also a mapped field's column; "
                            f"the worker must own its columns alone")
    declared: dict[str, str | None] = {role: name or None for role, name in m.roles.items()}
    roles = default_roles(m.key, fields, declared)
    problems += _role_problems(path, declared, fields, roles)
    stale, stale_problems = _stale_after_days(path, m.stale_after_days, fields, roles)
    problems += stale_problems
    if problems:
        raise ConfigError.collect(problems)
    return Mapping(path=path, key=m.key, fields=fields, writeback=writeback, writeback_language=language,
                   roles=roles, stale_after_days=stale)


def _stale_after_days(path: Path, raw: dict[str, object], fields: dict[str, FieldSpec],
                      roles: Roles) -> tuple[dict[str, int], list[str]]:
    """``[stale_after_days]`` (issue #21): stage value -> a whole number of days, 1 or more.

    Why by hand: a quoted ``"7"`` or ``true`` must be refused with the type
    expected, not read as a number (TOML's ``7.0`` too: days are counted
    whole). A stage value that no row holds yet is fine (the team may add
    it tomorrow); for a ``choice`` field a value outside its choices is
    refused, as campaigns' ``where`` does (issue #9), since no row can ever
    hold it. Staleness is read from the ``stage`` role's field: without one
    the table means nothing, which is an error rather than silence.
    """
    out: dict[str, int] = {}
    problems: list[str] = []
    if not raw:
        return out, problems
    if roles.stage is None:
        problems.append(f"{path}: [stale_after_days] needs a stage field: no field plays the \"stage\" role "
                        f"(expected a field named \"stage\", or [roles] stage = \"<field>\" naming the field that "
                        f"holds each customer's stage; fields: {', '.join(fields)})")
        return out, problems
    spec = fields.get(roles.stage)
    for value, days in raw.items():
        where = f"{path}: stale_after_days.{value}"
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            problems.append(f"{where} = {days!r} is not a number of days (expected a whole number, 1 or more, "
                            f"without quotes, e.g. {value} = 7)")
            continue
        if spec is not None and spec.type is FieldType.CHOICE and value not in spec.choices:
            allowed = ", ".join(f'"{c}"' for c in spec.choices)
            problems.append(f"{where}: {value!r} is not one of the choices of the stage field {spec.name} "
                            f"(expected one of {allowed})")
            continue
        out[value] = days
    return out, problems


#: Roles whose field must hold an address: mail is sent to it.
_ADDRESS_ROLES = {"email": "the address campaign emails go to", "owner": "the address told of a customer's reply"}


def _role_problems(path: Path, declared: dict[str, str | None], fields: dict[str, FieldSpec],
                   roles: Roles) -> list[str]:
    """A declared role must name a mapped field, of type email for the address roles (issue #18)."""
    out = []
    for role, name in declared.items():
        if name is None:
            continue
        if name not in fields:
            out.append(f"{path}: roles.{role} = {name!r} is not one of the fields (expected a field name from "
                       f"[fields]: {', '.join(fields)}; or \"\" when no field plays this role)")
        elif role in _ADDRESS_ROLES and fields[name].type is not FieldType.EMAIL:
            out.append(f"{path}: roles.{role} = {name!r} is a field of type \"{fields[name].type.value}\" "
                       f"(expected a field of type \"email\": {_ADDRESS_ROLES[role]})")
    email, owner = roles.email, roles.owner
    if email is not None and email == owner and ("email" in declared or "owner" in declared):
        out.append(f"{path}: roles.email and roles.owner both name field {email!r} (expected two different "
                   f"fields: the customer's address and the owner's)")
    return out


def _off_choices(where: str, spec: FieldSpec, values: Sequence[object]) -> list[str]:
    """A problem line per value a choice field can never hold: it would silently match nobody (issue #9).

    Values compare as the planner compares them, as text: a sheet cell holds exactly one of the choices.
    """
    if spec.type is not FieldType.CHOICE:
        return []
    allowed = ", ".join(f'"{c}"' for c in spec.choices)
    return [f"{where} = {str(v)!r} is not one of the choices of field {spec.name} (expected one of {allowed})"
            for v in values if str(v) not in spec.choices]


def load_campaigns(mappings_dir: Path, mapping: Mapping, tz: ZoneInfo,
                   accounts: Sequence[str] | None = None) -> list[Campaign]:
    """Load and check mappings/campaigns.toml (a missing file means no campaigns).

    ``accounts``: the SMTP accounts a campaign may pin (``[outbound]
    account_names``); None: not checked here.
    """
    path = mappings_dir / CAMPAIGNS_FILE
    if not path.exists():
        return []
    raw = _read_toml(path)
    try:
        m = _CampaignsModel.model_validate(raw)
    except ValidationError as e:
        raise ConfigError.collect(_problems(path, e)) from None
    problems = []
    out = []
    ids: set[str] = set()
    for i, c in enumerate(m.campaign):
        where = f"{path}: campaign[{i}] (id {c.id!r})"
        if c.id in ids:
            problems.append(f"{where}: id is used twice (ids must be unique: sends are keyed on them)")
        ids.add(c.id)
        found, at = _campaign_problems(where, c, mapping, tz)
        steps, step_problems = _campaign_steps(where, c)
        problems += found + step_problems
        if c.account is not None and accounts is not None and c.account not in accounts:
            problems.append(f"{where}: account = {c.account!r} is not an SMTP account of config.toml (expected one "
                            f"of {', '.join(repr(a) for a in accounts) or 'none: no [[outbound.accounts]] listed'})")
        out.append(Campaign(
            id=c.id, trigger=Trigger(c.trigger), steps=tuple(steps),
            where={k: tuple(str(x) for x in (v if isinstance(v, list) else [v])) for k, v in c.where.items()},
            stop_on=frozenset(c.stop_on), field=c.field, to=None if c.to is None else str(c.to), at=at,
            include_existing=c.include_existing, enabled=c.enabled,
            skip_if_already_wrote=c.skip_if_already_wrote is not False, renamed_from=c.renamed_from,
            resend=c.resend, track_clicks=c.track_clicks, track_opens=c.track_opens, account=c.account,
        ))
    problems += _rename_problems(path, out)
    if problems:
        raise ConfigError.collect(problems)
    return out


def _campaign_problems(where: str, c: _CampaignModel, mapping: Mapping,
                       tz: ZoneInfo) -> tuple[list[str], datetime | None]:
    """What is wrong with one campaign's trigger and filter, and its ``at`` as aware UTC (``trigger = "at"``)."""
    problems = []
    for fname, wanted in c.where.items():
        if fname not in mapping.fields:
            problems.append(f"{where}: where.{fname} is not a field of {mapping.path.name} "
                            f"(fields: {', '.join(mapping.fields)})")
        else:
            problems += _off_choices(f"{where}: where.{fname}", mapping.fields[fname],
                                     wanted if isinstance(wanted, list) else [wanted])
    at = None
    if c.trigger == "change":
        if not c.field or c.to is None:
            problems.append(f"{where}: trigger \"change\" needs field = \"...\" and to = \"...\"")
        elif c.field not in mapping.fields:
            problems.append(f"{where}: field = {c.field!r} is not a field of {mapping.path.name}")
        else:
            problems += _off_choices(f"{where}: to", mapping.fields[c.field], [c.to])
    if c.trigger == "at":
        if not c.at:
            problems.append(f"{where}: trigger \"at\" needs at = \"YYYY-MM-DDTHH:MM\" (local time)")
        else:
            local = datetime.fromisoformat(c.at)
            if local.tzinfo is None:
                local = local.replace(tzinfo=tz)
            at = local.astimezone(ZoneInfo("UTC"))
    if c.include_existing and c.trigger != "new":
        problems.append(f"{where}: include_existing applies only to trigger \"new\"")
    if c.skip_if_already_wrote is not None and c.trigger != "new":
        problems.append(f"{where}: skip_if_already_wrote applies only to trigger \"new\"")
    return problems, at


def _campaign_steps(where: str, c: _CampaignModel) -> tuple[list[Step], list[str]]:
    """The campaign's steps, first email and follow-ups, and what is wrong with them (issue #17)."""
    problems = []
    steps = [Step(0, c.template, id=c.step_id, resend=c.resend)]
    last = 0.0
    for n, fu in enumerate(c.follow_up, start=1):
        if fu.after_days <= last:
            problems.append(f"{where}: follow_up[{n - 1}].after_days = {fu.after_days} must be greater than "
                            f"the step before ({last}); days count from the first email")
        last = fu.after_days
        steps.append(Step(n, fu.template, fu.after_days, id=fu.id, renamed_from=fu.renamed_from,
                          resend=fu.resend))
    steps = _distinct(steps)
    return steps, problems + _step_problems(where, steps)


def _step_label(s: Step) -> str:
    return "the first email" if s.number == 0 else f"follow_up[{s.number - 1}]"


def _distinct(steps: list[Step]) -> list[Step]:
    """Steps of one campaign that reuse a template, without an id, are told apart by occurrence.

    Why not an error: a sequence that sends one template twice ("hello"
    again after a week) was valid before steps had identities, and such a
    workspace must keep working after an upgrade. The second use is
    ``hello#2``, the third ``hello#3``; ``check`` suggests giving them ids,
    since inserting another use of the template before them would shift these.
    """
    used: dict[str, int] = {}
    out = []
    for s in steps:
        if s.id is None:
            used[s.template] = used.get(s.template, 0) + 1
            if used[s.template] > 1:
                s = replace(s, id=f"{s.template}#{used[s.template]}")
        out.append(s)
    return out


def _step_problems(where: str, steps: list[Step]) -> list[str]:
    """Two steps of one campaign with the same key would share their sends: refused (issue #17)."""
    out = []
    seen: dict[str, Step] = {}
    for s in steps:
        first = seen.setdefault(s.key, s)
        if first is not s:
            out.append(f"{where}: {_step_label(s)} has the same id as {_step_label(first)} ({s.key!r}; a step "
                       f"without an id is known by its template); steps are told apart by id (expected a "
                       f"different id = \"...\" on one of them)")
        if s.renamed_from is not None and s.renamed_from == s.key:
            out.append(f"{where}: {_step_label(s)}: renamed_from = {s.renamed_from!r} is the step's own id")
    keys = {s.key for s in steps}
    for s in steps:
        if s.renamed_from is not None and s.renamed_from != s.key and s.renamed_from in keys:
            out.append(f"{where}: {_step_label(s)}: renamed_from = {s.renamed_from!r} names another step that is "
                       f"still in the campaign (expected the id of a step that was renamed or replaced)")
    return out


def _rename_problems(path: Path, campaigns: list[Campaign]) -> list[str]:
    """``renamed_from`` must name a campaign id that is no longer in the file, and only once (issue #17)."""
    ids = {c.id for c in campaigns}
    out = []
    claimed: dict[str, str] = {}
    for c in campaigns:
        old = c.renamed_from
        if old is None:
            continue
        if old == c.id:
            out.append(f"{path}: campaign {c.id!r}: renamed_from = {old!r} is its own id")
        elif old in ids:
            out.append(f"{path}: campaign {c.id!r}: renamed_from = {old!r} is still a campaign in the file "
                       f"(expected the old id of a campaign that was renamed)")
        elif old in claimed:
            out.append(f"{path}: campaigns {claimed[old]!r} and {c.id!r} both say renamed_from = {old!r} "
                       f"(one campaign can inherit another's sends)")
        claimed.setdefault(old, c.id)
    return out
