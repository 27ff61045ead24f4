"""A workspace: config + mappings + templates + log, and the factories for its adapters.

The factories import adapters lazily so a workspace on Excel never imports
gspread, and one on Maildir never imports imapclient.

A running worker uses what is on disk at each pass (issue #17):
:meth:`Workspace.refresh` reloads ``mappings/customers.toml`` and
``mappings/campaigns.toml`` when their bytes changed, and keeps a broken
edit's ConfigError for the stages that need the file (templates are
refreshed by the send pass, :class:`~crm_automation.templating.Templates`).
``config.toml`` is not reloaded: it names the log, the sheet, the mailbox and
the lock, which a worker cannot swap under itself; a change is logged with a
warning that a restart is needed.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from crm_automation.config import Config, load_config
from crm_automation.errors import ConfigError
from crm_automation.mailbox.base import MailboxSource
from crm_automation.mapping import CAMPAIGNS_FILE, CUSTOMERS_FILE, Campaign, Mapping, load_campaigns, load_mapping
from crm_automation.sheets.base import SheetSource
from crm_automation.store.repo import Store
from crm_automation.templating import Templates
from crm_automation.transports.base import Transport

log = logging.getLogger("crm_automation")
_RELOAD_HINT = ("fix the file (`crm-automation check` lists every problem); the running worker uses it from the "
                "next pass")


def _stamp(path: Path) -> str:
    """A digest of a file's bytes ("" when it is missing or unreadable): an edit within one mtime tick counts."""
    try:
        return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    except OSError:
        return ""


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
    """Everything a run needs, loaded and validated.

    ``mapping_error`` / ``campaigns_error``: the file as it is on disk now
    cannot be loaded (a running worker's edit, see :meth:`refresh`); the
    last good ``mapping`` / ``campaigns`` are kept, and the stages that need
    the file report this error instead of running.
    """

    cfg: Config
    mapping: Mapping
    campaigns: list[Campaign]
    templates: Templates
    mapping_error: ConfigError | None = None
    campaigns_error: ConfigError | None = None
    stamps: dict[str, str] = field(default_factory=dict, repr=False)  # file -> digest as last loaded (or tried)

    @classmethod
    def load(cls, config_path: str | Path | None = None) -> Workspace:
        """Load config, mappings and templates; every problem reported at once."""
        cfg = load_config(config_path)
        # Stamped before loading: an edit saved while loading shows as a change at the next refresh.
        stamps = {str(p): _stamp(p) for p in (cfg.path, cfg.mappings / CUSTOMERS_FILE, cfg.mappings / CAMPAIGNS_FILE)}
        problems: list[str] = []
        mapping = None
        campaigns: list[Campaign] = []
        try:
            mapping = load_mapping(cfg.mappings)
        except ConfigError as e:
            problems += e.problems
        if mapping is not None:
            try:
                campaigns = load_campaigns(cfg.mappings, mapping, cfg.timezone, cfg.outbound.account_names)
            except ConfigError as e:
                problems += e.problems
        if problems:
            raise ConfigError.collect(problems)
        assert mapping is not None  # noqa: S101
        if not cfg.templates.is_dir() and campaigns:
            raise ConfigError(f"{cfg.templates}: template folder not found ([workspace] templates)")
        return cls(cfg=cfg, mapping=mapping, campaigns=campaigns, templates=Templates(cfg.templates, cfg.timezone),
                   stamps=stamps)

    def refresh(self) -> bool:
        """Reload the mappings that changed on disk; True when ``mapping`` was replaced (issue #17).

        Called by the worker at each pass. A broken edit keeps the last good
        mapping and campaigns and sets ``mapping_error`` / ``campaigns_error``
        (logged once per edit); the fix clears it at the next pass. The
        campaigns are validated again whenever the mapping changes, since they
        name its fields. ``config.toml`` is compared too, only to warn that a
        restart is needed (see the module docstring).
        """
        cfg_file = str(self.cfg.path)
        now = _stamp(self.cfg.path)
        if now != self.stamps.get(cfg_file, now):
            log.warning("%s changed on disk; the running worker keeps the settings it started with (log, sheet, "
                        "mailbox, outbound, schedule): restart it to use the new ones (Ctrl-C or SIGTERM, then "
                        "`crm-automation run` again)", self.cfg.path)
        self.stamps[cfg_file] = now
        cust_path, camp_path = self.cfg.mappings / CUSTOMERS_FILE, self.cfg.mappings / CAMPAIGNS_FILE
        cust, camp = _stamp(cust_path), _stamp(camp_path)
        cust_changed = cust != self.stamps.get(str(cust_path))
        camp_changed = camp != self.stamps.get(str(camp_path))
        if not cust_changed and not camp_changed:
            return False
        self.stamps[str(cust_path)], self.stamps[str(camp_path)] = cust, camp
        replaced = False
        if cust_changed:
            try:
                mapping = load_mapping(self.cfg.mappings)
            except ConfigError as e:
                self.mapping_error = ConfigError(e.message, problems=e.problems, hint=_RELOAD_HINT)
                log.warning("%s was edited and cannot be loaded; sync, send and write-back wait for the fix: %s",
                            cust_path, e)
                return False
            replaced = self.mapping_error is not None or mapping != self.mapping
            self.mapping, self.mapping_error = mapping, None
            log.info("%s reloaded", cust_path)
        elif self.mapping_error is not None:
            return False  # the campaigns are validated once the mapping is fixed (it changes again then)
        try:
            campaigns = load_campaigns(self.cfg.mappings, self.mapping, self.cfg.timezone,
                                       self.cfg.outbound.account_names)
        except ConfigError as e:
            self.campaigns_error = ConfigError(e.message, problems=e.problems, hint=_RELOAD_HINT)
            log.warning("%s cannot be loaded as it is now; sending waits for the fix: %s", camp_path, e)
            return replaced
        if camp_changed or self.campaigns_error is not None:
            log.info("%s reloaded", camp_path)
        self.campaigns, self.campaigns_error = campaigns, None
        return replaced

    @property
    def email_field(self) -> str | None:
        """The field that holds the customer's address: the mapping's ``email`` role (issue #18)."""
        return self.mapping.roles.email

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
        password = self.cfg.database_password  # PostgreSQL's, from database_password_env (None: libpq's sources)
        if read_only:
            return Store.open_readonly(self.cfg.database, password=password)
        return Store.open(self.cfg.database, password=password)

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

    def open_transport(self, account: str | None = None) -> Transport:
        """The adapter for ``[outbound] transport``; ``account``: that ``[[outbound.accounts]]`` entry's server.

        Without ``account``, ``[outbound]``'s own server, or the first listed
        account's when ``[outbound]`` has none (issue #20 part 3; recovery
        and the like only ask the transport what it can tell).
        """
        ob = self.cfg.outbound
        if ob.transport == "outbox":
            from crm_automation.transports.outbox import OutboxTransport

            return OutboxTransport.from_config(self.cfg)
        from crm_automation.transports.smtp import SmtpTransport

        if account is None and not ob.sends_itself:
            account = ob.accounts[0].name
        server = next((a for a in ob.accounts if a.name == account), None) if account is not None else None
        if account is not None and server is None:
            raise ConfigError(f"{self.cfg.path}: no [[outbound.accounts]] entry is named {account!r} "
                              f"(expected one of {', '.join(ob.account_names)})")
        return SmtpTransport.from_config(self.cfg, server, f"outbound.accounts[{account}]" if server else "outbound")
