"""What every use case's ``to_json()`` returns: plain JSON values, typed all the way down (issue #18)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TypeAlias

JsonValue: TypeAlias = "str | int | float | bool | Sequence[JsonValue] | Mapping[str, JsonValue] | None"
JsonObject: TypeAlias = "dict[str, JsonValue]"


def utc_text(dt: datetime | None) -> str | None:
    """A time as the log writes it (ISO 8601 UTC, ``Z``), so JSON output shows one time format everywhere."""
    if dt is None:
        return None
    return dt.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def json_value(value: object) -> JsonValue:
    """``value`` as a JSON value: what came out of the log's JSON (a run's stats, a customer's fields).

    Anything JSON has no type for (never written by us) becomes its text,
    as ``json.dumps(default=str)`` would show it.
    """
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return str(value)
