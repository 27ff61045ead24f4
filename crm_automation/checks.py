"""``check``: validate everything a run needs, and report every problem at once.

Exit codes follow SPEC §7: 2 when config, mappings or templates are wrong
(nothing would run), 3 when the sheet or (with ``--connect``) a server
cannot be reached, 1 when rows of the sheet would be rejected, else 0. Cells
that ``sync`` would blank in rows it keeps (``on_invalid = "blank"``, issue
#11) are listed as the sheet check's ``notes`` and do not fail it.

Issue #17: ``check`` finds what ``run`` would refuse without connecting
anywhere: the logins' secrets (the variables ``password_env`` names set and
not empty, ``oauth2_token_command``'s program installed, ``ca_file``
loadable), a Maildir that is not there, and an activity log that is not
this workspace's (the marker check ``run`` makes, here read-only). ``check``
writes nothing and takes no lock.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, NotRequired, TypedDict

from crm_automation.config import AccountSection, Config, MailboxSection, OutboundSection, config_warnings
from crm_automation.credentials import login_problems
from crm_automation.errors import ConfigError, CrmError, ServiceError
from crm_automation.mapping import CAMPAIGNS_FILE
from crm_automation.owner_digest import owner_problems
from crm_automation.store import location
from crm_automation.workspace import Workspace

if TYPE_CHECKING:
    from crm_automation.send.plan import CampaignOutlook


class CheckItem(TypedDict):
    """One line of ``check``'s report, as ``--json`` prints it (its keys are what scripts read)."""

    name: str
    ok: bool
    summary: str
    problems: list[str]
    hint: str | None
    notes: NotRequired[list[str]]  # shown, never failing: warnings, blanked cells, the plan's lines
    campaigns: NotRequired[dict[str, dict[str, object]]]  # ``--plan``: each campaign's outlook


class CheckReport(TypedDict):
    """What :func:`run_checks` returns: every item, and the exit status the worst of them means."""

    checks: list[CheckItem]
    exit: int


def _item(name: str, problems: list[str], summary: str, hint: str | None = None) -> CheckItem:
    return {"name": name, "ok": not problems, "summary": summary if not problems else
            f"{len(problems)} problem(s)", "problems": problems, "hint": hint}


def run_checks(config_path: str | None, *, connect: bool = False, plan: bool = False,
               now: datetime | None = None) -> CheckReport:
    """Run every check; the result has ``checks`` (name, ok, summary, problems) and ``exit``.

    ``plan`` adds what campaigns.toml, as it is now, means for the customers
    already in a sequence, read from the log without recording anything
    (issue #17); ``now`` is the time it is judged at (``--now``; without an
    offset, the workspace's local time).
    """
    checks: list[CheckItem] = []
    try:
        ws = Workspace.load(config_path)
    except ConfigError as e:
        checks.append(_item("config and mappings", e.problems, "", e.hint))
        return {"checks": checks, "exit": 2}
    checks.append(_item("config and mappings", [], f"{ws.cfg.path.name}: {len(ws.mapping.fields)} fields, "
                        f"{len(ws.campaigns)} campaign(s)"))
    # shown, never failing (issue #17: no {token} in unsubscribe_url; issue #19: tracking without [serve] public_url)
    warnings = config_warnings(ws.cfg) + tracking_warnings(ws)
    if warnings:
        checks[-1]["notes"] = [f"warning: {w}" for w in warnings]
    tpl = ws.check_templates()
    if ws.cfg.digest is not None:  # issue #21: the workspace's digest template, or the shipped one
        from crm_automation.compose import Composer

        tpl += Composer(ws.cfg, ws.templates).digest_problems()
    checks.append(_item("templates", tpl, f"{len(ws.templates.names())} template(s), every variable mapped"))
    code = 2 if tpl else 0
    try:
        sheet = ws.open_sheet()
        data = sheet.read()
        res = ws.mapping.apply(data, blank_invalid=True)
        rows = [str(e) for e in res.errors]
        item = _item("sheet", rows + res.warnings if rows else [],
                     f"{data.source}: {len(data)} rows, {len(res.customers)} valid"
                     + (f", {res.rejected_rows} rejected" if res.rejected_rows else "")
                     + (f", {len(res.blanked)} cell(s) to be left blank" if res.blanked else "")
                     + (f"; warnings: {'; '.join(res.warnings)}" if res.warnings else ""))
        if res.blanked:
            item["notes"] = [str(b) for b in res.blanked]
        checks.append(item)
        _owners(ws, [(c.key, c.data) for c in res.customers], checks)
        if rows:
            code = max(code, 1)
    except ConfigError as e:
        checks.append(_item("sheet", e.problems, "", e.hint))
        code = 2
    except ServiceError as e:
        checks.append(_item("sheet", [str(e)], "", e.hint))
        code = max(code, 3)
    code = max(code, _logins(ws.cfg, checks), _log(ws, checks))
    if ws.cfg.mailbox.source == "maildir":  # local: no connection needed to see that fetch would fail
        code = max(code, _mailbox(ws, checks))
    if connect:
        code = max(code, _connect(ws, checks))
    if not tpl and ws.campaigns:
        code = max(code, _plan(ws, checks, now, detail=plan))
    return {"checks": checks, "exit": code}


def tracking_warnings(ws: Workspace) -> list[str]:
    """Campaigns that ask for tracking which cannot work: no ``[serve] public_url`` to point the links at (issue #19).

    Not an error: the mail still goes, with its links untouched and no pixel.
    """
    if ws.cfg.serve.public_url:
        return []
    out = []
    for c in ws.campaigns:
        asked = [k for k, on in (("track_clicks", c.track_clicks), ("track_opens", c.track_opens)) if on]
        if asked:
            out.append(f"{ws.cfg.mappings / CAMPAIGNS_FILE}: campaign {c.id!r} has {' and '.join(asked)} = true, "
                       f"but [serve] public_url is not set in {ws.cfg.path.name}: its tracking cannot work, and its "
                       "mail is sent with its links untouched (expected public_url = the https address where "
                       "`crm-automation serve` is published, e.g. \"https://crm.example.com\")")
    return out


def _plan(ws: Workspace, checks: list[CheckItem], now: datetime | None, *, detail: bool) -> int:
    """The log read as the next send pass would read it, nothing recorded: an unclear edit would hold a campaign.

    Always run, so plain ``check`` names a held campaign as ``run`` would
    (issue #17); ``detail`` (``--plan``) adds the edits since the last pass and
    each step's outlook.
    """
    from crm_automation.compose import Composer
    from crm_automation.rekey import key_change
    from crm_automation.send.stage import SendPass
    from crm_automation.stage import StageContext
    from crm_automation.store import identity
    from crm_automation.workspace import Clock

    if not _log_may_exist(ws):
        checks.append(_item("plan", [], "no activity log yet: the first pass starts every campaign afresh"))
        return 0
    if now is not None and now.tzinfo is None:
        now = now.replace(tzinfo=ws.cfg.timezone)  # --now without an offset is the workspace's local time
    store = ws.open_store(read_only=True)
    try:
        # What holds the whole send stage first: a changed key, a sheet showing mail this log never sent.
        blocked = [e for e in (key_change(store.key_field(), ws.mapping) if store.has_customers() else None,
                               identity.sheet_evidence_hold(store, ws.cfg)) if e is not None]
        ctx = StageContext(store, Clock(now))
        found = SendPass(ws, ctx, Composer(ws.cfg, ws.templates)).edit_outlook()
    except CrmError as e:
        checks.append(_item("plan", [str(e)], "", e.hint))
        return e.exit_code
    finally:
        store.close()
    if blocked:
        checks.append(_item("plan", [str(e) for e in blocked], "", blocked[0].hint))
        return 2
    held = [line for c in found.values() for line in c.held]
    changed = sum(bool(c.changes) for c in found.values())
    item = _item("plan", held, f"{len(found)} campaign(s), {changed} edited since the last pass, none held",
                 "say what each held edit meant in campaigns.toml (the message names the key to add)" if held
                 else None)
    if detail:
        item["campaigns"] = {k: c.to_json() for k, c in found.items()}
        item["notes"] = [f"{cid}: {line}" for cid, c in found.items() for line in _describe(c)]
    checks.append(item)
    return 2 if held else 0


def _describe(c: CampaignOutlook) -> list[str]:
    """Human lines for one campaign: its edits, then each step's outlook for customers already in it."""
    lines = [*c.changes, *c.notes]
    for key, s in c.steps.items():
        parts = [f"{n} {what}" for n, what in ((s.had, "had it"), (s.due_now, "get it now"),
                                               (s.later, "get it when due"), (s.past, "are past it (skipped)"),
                                               (s.held, "held")) if n]
        if parts:
            lines.append(f"step {key!r}: " + ", ".join(parts))
    return lines


def _logins(cfg: Config, checks: list[CheckItem]) -> int:
    """The servers' logins as ``run`` will need them: secrets present, token program installed, CA file loadable."""
    problems: list[str] = []
    servers: list[tuple[str, MailboxSection | OutboundSection | AccountSection]] = []
    if cfg.mailbox.source == "imap":
        servers.append(("mailbox", cfg.mailbox))
    if cfg.outbound.transport == "smtp":
        if cfg.outbound.sends_itself:
            servers.append(("outbound", cfg.outbound))
        servers += [(f"outbound.accounts[{a.name}]", a) for a in cfg.outbound.accounts]  # issue #20 part 3
    if not servers:
        return 0
    for section, s in servers:
        problems += login_problems(section, s)
        if s.ca_file:
            ca = cfg.resolve(s.ca_file)
            try:
                ssl.create_default_context(cafile=str(ca))
            except OSError as e:  # ssl.SSLError is an OSError
                problems.append(f"{cfg.path}: {section}.ca_file = {s.ca_file!r}: {ca} cannot be loaded "
                                f"({e.strerror or e}; expected a PEM file of trusted CA certificates)")
    names = " and ".join(section for section, _ in servers)
    checks.append(_item("logins", problems, f"{names}: credentials found (not tried; --connect logs in)",
                        "export the variables in the environment crm-automation runs in (cron and services do "
                        "not read your shell's profile)" if problems else None))
    return 2 if problems else 0


def _log(ws: Workspace, checks: list[CheckItem]) -> int:
    """The activity log is this workspace's and its folder is writable: what every writing verb checks first."""
    from crm_automation.store import identity

    db = ws.cfg.database
    problems = _log_folder_problems(db) if isinstance(db, Path) else []
    try:
        store = ws.open_store(read_only=True)
        try:
            identity.guard(store, ws.cfg, write=False)
            sent = store.sent_count()
            version = store.schema_version()
            created = (isinstance(db, Path) and db.exists()) or store.dialect.name == "postgresql"  # else a stand-in
        finally:
            store.close()
    except ConfigError as e:
        checks.append(_item("activity log", [*problems, *e.problems], "", e.hint))
        return 2
    except CrmError as e:
        checks.append(_item("activity log", [*problems, str(e)], "", e.hint))
        return max(e.exit_code, 3)
    # Which engine and schema version (issue #20); a URL never with a password (config refuses one anyway).
    where = f"SQLite {db.name}" if isinstance(db, Path) else f"PostgreSQL {location.shown(db)}"
    state = f"schema version {version}, {sent} message(s) sent" if created else \
        "not created yet (the first run creates it)"
    checks.append(_item("activity log", problems, f"{where}: this workspace's log, {state}"))
    return 3 if problems else 0


def _log_may_exist(ws: Workspace) -> bool:
    """False only when the SQLite file is not there yet; a server's database is asked when opened."""
    db = ws.cfg.database
    return not isinstance(db, Path) or db.exists()


def _log_folder_problems(db: Path) -> list[str]:
    """The SQLite file's folder (or the first existing parent) and the file must be writable by this user."""
    folder = db.parent
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path(folder.anchor))
    if not os.access(existing, os.W_OK | os.X_OK) or (db.exists() and not os.access(db, os.R_OK | os.W_OK)):
        what = db if db.exists() else existing
        return [f"{what}: not writable by this user, so the activity log {db} cannot be written "
                f"(expected a folder the user running crm-automation can write; [workspace] database)"]
    return []


def _owners(ws: Workspace, rows: list[tuple[str, Mapping[str, object]]], checks: list[CheckItem]) -> None:
    """Owners in the sheet never mailed a digest (issue #21): not an address, or suppressed. Shown, never failing.

    Only with ``[digest]`` and an owner role. The suppression list is read
    from the log when there is one (read-only).
    """
    owner = ws.mapping.roles.owner
    if ws.cfg.digest is None or owner is None:
        return
    suppressed: set[str] = set()
    if _log_may_exist(ws):
        with suppress(CrmError):
            store = ws.open_store(read_only=True)
            try:
                suppressed = set(store.suppressions())
            finally:
                store.close()
    refused = owner_problems(((k, data.get(owner)) for k, data in rows), suppressed)
    item = _item("owner digests", [], f"{len(refused)} owner(s) not mailed" if refused else "every owner mailable")
    if refused:
        item["notes"] = [p.line for p in refused]
    checks.append(item)


def _mailbox(ws: Workspace, checks: list[CheckItem]) -> int:
    """A Maildir's folders exist (``fetch`` reads them; ``--connect`` does the same for IMAP)."""
    try:
        src = ws.open_mailbox()
        try:
            folders = {f: src.uidvalidity(f) for f in src.folders()}
        finally:
            with suppress(CrmError, OSError):
                src.close()
    except CrmError as e:
        checks.append(_item("mailbox", [str(e)], "", e.hint))
        return e.exit_code
    checks.append(_item("mailbox", [], f"{src.name}: folders {', '.join(folders)} readable"))
    return 0


def _connect(ws: Workspace, checks: list[CheckItem]) -> int:
    """Connect and log in to the mailbox and every SMTP account: one line each (issue #20 part 3)."""
    code = _mailbox(ws, checks) if ws.cfg.mailbox.source != "maildir" else 0
    ob = ws.cfg.outbound
    accounts: list[str | None] = [None] if ob.sends_itself else []
    accounts += [a.name for a in ob.accounts] if ob.transport == "smtp" else []
    for account in accounts:
        name = "outbound" if account is None else f"outbound account {account}"
        try:
            t = ws.open_transport() if account is None else ws.open_transport(account)
            t.open()
            t.close()
            checks.append(_item(name, [], f"{t.name}: connected and logged in"
                                + ("" if account is None else f" as {_login_of(ob, account)}")))
        except CrmError as e:
            checks.append(_item(name, [str(e)], "", e.hint))
            code = max(code, e.exit_code)
    return code


def _login_of(ob: OutboundSection, account: str) -> str:
    """The account's login name (or server) for ``check``'s line: which account this line is about."""
    a = next(x for x in ob.accounts if x.name == account)
    return f"{a.username or 'no login'} on {a.host}:{a.port or 'default port'}"
