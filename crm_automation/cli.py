"""The command line (SPEC §7): each verb parses its arguments, calls one use case, and renders its result.

Only this module exits. ``CrmError`` becomes a message on stderr and its
exit code (2 config/usage, 1 some items failed, 3 a service is down);
anything else is a bug and keeps its traceback.

What a verb shows comes from :mod:`crm_automation.app` (issue #18): this
module opens no store and composes no query. It imports at the top only
click and the standard library; each verb imports what it needs when it
runs, so ``crm-automation --help`` starts in a tenth of a second (issue #18
item 7: 0.33 s when every verb's modules were loaded up front).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypedDict, TypeVar, Unpack

import click

from crm_automation.errors import ConfigError, CrmError, StorageError

if TYPE_CHECKING:
    from crm_automation.app import pipeline, reports
    from crm_automation.app.results import JsonObject, JsonValue
    from crm_automation.checks import CheckItem
    from crm_automation.fleet import Fleet
    from crm_automation.stage import Progress, StageResult
    from crm_automation.worker import Worker
    from crm_automation.workspace import Clock, Workspace

log = logging.getLogger("crm_automation")
_F = TypeVar("_F", bound=Callable[..., object])


class _GlobalOptions(TypedDict, total=False):
    """The global options every verb accepts (:func:`_global`), as click passes them."""

    config_: str | None
    now_: str | None
    json_: bool | None
    accept_new_log_: bool | None
    verbose_: int
    quiet_: int


class Ctx:
    """Global options shared by every verb."""

    def __init__(self) -> None:
        self.config: str | None = None
        self.now: datetime | None = None
        self.json = False
        self.verbosity = 0
        self.accept_new_log = False

    def clock(self, ws: Workspace | None = None) -> Clock:
        """The run's clock (``--now`` or the real time); a ``--now`` without offset is workspace local time."""
        from crm_automation.workspace import Clock

        now = self.now
        if now is not None and now.tzinfo is None:
            now = now.replace(tzinfo=ws.cfg.timezone) if ws is not None else now.replace(tzinfo=UTC)
        return Clock(now)


def _parse_now(value: str | None) -> datetime | None:
    """``--now``: an ISO 8601 time, or ``+3d`` / ``+12h`` / ``+30m`` from the real time now.

    Why the relative form: the quickstart's "what is due in three days"
    must work on whatever day someone follows it (issue #17); a fixed date
    in the README goes stale the day it passes.
    """
    if not value:
        return None
    if value.startswith("+"):
        from crm_automation.config import parse_duration
        from crm_automation.workspace import Clock

        ahead = parse_duration(value[1:])
        if ahead is None:
            msg = f"{value!r} is not a time ahead (expected +N with s, m, h or d, e.g. +3d or +36h)"
            raise click.BadParameter(msg)
        return Clock().now() + ahead
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        msg = (f"{value!r} is not a date and time (expected ISO 8601, e.g. 2026-12-01T09:30 or "
               "2026-12-01T09:30+08:00, or a time ahead of now such as +3d)")
        raise click.BadParameter(msg) from None
    return dt


def _global(f: _F) -> _F:
    """Accept the global options after the verb as well as before it."""
    f = click.option("--config", "config_", metavar="PATH", help="config.toml (default: $CRM_AUTOMATION_CONFIG, "
                     "else ./config.toml)")(f)
    f = click.option("--now", "now_", metavar="DATETIME", help="act as if it were this time (local time of the "
                     "workspace if no offset), or +3d / +12h from now")(f)
    f = click.option("--json", "json_", is_flag=True, default=None, help="machine-readable output")(f)
    f = click.option("--accept-new-log", "accept_new_log_", is_flag=True, default=None,
                     help="use the activity log as it is even if it is not the one this workspace was using "
                          "(deleted, replaced or emptied): campaigns that already ran may mail customers again")(f)
    f = click.option("-v", "--verbose", "verbose_", count=True, help="more log lines")(f)
    return click.option("-q", "--quiet", "quiet_", count=True, help="fewer log lines")(f)


def _apply(ctx: click.Context, /, kw: _GlobalOptions) -> Ctx:
    """Merge this command's global options into the shared :class:`Ctx` (a later one wins)."""
    o: Ctx = ctx.ensure_object(Ctx)
    if kw.get("config_"):
        o.config = kw.get("config_")
    if kw.get("now_"):
        o.now = _parse_now(kw.get("now_"))
    if kw.get("json_"):
        o.json = True
    if kw.get("accept_new_log_"):
        o.accept_new_log = True
    o.verbosity += (kw.get("verbose_") or 0) - (kw.get("quiet_") or 0)
    _setup_logging(o.verbosity)
    return o


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log lines to whatever ``sys.stderr`` is now (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _setup_logging(verbosity: int) -> None:
    level = logging.INFO if verbosity == 0 else (logging.DEBUG if verbosity > 0 else logging.WARNING)
    root = logging.getLogger("crm_automation")
    root.setLevel(level)
    if not root.handlers:
        h: logging.Handler = _StderrHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        root.addHandler(h)
    root.propagate = False
    if verbosity <= 0:
        for name in ("imapclient", "urllib3", "google", "gspread"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _emit(o: Ctx, data: JsonValue | Mapping[str, object], human: Callable[[], None]) -> None:
    if o.json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))
    else:
        human()


def _finish_with_problems(ctx: click.Context, o: Ctx, data: JsonObject, summary: str,
                          problems: Sequence[str]) -> None:
    """Print a verb's summary (and each problem on stderr), then exit 1 if there were problems (SPEC §7)."""

    def human() -> None:
        click.echo(summary)
        for p in problems:
            click.echo(f"  - {p}", err=True)

    _emit(o, data, human)
    ctx.exit(1 if problems else 0)


def _progress_factory() -> Progress:
    """A rich progress bar on a terminal; plain log lines every 500 items otherwise."""
    if sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        class _Bar:
            def __init__(self, desc: str, total: int | None) -> None:
                self.p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), transient=True)
                self.p.start()
                self.t = self.p.add_task(desc, total=total)

            def advance(self, n: int = 1) -> None:
                self.p.advance(self.t, n)

            def close(self) -> None:
                self.p.stop()

        return _Bar

    class _Lines:
        def __init__(self, desc: str, total: int | None) -> None:
            self.desc, self.total, self.n = desc, total, 0

        def advance(self, n: int = 1) -> None:
            self.n += n
            if self.n % 500 == 0:
                log.info("%s: %d%s", self.desc, self.n, f"/{self.total}" if self.total else "")

        def close(self) -> None:
            if self.n >= 500:
                log.info("%s: %d done", self.desc, self.n)

    return _Lines


def _worker(o: Ctx, ws: Workspace, stop: threading.Event | None = None, *, read_only: bool = False,
            fleet: Fleet | None = None) -> Worker:
    from crm_automation.worker import Worker

    return Worker(ws, clock=o.clock(ws), progress=_progress_factory(), stop=stop, accept_new_log=o.accept_new_log,
                  read_only=read_only, fleet=fleet)


@contextmanager
def _locked_worker(o: Ctx, stop: threading.Event | None = None, *, lock: bool = True) -> Iterator[Worker]:
    """Load the workspace, take its lock, and yield a Worker (closed afterwards): the frame of every stage verb.

    ``lock=False`` (dry runs, issue #17): no lock, and the log opened read-only, so
    the dry run works while a worker runs and can write nothing.
    """
    from crm_automation.workspace import Workspace

    ws = Workspace.load(o.config)
    if not lock:
        w = _worker(o, ws, stop, read_only=True)
        try:
            yield w
        finally:
            w.close()
        return
    from crm_automation.app.access import WorkspaceLock

    with WorkspaceLock(ws, stop) as taken:  # joins the workspace's workers (issue #20)
        w = _worker(o, ws, taken.fleet.stop, fleet=taken.fleet)
        try:
            yield w
        finally:
            w.close()


def _print_results(o: Ctx, results: list[StageResult], stop: _StopFlag | None = None) -> int:
    """Print the stages' results; the exit status, 128 + the signal's number if a signal stopped the work."""
    code = max((r.exit_code() for r in results), default=0)
    signum = stop.signum if stop is not None else None
    if signum is not None:
        # cron and systemd must tell a cut-short run from a complete one (issue #17): the shell's 128 + N.
        code = 128 + signum
    if o.json:
        out: JsonObject = {"ok": code == 0, "exit": code, "stages": [r.to_json() for r in results]}
        if signum is not None:
            out["interrupted"] = signal.Signals(signum).name
        click.echo(json.dumps(out, ensure_ascii=False, indent=2, default=str))
        return code
    if signum is not None:
        click.echo(f"interrupted by {signal.Signals(signum).name}: stopped after the current item; the rest waits "
                   f"for the next run (exit {code})", err=True)
    for r in results:
        stats = ", ".join(f"{k} {v}" for k, v in r.stats.items() if not isinstance(v, (list, dict)) or v)
        state = "ok" if r.ok else ("FAILED" if r.error else "done with problems")
        click.echo(f"{r.job}: {state}" + (f" ({stats})" if stats else ""))
        for p in r.problems[:50]:
            click.echo(f"  - {p}", err=True)
        if len(r.problems) > 50:
            click.echo(f"  ... and {len(r.problems) - 50} more", err=True)
        for n in r.notes[:50]:
            click.echo(f"  - {n}", err=True)
        if len(r.notes) > 50:
            click.echo(f"  ... and {len(r.notes) - 50} more", err=True)
        if r.error is not None:
            click.echo(f"  error: {r.error}", err=True)
            if r.error.hint:
                click.echo(f"  hint: {r.error.hint}", err=True)
    return code


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@_global
@click.version_option(package_name="crm-automation")
@click.pass_context
def cli(ctx: click.Context, /, **kw: Unpack[_GlobalOptions]) -> None:
    """crm-automation: a shared sheet as customer master, a mailbox as activity log, campaigns sent once.

    Start with `crm-automation run --once --config config.example.toml`.
    """
    _apply(ctx, kw)


@cli.command()
@_global
@click.option("--connect", is_flag=True, help="also log in to the mailbox and the SMTP server")
@click.option("--plan", "plan_", is_flag=True, help="also show what campaigns.toml, as it is now, means for "
              "customers already in a sequence (edits since the last pass, holds); records nothing")
@click.pass_context
def check(ctx: click.Context, /, connect: bool, plan_: bool, **kw: Unpack[_GlobalOptions]) -> None:
    """Validate config, mappings, templates and the sheet; report every problem at once."""
    o = _apply(ctx, kw)
    from crm_automation.checks import run_checks

    report = run_checks(o.config, connect=connect, plan=plan_, now=o.now)
    _emit(o, report, lambda: _print_check(report["checks"]))
    ctx.exit(report["exit"])


def _print_check(checks: list[CheckItem]) -> None:
    for item in checks:
        mark = "ok " if item["ok"] else "ERR"
        click.echo(f"[{mark}] {item['name']}: {item['summary']}")
        for p in item.get("problems", [])[:100]:
            click.echo(f"      - {p}")
        for n in item.get("notes", [])[:100]:
            click.echo(f"      - {n}")
        if item.get("hint"):
            click.echo(f"      hint: {item['hint']}")


@cli.command()
@_global
@click.pass_context
def sync(ctx: click.Context, /, **kw: Unpack[_GlobalOptions]) -> None:
    """Read the sheet, validate rows, record new customers and field changes."""
    o = _apply(ctx, kw)
    with _locked_worker(o) as w:
        ctx.exit(_print_results(o, [w.sync()]))


@cli.command()
@_global
@click.pass_context
def fetch(ctx: click.Context, /, **kw: Unpack[_GlobalOptions]) -> None:
    """Read new mail and log each message exactly once."""
    o = _apply(ctx, kw)
    stop = _install_signals()
    with _locked_worker(o, stop) as w:
        ctx.exit(_print_results(o, [w.fetch()], stop))


@cli.command()
@_global
@click.option("--dry-run", is_flag=True, help="render and report what would be sent; send and record nothing")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="send at most N messages in this pass")
@click.pass_context
def send(ctx: click.Context, /, dry_run: bool, limit: int | None, **kw: Unpack[_GlobalOptions]) -> None:
    """Queue and send what is due, exactly once each."""
    o = _apply(ctx, kw)
    stop = _install_signals()
    # A dry run writes nothing (a read-only log), so it needs no lock and works beside a worker (issue #17).
    with _locked_worker(o, stop, lock=not dry_run) as w:
        # A real send fetches first and sends only on a fresh inbound view (issue #9).
        results = [w.send(dry_run=True, limit=limit)] if dry_run else w.fetch_and_send(limit=limit)
        res = results[-1]
        if dry_run and not o.json:
            label = {"queued": "would send", "skipped": "would skip"}
            for d in res.details[:200]:
                what = label.get(d["status"], d["status"])
                click.echo(f"  {what:<10} {d['campaign']}/{d['step']} -> {d['customer']} "
                           f"{d.get('subject') or d.get('reason') or ''}")
            click.echo("dry run: nothing was sent or recorded. Run without --dry-run to send.")
        ctx.exit(_print_results(o, results, stop))


class _StopFlag(threading.Event):
    """The worker's stop flag, remembering which signal set it (None: none did)."""

    def __init__(self) -> None:
        super().__init__()
        self.signum: int | None = None


class _Aborted(KeyboardInterrupt):
    """A second SIGINT/SIGTERM: stop at once (``main`` exits 128 + the signal's number)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _install_signals() -> _StopFlag:
    """SIGINT/SIGTERM set a flag checked between items: the current message finishes, then the worker stops."""
    stop = _StopFlag()

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise _Aborted(signum)
        log.warning("stopping after the current item (signal %s); press Ctrl-C again to abort", signum)
        stop.signum = signum
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
    return stop


@cli.command()
@_global
@click.option("--once", is_flag=True, help="run one cycle (sync, fetch, send, write-back) and exit")
@click.pass_context
def run(ctx: click.Context, /, once: bool, **kw: Unpack[_GlobalOptions]) -> None:
    """The scheduled worker: intervals from [schedule]; one cycle at a time; stops cleanly on Ctrl-C/SIGTERM."""
    o = _apply(ctx, kw)
    stop = _install_signals()
    with _locked_worker(o, stop) as w:
        if once:  # cut short by a signal: 130 (SIGINT) or 143 (SIGTERM), so cron can tell (issue #17)
            ctx.exit(_print_results(o, w.run_once(), stop))
        sc = w.ws.cfg.schedule
        log.info("worker started (sync every %s, fetch every %s, send every %s); Ctrl-C to stop",
                 sc.sync_every, sc.fetch_every, sc.send_every)
        def show(r: StageResult) -> None:
            _print_results(o, [r])

        w.run_forever(on_result=show)
        log.info("worker stopped")


@cli.command()
@_global
@click.argument("template")
@click.option("--customer", "key", required=True, help="the customer's key (e.g. their email)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="write the message to FILE.eml")
@click.option("--campaign", default="preview", help="campaign id shown to the template")
@click.pass_context
def preview(ctx: click.Context, /, template: str, key: str, out: Path | None, campaign: str,
            **kw: Unpack[_GlobalOptions]) -> None:
    """Render one email for one customer, to the terminal or an .eml file. Sends nothing."""
    o = _apply(ctx, kw)
    from crm_automation.workspace import Workspace

    w = _worker(o, Workspace.load(o.config), read_only=True)
    try:
        composed = w.preview(template, key, campaign)
    finally:
        w.close()
    data, subject, text = composed.data, composed.subject, composed.text
    if out is not None:
        from crm_automation.files import write_output

        write_output(out, data, what="the previewed message")
        _emit(o, {"out": str(out), "subject": subject}, lambda: click.echo(f"wrote {out} ({subject})"))
        return
    _emit(o, {"subject": subject, "text": text, "eml": data.decode("utf-8", "replace")},  # RFC 6532 headers
          lambda: click.echo(f"Subject: {subject}\n\n{text}"))


@cli.group(invoke_without_command=True)
@_global
@click.option("--csv", "as_csv", is_flag=True, help="CSV output")
@click.pass_context
def report(ctx: click.Context, /, as_csv: bool, **kw: Unpack[_GlobalOptions]) -> None:
    """Per campaign and step: queued, sent, failed, uncertain, skipped, bounced, replied, unsubscribed.

    `report pipeline`: the pipeline by stage and owner (issue #21).
    """
    o = _apply(ctx, kw)
    if ctx.invoked_subcommand is not None:
        if as_csv:
            raise click.UsageError(f"put --csv after `{ctx.invoked_subcommand}`: report {ctx.invoked_subcommand} "
                                   "--csv")
        return
    from crm_automation.app import reports
    from crm_automation.workspace import Workspace

    ws = Workspace.load(o.config)
    result = reports.report(ws, o.clock(ws).now())
    if as_csv:
        click.echo(_funnel_csv(result.funnel), nl=False)
        return
    _emit(o, result.to_json(), lambda: _print_report(result))


_FUNNEL_COLUMNS = ("campaign", "step", "queued", "sent", "failed", "uncertain", "skipped", "bounced", "replied",
                   "unsubscribed", "reply_rate")


def _funnel_csv(funnel: reports.Funnel) -> str:
    import csv
    import io

    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=_FUNNEL_COLUMNS, extrasaction="ignore")
    wr.writeheader()
    wr.writerows(r.to_dict() for r in funnel.rows)
    return buf.getvalue()


def _print_report(result: reports.Report) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(*_FUNNEL_COLUMNS)
    for r in result.funnel.rows:
        row = r.to_dict()
        t.add_row(*(f"{row[c]:.1%}" if c == "reply_rate" else str(row[c]) for c in _FUNNEL_COLUMNS))
    console = Console(width=140)
    console.print(t)
    if result.attention:
        console.print(f"{len(result.attention)} send(s) need attention (`crm-automation requeue --id N` to send "
                      "again):")
        for a in result.attention:
            console.print(f"  #{a.id} {a.status.value} {a.campaign}/{a.step} {a.customer}: {a.error}")
    for o in result.owners:  # issue #21: owners never mailed a digest
        console.print(o.line, markup=False, highlight=False)


@cli.command()
@_global
@click.pass_context
def status(ctx: click.Context, /, **kw: Unpack[_GlobalOptions]) -> None:
    """The workers of this workspace: alive and recently stopped, host, pid, heartbeat, stage, claimed sends."""
    o = _apply(ctx, kw)
    from crm_automation.app.status import fleet_status
    from crm_automation.workspace import Workspace

    result = fleet_status(Workspace.load(o.config))  # the wall clock: liveness is a fact of the present
    _emit(o, result.to_json(), lambda: click.echo("\n".join(result.lines())))


@report.command("pipeline")
@_global
@click.option("--csv", "as_csv", is_flag=True, help="the stage x owner table as CSV")
@click.option("--since", metavar="DATE", help="also count moves between stages since DATE (workspace local time "
              "if no offset), e.g. 2026-11-01")
@click.pass_context
def report_pipeline(ctx: click.Context, /, as_csv: bool, since: str | None, **kw: Unpack[_GlobalOptions]) -> None:
    """Per stage x owner: customers, stale, median days in stage, replies in 30 days; owners' first responses."""
    o = _apply(ctx, kw)
    from crm_automation.app import pipeline
    from crm_automation.workspace import Workspace

    ws = Workspace.load(o.config)
    start = _parse_since(since, ws)
    result = pipeline.pipeline(ws, o.clock(ws).now(), since=start)
    if as_csv:
        click.echo(_pipeline_csv(result), nl=False)
        return
    _emit(o, result.to_json(), lambda: _print_pipeline(result, ws))


def _parse_since(value: str | None, ws: Workspace) -> datetime | None:
    """``--since``: an ISO date or date and time; without an offset, workspace local time (a date: its midnight)."""
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (expected ISO 8601, e.g. 2026-11-01 or 2026-11-01T09:00)",
                                 param_hint="--since") from None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=ws.cfg.timezone)


_PIPELINE_COLUMNS = ("stage", "owner", "customers", "stale", "median_days_in_stage", "replies_30d")


def _pipeline_csv(result: pipeline.Pipeline) -> str:
    import csv
    import io

    buf = io.StringIO()
    wr = csv.writer(buf)
    wr.writerow(_PIPELINE_COLUMNS)
    for c in result.cells:
        row = c.to_json()
        wr.writerow(["" if row[k] is None else row[k] for k in _PIPELINE_COLUMNS])
    return buf.getvalue()


def _print_pipeline(result: pipeline.Pipeline, ws: Workspace) -> None:
    from rich.console import Console
    from rich.table import Table

    def cell(value: object) -> str:
        return "-" if value is None else str(value)

    console = Console(width=140)
    t = Table("stage", "owner", "customers", "stale", "median days in stage", "replies (30 d)",
              title=f"pipeline at {result.at.astimezone(ws.cfg.timezone):%Y-%m-%d %H:%M}")
    for c in result.cells:
        t.add_row(cell(c.stage), cell(c.owner), str(c.customers), str(c.stale), cell(c.median_days_in_stage),
                  str(c.replies))
    console.print(t)
    o = Table("owner", "customers", "stale", "replies (30 d)", "answered", "unanswered",
              "median first response (working h)", title="owners, last 30 days")
    for w in result.owners:
        o.add_row(cell(w.owner), str(w.customers), str(w.stale), str(w.replies), str(w.answered),
                  str(w.unanswered), cell(w.median_first_response_hours))
    console.print(o)
    if result.since is None:
        return
    since = f"{result.since.astimezone(ws.cfg.timezone):%Y-%m-%d %H:%M}"
    f = Table("stage", "entered", "of them new", title=f"funnel since {since}")
    for s in result.funnel:
        f.add_row(s.stage, str(s.entered), str(s.added))
    console.print(f)
    m = Table("from", "to", "moves", title=f"moves between stages since {since}")
    for mv in result.moves:
        m.add_row(cell(mv.from_stage), cell(mv.to_stage), str(mv.count))
    console.print(m)


@cli.command()
@_global
@click.argument("key")
@click.pass_context
def timeline(ctx: click.Context, /, key: str, **kw: Unpack[_GlobalOptions]) -> None:
    """One customer's activities, oldest first."""
    o = _apply(ctx, kw)
    from crm_automation.app import reports
    from crm_automation.workspace import Workspace

    ws = Workspace.load(o.config)
    result = reports.timeline(ws, key)

    def human() -> None:
        for e in result.entries:
            when = e.activity.occurred_at.astimezone(ws.cfg.timezone)
            click.echo(f"{when:%Y-%m-%d %H:%M}  {e.activity.kind.value:<15} {e.headline}")
            for line in e.excerpt:
                click.echo(f"{'':19}| {line}")

    _emit(o, result.to_json(), human)


@cli.group()
def suppress() -> None:
    """Manage the suppression list (addresses never mailed)."""


@suppress.command("add")
@_global
@click.argument("emails", nargs=-1, required=True)
@click.option("--reason", type=click.Choice(["manual", "unsubscribed", "bounced"]), default="manual",
              help="unsubscribed/bounced also set the customer's email status")
@click.pass_context
def suppress_add(ctx: click.Context, /, emails: tuple[str, ...], reason: str, **kw: Unpack[_GlobalOptions]) -> None:
    """Add addresses."""
    o = _apply(ctx, kw)
    from crm_automation.app import suppressions
    from crm_automation.workspace import Workspace

    ws = Workspace.load(o.config)
    result = suppressions.suppress(ws, emails, reason, o.clock(ws).now())
    _finish_with_problems(ctx, o, result.to_json(), f"added {len(result.added)} of {len(emails)}",
                          [f"not added: {r}" for r in result.rejected])


@suppress.command("remove")
@_global
@click.argument("emails", nargs=-1, required=True)
@click.pass_context
def suppress_remove(ctx: click.Context, /, emails: tuple[str, ...], **kw: Unpack[_GlobalOptions]) -> None:
    """Remove addresses (they may be mailed again)."""
    o = _apply(ctx, kw)
    from crm_automation.app import suppressions
    from crm_automation.workspace import Workspace

    result = suppressions.unsuppress(Workspace.load(o.config), emails)
    _emit(o, result.to_json(), lambda: click.echo(f"removed {len(result.removed)} of {len(emails)}"))


@suppress.command("list")
@_global
@click.pass_context
def suppress_list(ctx: click.Context, /, **kw: Unpack[_GlobalOptions]) -> None:
    """List suppressed addresses."""
    o = _apply(ctx, kw)
    from crm_automation.app import suppressions
    from crm_automation.app.results import utc_text
    from crm_automation.workspace import Workspace

    result = suppressions.suppressions(Workspace.load(o.config))

    def human() -> None:
        for i in result.items:
            click.echo(f"{i.email:<40} {i.reason:<13} {utc_text(i.at)} {i.source}")

    _emit(o, result.to_json(), human)


@cli.command()
@_global
@click.option("--id", "ids", type=int, multiple=True, help="send id (from `report`); repeatable")
@click.option("--all-uncertain", is_flag=True, help="every uncertain send")
@click.option("--all-failed", is_flag=True, help="every failed send")
@click.pass_context
def requeue(ctx: click.Context, /, ids: tuple[int, ...], all_uncertain: bool, all_failed: bool,
            **kw: Unpack[_GlobalOptions]) -> None:
    """Queue uncertain or failed sends again, on purpose (they go out on the next `send`)."""
    o = _apply(ctx, kw)
    if not ids and not all_uncertain and not all_failed:
        raise ConfigError("requeue: name sends with --id N, or use --all-uncertain / --all-failed")
    from crm_automation.app import sends
    from crm_automation.workspace import Workspace

    result = sends.requeue(Workspace.load(o.config), ids, uncertain=all_uncertain, failed=all_failed)
    _finish_with_problems(ctx, o, result.to_json(), f"requeued {result.count} send(s)", result.problems)


@cli.command()
@_global
@click.option("--host", default=None, help="address to listen on (default: [serve] host, 127.0.0.1)")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="port (default: [serve] port, 8080; 0: any free port, shown at start)")
@click.option("--hash-password", is_flag=True, help="ask for a password twice and print its hash for [serve] users")
@click.pass_context
def serve(ctx: click.Context, /, host: str | None, port: int | None, hash_password: bool,
          **kw: Unpack[_GlobalOptions]) -> None:
    """The web app: one-click unsubscribe links and the team's pages (put it behind your HTTPS proxy)."""
    o = _apply(ctx, kw)
    if hash_password:
        from crm_automation.web.auth import MIN_PASSWORD_LENGTH
        from crm_automation.web.auth import hash_password as make_hash

        password = click.prompt("Password", hide_input=True, confirmation_prompt="Repeat the password", err=True)
        if len(password) < MIN_PASSWORD_LENGTH:
            raise ConfigError(f"serve --hash-password: the password has {len(password)} characters (expected at "
                              f"least {MIN_PASSWORD_LENGTH})")
        click.echo(make_hash(password))
        return
    from crm_automation.web import serve as run_server

    run_server(o.config, host=host, port=port)


@cli.command()
@_global
@click.option("--dry-run", is_flag=True, help="show how each customer would be re-keyed; change nothing")
@click.pass_context
def rekey(ctx: click.Context, /, dry_run: bool, **kw: Unpack[_GlobalOptions]) -> None:
    """After the mapping's key changed: give each customer its new key from the sheet, history kept. Try --dry-run."""
    o = _apply(ctx, kw)
    if dry_run:  # reads only: no lock, like preview
        from crm_automation.workspace import Workspace

        w = _worker(o, Workspace.load(o.config), read_only=True)
        try:
            result = w.rekey(dry_run=True)
        finally:
            w.close()
    else:
        with _locked_worker(o) as w:
            result = w.rekey()

    def human() -> None:
        if result.plan is None or result.counts is None:
            click.echo(f"nothing to re-key: the log's customers are keyed by {result.new_field}, as the mapping")
            return
        plan = result.plan
        verb = "would re-key" if dry_run else "re-keyed"
        click.echo(f"{verb} {len(plan.moves)} customer(s) from {plan.old_field} to {plan.new_field}, matched by "
                   f"{plan.by}; rows: " + ", ".join(f"{t} {n}" for t, n in result.counts.tables.items()))
        for m in plan.moves[:20]:
            click.echo(f"  row {m.row}: {m.old} -> {m.new}")
        if len(plan.moves) > 20:
            click.echo(f"  ... and {len(plan.moves) - 20} more")
        if plan.kept:
            click.echo(f"{len(plan.kept)} customer(s) no longer in the sheet keep their old key")
        if dry_run:
            click.echo("dry run: nothing was changed. Run without --dry-run to re-key (stop the worker first).")

    _emit(o, result.to_json(), human)


@cli.command("import")
@_global
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--map", "maps", multiple=True, metavar="EXPORT=SHEET", help="rename an export column, e.g. "
              "'Email=邮箱' (repeatable); other columns are matched by the mapping's column or field names")
@click.option("--worksheet", default=None, help="worksheet of an .xlsx export (default: the first)")
@click.option("--dry-run", is_flag=True, help="report what would be added, updated and rejected; write nothing")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write rejected and duplicate rows to this CSV")
@click.pass_context
def import_(ctx: click.Context, /, file: Path, maps: tuple[str, ...], worksheet: str | None, dry_run: bool,
            report_path: Path | None, **kw: Unpack[_GlobalOptions]) -> None:
    """Migrate customers from a CSV/Excel export into the sheet, deduplicating by key. Try --dry-run first."""
    o = _apply(ctx, kw)
    from crm_automation.app.access import WorkspaceLock
    from crm_automation.importer import import_file, parse_column_map, write_report
    from crm_automation.workspace import Workspace

    ws = Workspace.load(o.config)
    column_map = parse_column_map(maps)
    if dry_run:  # reads the export and the sheet only: no lock, so it works while a worker runs (issue #17)
        plan, written = import_file(ws, file, column_map, worksheet=worksheet, dry_run=True)
    else:
        from crm_automation.fleet import holding

        # the sheet's other writers wait (issue #20: on PostgreSQL other workers may be running)
        with WorkspaceLock(ws) as taken, holding(taken.fleet, ("sync", "writeback"), "import"):
            plan, written = import_file(ws, file, column_map, worksheet=worksheet, dry_run=False)
    n_report = write_report(plan, report_path) if report_path else 0
    summary: JsonObject = {
        "dry_run": dry_run, "add": len(plan.add), "update": len(plan.update), "unchanged": plan.unchanged,
        "rejected": len(plan.rejected), "duplicates": len(plan.duplicates), "written": written,
        "rejected_rows": [str(e) for e in plan.rejected], "duplicate_rows": [str(e) for e in plan.duplicates]}

    def human() -> None:
        verb = "would add" if dry_run else "added"
        click.echo(f"{file.name}: {verb} {len(plan.add)}, {'would update' if dry_run else 'updated'} "
                   f"{len(plan.update)}, unchanged {plan.unchanged}, rejected {len(plan.rejected)}, "
                   f"duplicates {len(plan.duplicates)}")
        for e in [*plan.rejected, *plan.duplicates][:50]:
            click.echo(f"  - {e}", err=True)
        if report_path:
            click.echo(f"{n_report} problem row(s) written to {report_path}")
        if dry_run:
            click.echo("dry run: the sheet was not changed. Run without --dry-run to import.")

    _emit(o, summary, human)
    ctx.exit(1 if plan.rejected else 0)


@cli.group()
def db() -> None:
    """The activity log itself: copy a workspace's SQLite log into PostgreSQL (issue #20)."""


@db.command("copy")
@_global
@click.option("--to", "to", required=True, metavar="URL", help="the PostgreSQL database, postgresql://user@host:5432/"
              "crm (no password in it: --password-env, PGPASSWORD or ~/.pgpass)")
@click.option("--password-env", default=None, metavar="NAME", help="environment variable holding the database's "
              "password")
@click.option("--dry-run", is_flag=True, help="show what would be copied, table by table; write nothing")
@click.pass_context
def db_copy(ctx: click.Context, /, to: str, password_env: str | None, dry_run: bool,
            **kw: Unpack[_GlobalOptions]) -> None:
    """Copy this workspace's SQLite log into PostgreSQL (stop the worker first). Rerunnable; try --dry-run."""
    o = _apply(ctx, kw)
    from crm_automation.app import dbcopy
    from crm_automation.workspace import Workspace

    ws = Workspace.load(o.config)
    result = dbcopy.copy_log(ws, to, clock=o.clock(ws), progress=_progress_factory(), password_env=password_env,
                             dry_run=dry_run, accept_new=o.accept_new_log)

    def human() -> None:
        if result.outcome is dbcopy.Outcome.UP_TO_DATE:
            click.echo(f"nothing new to copy: {result.target} already holds this log as it is "
                       f"({sum(t.rows for t in result.tables)} rows in {len(result.tables)} tables)")
            return
        verb = "would copy" if result.dry_run else "copied"
        again = " again (the log changed since the last copy)" if result.outcome is dbcopy.Outcome.COPIED_AGAIN else ""
        click.echo(f"{verb} {result.copied} rows in {len(result.tables)} tables from {result.source} to "
                   f"{result.target}{again}" + ("" if result.dry_run else
                                                f" in {result.seconds:.1f} s; every table's count verified"))
        for t in result.tables:
            click.echo(f"  {t.table:<16} {t.rows:>10}")
        if result.dry_run:
            click.echo("dry run: nothing was written. Run without --dry-run to copy (stop the worker first).")
        else:
            click.echo(f'next: set [workspace] database = "{result.target}" in the config, run `crm-automation '
                       "check`, then start the worker again")

    _emit(o, result.to_json(), human)


def _json_requested(argv: list[str] | None) -> bool:
    """Whether ``--json`` is on the command line (errors before or during parsing must honour it too)."""
    return "--json" in (sys.argv[1:] if argv is None else argv)


def _json_error(code: int, message: str, hint: str | None, kind: str) -> None:
    click.echo(json.dumps({"ok": False, "exit": code, "error": message, "hint": hint, "kind": kind},
                          ensure_ascii=False, indent=2))


def _usage_failed(e: click.ClickException, argv: list[str] | None) -> NoReturn:
    """A usage error (unknown verb or option, bad value): click's message on stderr, JSON on stdout with ``--json``.

    Why (issue #17): scripts that pass ``--json`` parse stdout; a usage error
    used to leave it empty while every other failure printed an object.
    """
    code = 2 if isinstance(e, click.UsageError) else e.exit_code
    if _json_requested(argv):
        cmd = e.ctx.command_path if isinstance(e, click.UsageError) and e.ctx is not None else "crm-automation"
        _json_error(code, e.format_message(), f"see `{cmd} --help`", type(e).__name__)
    e.show()
    sys.exit(code)


def _fail(e: CrmError, argv: list[str] | None) -> NoReturn:
    """Print an error (a JSON object on stdout with ``--json``) and exit with its code."""
    if _json_requested(argv):
        _json_error(e.exit_code, str(e), e.hint, type(e).__name__)
    click.echo(f"error: {e}", err=True)
    if e.hint:
        click.echo(f"hint: {e.hint}", err=True)
    sys.exit(e.exit_code)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        rv = cli.main(args=argv, prog_name="crm-automation", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        _usage_failed(e, argv)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except CrmError as e:
        _fail(e, argv)
    except OSError as e:
        # An environmental failure that no adapter turned into a CrmError (a full disk, a read-only folder):
        # still a message and exit 3, never a traceback (issue #9). The traceback is kept at -v.
        log.debug("unexpected OS error", exc_info=True)
        _fail(StorageError.from_os(e.filename or "crm-automation", e, "running the command"), argv)
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, _Aborted) else signal.SIGINT
        click.echo(f"interrupted ({signal.Signals(signum).name})", err=True)
        sys.exit(128 + signum)
    sys.exit(rv if isinstance(rv, int) else 0)

