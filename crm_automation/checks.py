"""``check``: validate everything a run needs, and report every problem at once.

Exit codes follow SPEC §7: 2 when config, mappings or templates are wrong
(nothing would run), 3 when the sheet or (with ``--connect``) a server
cannot be reached, 1 when rows of the sheet would be rejected, else 0. Cells
that ``sync`` would blank in rows it keeps (``on_invalid = "blank"``, issue
#11) are listed as the sheet check's ``notes`` and do not fail it.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from crm_automation.config import config_warnings
from crm_automation.errors import ConfigError, CrmError, ServiceError
from crm_automation.workspace import Workspace


def _item(name: str, problems: list[str], summary: str, hint: str | None = None) -> dict[str, Any]:
    return {"name": name, "ok": not problems, "summary": summary if not problems else
            f"{len(problems)} problem(s)", "problems": problems, "hint": hint}


def run_checks(config_path: str | None, *, connect: bool = False) -> dict[str, Any]:
    """Run every check; the result has ``checks`` (name, ok, summary, problems) and ``exit``."""
    checks: list[dict[str, Any]] = []
    try:
        ws = Workspace.load(config_path)
    except ConfigError as e:
        checks.append(_item("config and mappings", e.problems, "", e.hint))
        return {"checks": checks, "exit": 2}
    checks.append(_item("config and mappings", [], f"{ws.cfg.path.name}: {len(ws.mapping.fields)} fields, "
                        f"{len(ws.campaigns)} campaign(s)"))
    warnings = config_warnings(ws.cfg)  # shown, never failing (issue #17: {email} in unsubscribe_url)
    if warnings:
        checks[-1]["notes"] = [f"warning: {w}" for w in warnings]
    tpl = ws.check_templates()
    checks.append(_item("templates", tpl, f"{len(ws.templates.names())} template(s), every variable mapped"))
    code = 2 if tpl else 0
    try:
        sheet = ws.open_sheet()
        data = sheet.read()
        res = ws.mapping.apply(data, blank_invalid=True)
        rows = [str(e) for e in res.errors]
        item = _item("sheet", rows + res.warnings if rows else [],
                     f"{data.source}: {len(data)} rows, {len(res.customers)} valid"
                     + (f", {len(res.blanked)} cell(s) to be left blank" if res.blanked else "")
                     + (f"; warnings: {'; '.join(res.warnings)}" if res.warnings else ""))
        if res.blanked:
            item["notes"] = [str(b) for b in res.blanked]
        checks.append(item)
        if rows:
            code = max(code, 1)
    except ConfigError as e:
        checks.append(_item("sheet", e.problems, "", e.hint))
        code = 2
    except ServiceError as e:
        checks.append(_item("sheet", [str(e)], "", e.hint))
        code = max(code, 3)
    if connect:
        code = max(code, _connect(ws, checks))
    return {"checks": checks, "exit": code}


def _connect(ws: Workspace, checks: list[dict[str, Any]]) -> int:
    code = 0
    try:
        src = ws.open_mailbox()
        try:
            folders = {f: src.uidvalidity(f) for f in src.folders()}
        finally:
            with suppress(CrmError, OSError):
                src.close()
        checks.append(_item("mailbox", [], f"{src.name}: folders {', '.join(folders)} readable"))
    except CrmError as e:
        checks.append(_item("mailbox", [str(e)], "", e.hint))
        code = e.exit_code
    try:
        t = ws.open_transport()
        t.open()
        t.close()
        checks.append(_item("outbound", [], f"{t.name}: connected and logged in"))
    except CrmError as e:
        checks.append(_item("outbound", [str(e)], "", e.hint))
        code = max(code, e.exit_code)
    return code
