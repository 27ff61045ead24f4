"""The text a spreadsheet cell shows: the one comparison of cells that every layer shares.

Why its own bottom-layer module (issue #18): the sheet adapters, the field
types, the sheet session and the importer all compare cells as text; the
field types (``fieldtypes.py``) sit below the adapters, so the rule cannot
live in the adapters' ``sheets/grid.py`` without an import going up.
"""

from __future__ import annotations

from datetime import date, datetime


def cell_text(value: object) -> str:
    """The text a cell shows, for comparing keys and write-back values across formats.

    Excel returns 13800138000 as a float and dates as date objects; Google
    returns numbers as JSON numbers; CSV returns text. All compare as text.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return repr(value)
    if isinstance(value, datetime):
        if value.hour == value.minute == value.second == value.microsecond == 0:
            return value.date().isoformat()
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    return str(value).strip()
