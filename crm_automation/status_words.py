"""The words and dates write-back puts in the sheet's status columns, in the team's language.

Why this exists: the people who read the status columns are the sales team,
in their own sheet, next to their own headers (邮件状态, 最近发送). A Chinese
team should see 退信 and 已退订, not ``bounced`` and ``unsubscribed``, and
dates written the way they write them.

What it does not change: the activity log stays the source of truth. The
statuses in ``customers.email_status`` are always ``ok`` | ``bounced`` |
``unsubscribed``; these words are only how a status is *shown*. Nothing reads
them back into the log (one safety check looks at them: a sheet showing
bounced or unsubscribed customers next to a log that has never sent
anything holds sending, :func:`shows_a_block`, issue #17): the write-back columns can never be mapped fields
(mapping.py refuses it), and write-back compares the text it would write with
the text the cell shows, so a sheet already showing 已退订 is not rewritten,
and a word typed into the column by hand is simply overwritten by what the
log says.

Dates stay sortable and unambiguous in every language: year first, every part
zero-padded, 24-hour clock, so sorting the column as text sorts it in time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Final
from zoneinfo import ZoneInfo

DEFAULT_LANGUAGE: Final = "en"


@dataclass(frozen=True, slots=True)
class StatusWords:
    """One language's words for the email statuses and its date format."""

    language: str
    statuses: MappingProxyType[str, str]
    time_format: str

    def status(self, status: str) -> str:
        """The word shown for a status of the log (an unknown status is shown as it is)."""
        return self.statuses.get(status, status)

    def time(self, t: datetime | None, tz: ZoneInfo) -> str:
        """An aware time as the workspace's local time in this language's format; ``""`` for none."""
        return t.astimezone(tz).strftime(self.time_format) if t else ""


_WORDS: Final = {
    "en": StatusWords(
        "en", MappingProxyType({"ok": "ok", "bounced": "bounced", "unsubscribed": "unsubscribed"}),
        "%Y-%m-%d %H:%M"),  # 2026-11-27 10:00 (ISO 8601 order)
    "zh-CN": StatusWords(
        "zh-CN", MappingProxyType({"ok": "正常", "bounced": "退信", "unsubscribed": "已退订"}),
        "%Y年%m月%d日 %H:%M"),  # 2026年11月27日 10:00 (zero-padded: sorts as text)
}

LANGUAGES: Final = tuple(_WORDS)


def expected_languages() -> str:
    """The accepted values, for error messages: ``"en" or "zh-CN"``."""
    quoted = [f'"{lang}"' for lang in LANGUAGES]
    return ", ".join(quoted[:-1]) + f" or {quoted[-1]}" if len(quoted) > 1 else quoted[0]


def status_words(language: str | None) -> StatusWords:
    """The words for ``language`` (``None``: English). The config and mapping loaders refuse other values."""
    return _WORDS[language or DEFAULT_LANGUAGE]


_BLOCKED: Final = frozenset(w.statuses[s].casefold() for w in _WORDS.values() for s in ("bounced", "unsubscribed"))


def shows_a_block(cell: str) -> bool:
    """Whether a status cell shows a bounced or unsubscribed customer, in any of our languages."""
    return cell.strip().casefold() in _BLOCKED
