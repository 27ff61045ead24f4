"""A workspace: config + mappings + templates + log, and the factories for its adapters.

The factories import adapters lazily so a workspace on Excel never imports
gspread, and one on Maildir never imports imapclient.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from crm_automation.config import Config, load_config
from crm_automation.errors import ConfigError
from crm_automation.mailbox.base import MailboxSource
from crm_automation.mapping import Campaign, Mapping, load_campaigns, load_mapping
from crm_automation.models import FieldType
from crm_automation.sheets.base import SheetSource
from crm_automation.store.repo import Store
from crm_automation.templating import Templates
from crm_automation.transports.base import Transport


class Clock:
    """``now()`` for the whole run: the real time, or ``--now`` plus the time elapsed since start.

    Pure steps receive its values; nothing else reads the clock (STYLE: no
    bare ``datetime.now()``), so tests and ``--now`` previews are exact.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._start = start.astimezone(UTC) if start is not None else None
        self._t0 = time.monotonic()

    def now(self) -> datetime:
        """The current time, aware UTC."""
        if self._start is None:
            return datetime.now(UTC)
        return self._start + timedelta(seconds=time.monotonic() - self._t0)


@dataclass
class Workspace:
    """Everything a run needs, loaded and validated."""

    cfg: Config
    mapping: Mapping
    campaigns: list[Campaign]
    templates: Templates

    @classmethod
    def load(cls, config_path: str | Path | None = None) -> Workspace:
        """Load config, mappings and templates; every problem reported at once."""
        cfg = load_config(config_path)
        problems: list[str] = []
        mapping = None
        campaigns: list[Campaign] = []
        try:
            mapping = load_mapping(cfg.mappings)
        except ConfigError as e:
            problems += e.problems
        if mapping is not None:
            try:
                campaigns = load_campaigns(cfg.mappings, mapping, cfg.timezone)
            except ConfigError as e:
                problems += e.problems
        if problems:
            raise ConfigError.collect(problems)
        assert mapping is not None  # noqa: S101
        if not cfg.templates.is_dir() and campaigns:
            raise ConfigError(f"{cfg.templates}: template folder not found ([workspace] templates)")
        return cls(cfg=cfg, mapping=mapping, campaigns=campaigns, templates=Templates(cfg.templates, cfg.timezone))

    @property
    def email_field(self) -> str | None:
        """The field that holds the customer's address: the key if it is an email, else the first email field."""
        key = self.mapping.fields[self.mapping.key]
        if key.type is FieldType.EMAIL:
            return key.name
        for f in self.mapping.fields.values():
            if f.type is FieldType.EMAIL and f.name != "owner":
                return f.name
        return None

    def check_templates(self) -> list[str]:
        """Every campaign's templates exist and use only mapped fields."""
        problems: list[str] = []
        fields = set(self.mapping.fields)
        done: set[str] = set()
        for c in self.campaigns:
            for s in c.steps:
                if s.template in done:
                    continue
                done.add(s.template)
                problems += self.templates.check(s.template, fields)
        return problems

    def open_store(self, *, read_only: bool = False) -> Store:
        """The activity log (``read_only``: for dry runs and ``check``, which take no lock; issue #17)."""
        return Store.open_readonly(self.cfg.database) if read_only else Store.open(self.cfg.database)

    def open_sheet(self) -> SheetSource:
        """The adapter for ``[sheet] source``."""
        src = self.cfg.sheet.source
        if src == "csv":
            from crm_automation.sheets.csv import CsvSource

            return CsvSource.from_config(self.cfg)
        if src == "excel":
            from crm_automation.sheets.excel import ExcelSource

            return ExcelSource.from_config(self.cfg)
        from crm_automation.sheets.google import GoogleSource

        return GoogleSource.from_config(self.cfg)

    def open_mailbox(self) -> MailboxSource:
        """The adapter for ``[mailbox] source``."""
        if self.cfg.mailbox.source == "maildir":
            from crm_automation.mailbox.maildir import MaildirSource

            return MaildirSource.from_config(self.cfg)
        from crm_automation.mailbox.imap import ImapSource

        return ImapSource.from_config(self.cfg)

    def open_transport(self) -> Transport:
        """The adapter for ``[outbound] transport``."""
        if self.cfg.outbound.transport == "outbox":
            from crm_automation.transports.outbox import OutboxTransport

            return OutboxTransport.from_config(self.cfg)
        from crm_automation.transports.smtp import SmtpTransport

        return SmtpTransport.from_config(self.cfg)
