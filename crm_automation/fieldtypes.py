"""Raw sheet cells -> JSON-ready field values, one function per column type (SPEC §4).

People type dates, phone numbers and flags in every format, and Excel hands
numbers back as floats (``13800138000.0``), so each type accepts the forms a
team actually produces and refuses the rest with a reason the user can act on.
The reason text is printed after the value by :class:`~crm_automation.models.RowError`,
e.g. ``customers.xlsx row 14, "邮箱": 'bob@' is not an address (expected name@domain)``.

Speed matters: a first sync converts every cell of a 100,000-row sheet, and
``email-validator`` costs about 23 µs an address and ``phonenumbers`` about
16 µs a number. Common, plainly valid addresses therefore take a fast path
(a conservative pattern; anything unusual still goes through the library),
and both email and phone results are cached.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import cast

import phonenumbers
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

from crm_automation.cells import cell_text
from crm_automation.models import FieldSpec, FieldType

__all__ = ["FieldValueError", "convert", "convert_column", "converter", "prepare"]

_CACHE_SIZE = 1 << 17  # enough for the 100k-row benchmark; bounded memory


class FieldValueError(ValueError):
    """A cell value does not fit its column's type.

    ``reason`` is the text printed after the value, e.g.
    ``is not an address (expected name@domain)``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _is_empty(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, float) and math.isnan(value)


_to_text = cell_text  # one rule for "the text a cell shows", shared with write-back's key matching


# ---------------------------------------------------------------- email

# A conservative dot-atom ASCII address with a letters-only TLD: every string it
# matches is also accepted, unchanged, by email-validator (checked in the tests
# on a corpus), so it may skip the library. Anything else goes to the library.
_FAST_EMAIL = re.compile(
    r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}"
)
_SPECIAL = frozenset(SPECIAL_USE_DOMAIN_NAMES)


@lru_cache(maxsize=_CACHE_SIZE)
def _email(text: str) -> str:
    addr = text.strip().lower()
    if (
        len(addr) <= 254
        and _FAST_EMAIL.fullmatch(addr)
        and len(addr.partition("@")[0]) <= 64
        and addr.rsplit(".", 1)[1] not in _SPECIAL
        and "--" not in addr.partition("@")[2]  # IDNA "xn--" and odd hyphen labels: let the library judge
    ):
        return addr
    try:
        info = validate_email(addr, check_deliverability=False)
    except EmailNotValidError as e:
        raise FieldValueError(f"is not an address (expected name@domain: {e})") from None
    return info.normalized.lower()


def _convert_email(value: object, spec: FieldSpec) -> str:
    text = value.strip() if value.__class__ is str else _to_text(value)
    if "@" not in text:
        raise FieldValueError("is not an address (expected name@domain)")
    return _email(text)


def address_problem(text: str) -> str | None:
    """Why ``text`` is not an email address (the sheet's rule), or None when it is one."""
    try:
        _convert_email(text, FieldSpec("email", "email", FieldType.EMAIL))
    except FieldValueError as e:
        return str(e)
    return None


# ---------------------------------------------------------------- phone


# Chinese mobile numbers are most of a Chinese CRM's phone column, and a full
# phonenumbers.parse + is_valid_number costs ~16 µs (more on a busy machine).
# For "1[3-9]" + 9 digits (optionally "+86"), parse yields exactly country code
# 86 and those 11 digits as the national number (no trunk prefix, no carrier
# code: "179xx" carrier prefixes are excluded), so when the digits match
# phonenumbers' own CN general and mobile patterns the number is valid, and its
# E.164 form is "+86" + digits. Anything else takes the full path. The tests
# compare both paths over every mobile prefix.
_CN_MOBILE = re.compile(r"(\+86)?(1[3-9]\d{9})")
_PHONE_PUNCT = str.maketrans("", "", " -.()\u00a0")


@lru_cache(maxsize=1)
def _cn_patterns() -> tuple[re.Pattern[str], re.Pattern[str], frozenset[int]]:
    md = phonenumbers.PhoneMetadata.metadata_for_region("CN")
    general = md.general_desc if md is not None else None
    mobile = md.mobile if md is not None else None
    if (general is None or mobile is None or general.national_number_pattern is None
            or mobile.national_number_pattern is None):
        # phonenumbers without CN mobile metadata (never in a release): no length fits, every number takes the
        # full path.
        never = re.compile(r"(?!)")
        return never, never, frozenset()
    lengths = mobile.possible_length or general.possible_length
    return (re.compile(general.national_number_pattern), re.compile(mobile.national_number_pattern),
            frozenset(lengths))


def _fast_cn_mobile(text: str, region: str | None) -> str | None:
    m = _CN_MOBILE.fullmatch(text.translate(_PHONE_PUNCT))
    if m is None or (m.group(1) is None and region != "CN"):
        return None
    digits = m.group(2)
    if digits.startswith("179"):
        return None
    general, mobile, lengths = _cn_patterns()
    if len(digits) in lengths and general.fullmatch(digits) and mobile.fullmatch(digits):
        return "+86" + digits
    return None


@lru_cache(maxsize=_CACHE_SIZE)
def _phone(text: str, region: str | None) -> str:
    fast = _fast_cn_mobile(text, region)
    if fast is not None:
        return fast
    return _phone_full(text, region)


def _phone_full(text: str, region: str | None) -> str:
    try:
        num = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        num = None
    if num is None or not phonenumbers.is_valid_number(num):
        where = f" or a {region} number" if region else ""
        raise FieldValueError(f"is not a phone number (expected +country number{where}, e.g. +8613800138000)")
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)


def _region(spec: FieldSpec) -> str | None:
    """The field's default phone region as phonenumbers wants it (``cn`` -> ``CN``)."""
    return spec.region.upper() if spec.region else None


def _convert_phone(value: object, spec: FieldSpec) -> str:
    if isinstance(value, bool):
        raise FieldValueError("is not a phone number (expected digits, got TRUE/FALSE)")
    text = _to_text(value)
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)  # full-width digits
    return _phone(text, _region(spec))


# ---------------------------------------------------------------- date

_EXCEL_EPOCH = date(1899, 12, 30)  # serial 1 = 1900-01-01 counting Excel's phantom 1900-02-29
_MAX_SERIAL = 2958465  # 9999-12-31
_YMD = re.compile(
    r"(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*日?"
    r"(?:[T\s]+\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?"  # a time part is ignored
)
_COMPACT = re.compile(r"(\d{4})(\d{2})(\d{2})")
_DMY = re.compile(r"(\d{1,2})\s*[-/.]\s*(\d{1,2})\s*[-/.]\s*(\d{2,4})")
_DATE_EXPECTED = "(expected a date like 2026-11-24, 2026/11/24 or 2026年11月24日)"


def _from_serial(serial: float) -> str:
    if not 1 <= serial <= _MAX_SERIAL:
        raise FieldValueError(f"is not a date {_DATE_EXPECTED[1:-1]}; as an Excel date number it is out of range)")
    return (_EXCEL_EPOCH + timedelta(days=int(serial))).isoformat()


def _ymd(y: str, m: str, d: str) -> str:
    try:
        return date(int(y), int(m), int(d)).isoformat()
    except ValueError:
        raise FieldValueError(f"is not a real calendar date {_DATE_EXPECTED}") from None


def _day_month_possible(a: str, b: str, y: str) -> bool:
    """Whether ``a/b/y`` is a real date read as day/month or as month/day (a 2-digit year is 20yy)."""
    year = int(y) + 2000 if len(y) == 2 else int(y)
    for d, mo in ((a, b), (b, a)):
        try:
            date(year, int(mo), int(d))
        except ValueError:
            continue
        return True
    return False


def _convert_date(value: object, spec: FieldSpec) -> str:
    if isinstance(value, bool):
        raise FieldValueError(f"is not a date {_DATE_EXPECTED}")
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, int | float):
        return _from_serial(value)
    text = unicodedata.normalize("NFKC", _to_text(value))
    m = _YMD.fullmatch(text)
    if m:
        return _ymd(*m.groups())
    m = _COMPACT.fullmatch(text)
    if m:
        return _ymd(*m.groups())
    m = _DMY.fullmatch(text)
    if m:
        if not _day_month_possible(*m.groups()):
            # Issue #9: 32/13/2026 is no date in either order; calling it "ambiguous" misleads.
            raise FieldValueError(f"is not a date: no day/month order makes it a calendar date {_DATE_EXPECTED}")
        raise FieldValueError(
            "is ambiguous: day and month order cannot be told apart "
            "(expected year first, e.g. 2026-11-24 or 2026年11月24日)"
        )
    raise FieldValueError(f"is not a date {_DATE_EXPECTED}")


# ---------------------------------------------------------------- number

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?")
_CURRENCY = "¥$€£"


def _num(value: float) -> int | float:
    if math.isinf(value):
        raise FieldValueError("is not a finite number (expected e.g. 1234 or 1,234.5)")
    if value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _convert_number(value: object, spec: FieldSpec) -> int | float:
    if isinstance(value, bool):
        raise FieldValueError("is not a number (expected e.g. 1234 or 1,234.5, got TRUE/FALSE)")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return _num(value)
    text = unicodedata.normalize("NFKC", _to_text(value)).replace(" ", "").lstrip(_CURRENCY)
    if not text or not any(c.isdigit() for c in text) or not _NUMBER.fullmatch(text):
        raise FieldValueError("is not a number (expected e.g. 1234 or 1,234.5)")
    plain = text.replace(",", "")
    if re.fullmatch(r"[-+]?\d+", plain):
        return int(plain)
    return _num(float(plain))


# ---------------------------------------------------------------- choice and bool


def _convert_choice(value: object, spec: FieldSpec) -> str:
    text = _to_text(value)
    if text in spec.choices:
        return text
    listed = ", ".join(f'"{c}"' for c in spec.choices)
    raise FieldValueError(f"is not one of the choices (expected one of {listed})")


_TRUE = frozenset({"是", "对", "真", "√", "✓", "yes", "y", "true", "t", "1", "on"})
_FALSE = frozenset({"否", "错", "假", "×", "✗", "no", "n", "false", "f", "0", "off"})


def _convert_bool(value: object, spec: FieldSpec) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    text = unicodedata.normalize("NFKC", _to_text(value)).lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise FieldValueError("is not yes or no (expected 是/否, yes/no, true/false or 1/0)")


def _convert_text(value: object, spec: FieldSpec) -> str:
    return _to_text(value)


_CONVERTERS: dict[FieldType, Callable[[object, FieldSpec], object]] = {
    FieldType.TEXT: _convert_text,
    FieldType.EMAIL: _convert_email,
    FieldType.PHONE: _convert_phone,
    FieldType.DATE: _convert_date,
    FieldType.NUMBER: _convert_number,
    FieldType.CHOICE: _convert_choice,
    FieldType.BOOL: _convert_bool,
}


def convert(value: object, spec: FieldSpec) -> object:
    """Convert one raw cell to the JSON-ready value of ``spec.type``.

    Empty cells (None, blank text, NaN from pandas) become None; the caller
    decides whether the field is required.

    Raises:
        FieldValueError: the value does not fit the type; ``reason`` says why
            and what was expected.
    """
    if value is None or (value.__class__ is str and not value.strip()) or _is_empty(value):
        return None
    return _CONVERTERS[spec.type](value, spec)


def converter(spec: FieldSpec) -> Callable[[object], object]:
    """``convert`` bound to one field, for hot loops: the type dispatch is done once, not per cell."""
    fn = _CONVERTERS[spec.type]

    def run(value: object) -> object:
        if value is None:
            return None
        if value.__class__ is str:
            if not value.strip():
                return None
        elif value.__class__ is float and value != value:  # NaN from pandas
            return None
        return fn(value, spec)

    return run


# ---------------------------------------------------------------- whole columns
#
# A first sync converts every cell of a 100,000-row sheet. Per-cell Python
# costs a few microseconds even on the fast paths above, so the common cases
# are checked a block of cells at a time: the block's texts are joined with
# "\n" and one regular expression (compiled from the same rules as the
# per-cell fast paths) must match the whole block. A block that does not match
# (one odd cell is enough) takes the per-cell path, so results are identical;
# the tests compare both paths cell by cell.

_BLOCK = 1024
_LOCAL_ATOM = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+"
_EMAIL_ITEM = (
    r"(?=[^\n]{1,254}(?:\n|\Z))(?=[^@\n]{1,64}@)"  # whole address <= 254, local part <= 64
    rf"{_LOCAL_ATOM}(?:\.{_LOCAL_ATOM})*"
    r"@(?![^\n]*--)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+"
    rf"(?!(?:{'|'.join(sorted(re.escape(d) for d in _SPECIAL if '.' not in d))})(?:\n|\Z))[a-z]{{2,63}}"
)
_EMAIL_BLOCK = re.compile(rf"(?:{_EMAIL_ITEM}\n)*{_EMAIL_ITEM}")


@lru_cache(maxsize=4)
def _phone_block(region: str | None) -> re.Pattern[str]:
    general, mobile, lengths = _cn_patterns()
    prefix = r"(?:\+86)?" if region == "CN" else r"\+86"
    item = (rf"{prefix}(?!179)(?=1[3-9]\d{{9}}(?:\n|\Z))(?=(?:{general.pattern})(?:\n|\Z))"
            rf"(?:{mobile.pattern})(?=\n|\Z)")
    if 11 not in lengths:  # the fast path assumes 11-digit mobiles; let every cell take the slow path
        item = r"(?!)"
    return re.compile(rf"(?:{item}\n)*{item}")


def _blocks(texts: list[str | None], pattern: re.Pattern[str], lower: bool) -> list[list[str] | None]:
    """Per block: the block's cells as matched (lower-cased if asked), or None when the block needs the slow path."""
    out: list[list[str] | None] = []
    for start in range(0, len(texts), _BLOCK):
        block = texts[start:start + _BLOCK]
        if None in block:
            out.append(None)
            continue
        joined = "\n".join(cast("list[str]", block))  # no None: checked just above
        if joined.count("\n") != len(block) - 1 or not joined.isascii():
            out.append(None)  # a cell holding a line break would shift the block; non-ASCII needs NFKC
            continue
        joined = joined.lower() if lower else joined.translate(_PHONE_PUNCT)
        out.append(joined.split("\n") if pattern.fullmatch(joined) else None)
    return out


def convert_column(spec: FieldSpec, values: list[object]) -> tuple[list[object], dict[int, str]]:
    """Convert a whole column: (values, {index: reason} of cells that do not fit).

    Empty cells become None (the caller decides whether the field is
    required). The result is exactly what :func:`convert` gives cell by cell,
    only faster for the common cases.
    """
    sample = values[:1024]
    if len(values) > 64 and len(set(sample)) * 2 < len(sample) and {v.__class__ for v in values} <= _TEXT_OR_EMPTY:
        # Owners, stages and companies repeat thousands of times: convert each distinct text once.
        # (Only for text cells: 1, 1.0 and True are equal as dict keys but not as cells.)
        distinct = list(dict.fromkeys(values))
        if len(distinct) * 2 < len(values):
            conv_distinct, errs = convert_column(spec, distinct)
            where = {v: i for i, v in enumerate(distinct)}
            positions = [where[v] for v in values]
            return ([conv_distinct[p] for p in positions],
                    {i: errs[p] for i, p in enumerate(positions) if p in errs} if errs else {})
    out: list[object]
    if spec.type in (FieldType.TEXT, FieldType.CHOICE):
        ok = frozenset(spec.choices) if spec.type is FieldType.CHOICE else None
        out = [(_SLOW if (t := v.strip()) and ok is not None and t not in ok else (t or None))
               if v.__class__ is str else (None if v is None else _SLOW) for v in values]
    elif spec.type is FieldType.EMAIL:
        texts = [v if v.__class__ is str else None for v in values]
        out = []
        for start, block in zip(range(0, len(values), _BLOCK), _blocks(texts, _EMAIL_BLOCK, True), strict=True):
            out.extend(block if block is not None else [_SLOW] * len(values[start:start + _BLOCK]))
    elif spec.type is FieldType.PHONE:
        texts = [v if v.__class__ is str else _number_text(v) for v in values]
        out = []
        for start, block in zip(range(0, len(values), _BLOCK), _blocks(texts, _phone_block(_region(spec)), False),
                                strict=True):
            out.extend(["+86" + t[-11:] for t in block] if block is not None
                       else [_SLOW] * len(values[start:start + _BLOCK]))
    else:
        out = [_SLOW] * len(values)
    errors: dict[int, str] = {}
    conv = converter(spec)
    for i, r in enumerate(out):
        if r is _SLOW:
            try:
                out[i] = conv(values[i])
            except FieldValueError as e:
                out[i] = None
                errors[i] = e.reason
    return out, errors


def prepare(specs: tuple[FieldSpec, ...]) -> None:
    """Compile the patterns :func:`convert_column` will need for ``specs`` (cached for the process)."""
    for spec in specs:
        if spec.type is FieldType.PHONE:
            _phone_block(_region(spec))


def _number_text(v: object) -> str | None:
    """The text a number cell shows (:func:`cell_text`, the per-cell path's rule); None for anything else."""
    return _to_text(v) if v.__class__ is int or v.__class__ is float else None


_TEXT_OR_EMPTY = frozenset({str, type(None)})
_SLOW = object()  # placeholder: this cell needs the per-cell converter
