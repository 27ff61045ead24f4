"""config.toml -> a frozen, validated :class:`Config` (SPEC §3).

Every problem is collected and reported at once with the file, the key and
what was expected (the Singer SDK's ``_validate_config`` habit). Secrets are
never in the file: only the *names* of environment variables are.
"""

from __future__ import annotations

import ipaddress
import itertools
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from crm_automation.errors import ConfigError
from crm_automation.status_words import DEFAULT_LANGUAGE, LANGUAGES, expected_languages
from crm_automation.store import location

CONFIG_ENV = "CRM_AUTOMATION_CONFIG"
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A heartbeat every third of the timeout: below 3 s a busy machine would find its own workers dead (issue #20).
MIN_HEARTBEAT_TIMEOUT = timedelta(seconds=3)
MAX_TIMEOUT = 86_400.0  # a day; socket timeouts overflow the platform's time_t beyond ~1e9 s (issue #17)
# Keys whose value may be a secret typed in by mistake: their value is never repeated in a message (issue #17).
SECRET_VALUE_KEYS = frozenset({"password_env", "secret_env", "admin_password_env", "database_password_env"})


def database_url_problem(value: str) -> str | None:
    """Why ``[workspace] database`` cannot be used, when it is a URL rather than a path (None: usable).

    A path is a SQLite file; a ``postgresql://`` URL a PostgreSQL database
    (issue #20). A password in the URL is refused, as any secret in the
    config file is (SPEC §3), and never repeated: it comes from the variable
    ``database_password_env`` names, libpq's ``PGPASSWORD`` or ``~/.pgpass``,
    or a client certificate. Any other URL is refused rather than read as a
    file path (that made a folder named ``mysql:`` and an empty log in it).
    """
    if location.scheme(value) is None:
        return None
    shown = location.shown(value)
    if not location.is_postgresql(value):
        return (f"is \"{shown}\", a URL of a kind crm-automation does not use (expected the path of the activity "
                f"log's SQLite file, such as \"var/crm.sqlite\", or a postgresql:// URL)")
    if location.has_password(value):
        return (f"is \"{shown}\": a password in the database URL is refused (secrets never go in the config file; "
                "the password is not shown): name an environment variable holding it with "
                "[workspace] database_password_env, or use PGPASSWORD, ~/.pgpass or a client certificate")
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class WorkspaceSection(_Strict):
    """``[workspace]``."""

    timezone: str = "UTC"
    database: str = "var/crm.sqlite"
    database_password_env: str | None = None  # PostgreSQL (issue #20): the variable holding the password
    # Issue #20: a worker whose last heartbeat is older than this is dead (its `sending` rows are recovered)
    heartbeat_timeout: str = "60s"
    mappings: str = "mappings"
    templates: str = "email_templates"
    language: str = DEFAULT_LANGUAGE

    @field_validator("database_password_env")
    @classmethod
    def _database_password_env(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME.fullmatch(v):
            msg = ("is not the name of an environment variable (expected a name in quotes, such as "
                   "\"CRM_DB_PASSWORD\"); the value is not shown because it may be the password itself")
            raise ValueError(msg)
        return v

    @field_validator("heartbeat_timeout")
    @classmethod
    def _heartbeat_timeout(cls, v: str) -> str:
        d = parse_duration(v)
        if d is None or d < MIN_HEARTBEAT_TIMEOUT:
            msg = (f"{v!r} is not a heartbeat timeout (expected an interval of at least "
                   f"{int(MIN_HEARTBEAT_TIMEOUT.total_seconds())}s, such as \"60s\" or \"2m\")")
            raise ValueError(msg)
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as e:
            msg = f"{v!r} is not an IANA time zone (expected e.g. \"Asia/Shanghai\")"
            raise ValueError(msg) from e
        return v

    @field_validator("database")
    @classmethod
    def _database(cls, v: str) -> str:
        problem = database_url_problem(v)
        if problem is not None:
            raise ValueError(problem)
        return v

    @field_validator("language")
    @classmethod
    def _language(cls, v: str) -> str:
        if v not in LANGUAGES:
            msg = (f"is {v!r}, not a supported language (expected {expected_languages()}: "
                   f"the language of the words and dates written into the sheet)")
            raise ValueError(msg)
        return v


class SheetSection(_Strict):
    """``[sheet]``."""

    source: Literal["excel", "csv", "google"]
    path: str | None = None
    worksheet: str | None = None
    spreadsheet: str | None = None
    credentials: str | None = None
    writeback: bool = True
    encoding: str | None = None
    delimiter: str | None = None


def looks_like_secret(name: str) -> bool:
    """Whether a ``password_env`` value reads like a password or token rather than a variable's name.

    Why (issue #17): admins put the password itself where its variable's name
    belongs. Such a value must be refused without being repeated anywhere. A
    value a variable name cannot be (``-``, ``+``, ``/``, ``=``, spaces, a
    leading digit...) always counts; so does a valid name with a long part
    (12+ characters between underscores) that keeps switching between lower
    case, upper case and digits the way generated secrets do (``Xk9fQ2mZ7pLw``,
    hex tokens), which ``CRM_IMAP_PASSWORD`` or ``smtpPassword2`` never do.
    A password of plain lower-case letters is indistinguishable from a name.
    """
    if not _ENV_NAME.fullmatch(name):
        return True
    for part in name.split("_"):
        if len(part) < 12:
            continue
        kinds = ["d" if c.isdigit() else ("u" if c.isupper() else "l") for c in part]
        switches = sum(a != b for a, b in itertools.pairwise(kinds))
        if switches * 3 >= len(part):
            return True
    return False


class _ServerSection(_Strict):
    host: str | None = None
    port: int | None = None
    security: Literal["ssl", "starttls", "none"] = "ssl"
    username: str | None = None
    password_env: str | None = None
    oauth2_token_command: str | None = None
    allow_insecure: bool = False
    ca_file: str | None = None
    timeout: float = 30.0

    @field_validator("port")
    @classmethod
    def _port(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= 65535:
            msg = (f"is {v}, not a TCP port (expected a whole number from 1 to 65535, e.g. 993 for IMAP over SSL, "
                   f"465 or 587 for SMTP; or leave port out for the usual one)")
            raise ValueError(msg)
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float) -> float:
        if not (math.isfinite(v) and 0 < v <= MAX_TIMEOUT):
            msg = (f"is {v!r} (expected seconds to wait for the server, more than 0 and at most "
                   f"{MAX_TIMEOUT:.0f}, e.g. 30)")
            raise ValueError(msg)
        return v

    @field_validator("password_env")
    @classmethod
    def _password_env(cls, v: str | None) -> str | None:
        # The value is never put into the message: it may be the password itself (issue #17).
        if v is not None and looks_like_secret(v):
            msg = ("is not the name of an environment variable (expected a name such as \"CRM_IMAP_PASSWORD\": "
                   "letters, digits and _, not starting with a digit). The value is not shown because it looks "
                   "like a password or token: put the secret in an environment variable and write that "
                   "variable's NAME here")
            raise ValueError(msg)
        return v


class MailboxSection(_ServerSection):
    """``[mailbox]``."""

    source: Literal["maildir", "imap"]
    path: str | None = None
    folders: list[str] = Field(default_factory=lambda: ["INBOX"])
    processed_folder: str | None = None
    new_senders: Literal["log", "add_to_sheet"] = "log"
    batch_size: int = Field(default=500, ge=1, le=5000)
    max_message_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    # issue #21: read the Sent folder (``outbound.sent_folder``, else IMAP's \Sent special-use folder) for the
    # team's own replies to customers, which answer their mail and count as contact
    read_sent: bool = True


_ACCOUNT_NAME = re.compile(r"[A-Za-z0-9_.-]+")
DEFAULT_ACCOUNT = "default"  # how reports name ``[outbound]``'s own server (``sends.account`` NULL)


class AccountSection(_ServerSection):
    """One ``[[outbound.accounts]]`` entry: another SMTP account the send pass may use (issue #20, part 3).

    The server keys are ``[outbound]``'s, checked the same way. ``from``
    defaults to ``outbound.from``, but QQ Mail, 163 and Tencent Exmail refuse
    a From that is not the logged-in account, so each account usually names
    its own. ``max_per_minute``/``max_per_day`` are this account's (0: no
    limit), counted across workers (``sends.account``).
    """

    name: str
    from_: str | None = Field(default=None, alias="from")
    reply_to: str | None = None
    max_per_minute: int = Field(default=30, ge=0)
    max_per_day: int = Field(default=1500, ge=0)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _ACCOUNT_NAME.fullmatch(v):
            msg = (f"{v!r} is not an account name (expected letters, digits, \"-\", \"_\" and \".\", such as "
                   "\"qq\" or \"exmail-2\": it is recorded with every send and named in campaigns.toml)")
            raise ValueError(msg)
        if v.lower() == DEFAULT_ACCOUNT:
            msg = (f"{v!r} is reserved: reports call [outbound]'s own server \"default\" (expected another name, "
                   "such as \"qq\" or \"exmail\")")
            raise ValueError(msg)
        return v


class OutboundSection(_ServerSection):
    """``[outbound]``; ``accounts``: further SMTP accounts (``[[outbound.accounts]]``, issue #20 part 3)."""

    transport: Literal["outbox", "smtp"] = "outbox"
    outbox: str = "var/outbox"
    from_: str = Field(alias="from")
    reply_to: str | None = None
    max_per_minute: int = Field(default=30, ge=0)
    max_per_day: int = Field(default=1500, ge=0)
    send_window: str | None = None
    unsubscribe_mailto: str | None = None
    unsubscribe_url: str | None = None
    sent_folder: str | None = None
    notify_owner: bool = False
    one_per_cycle: bool = True
    accounts: list[AccountSection] = Field(default_factory=list)

    @property
    def sends_itself(self) -> bool:
        """Whether ``[outbound]``'s own server sends: always, unless accounts are listed and ``host`` is left out."""
        return self.transport != "smtp" or bool(self.host) or not self.accounts

    @property
    def account_names(self) -> tuple[str, ...]:
        """The names a campaign may pin (``account`` in campaigns.toml): ``"default"`` for ``[outbound]``'s own."""
        return ((DEFAULT_ACCOUNT,) if self.sends_itself else ()) + tuple(a.name for a in self.accounts)

    @field_validator("send_window")
    @classmethod
    def _window(cls, v: str | None) -> str | None:
        if v is not None and parse_window(v) is None:
            msg = f"{v!r} is not a time window (expected \"HH:MM-HH:MM\", e.g. \"09:00-18:00\")"
            raise ValueError(msg)
        return v

    @field_validator("unsubscribe_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("https://"):
            msg = f"{v!r} is not an https:// URL (one-click unsubscribe requires HTTPS, RFC 8058)"
            raise ValueError(msg)
        if v is not None and (problem := url_placeholder_problem(v)) is not None:
            raise ValueError(problem)
        return v


class ScheduleSection(_Strict):
    """``[schedule]``."""

    sync_every: str = "5m"
    fetch_every: str = "2m"
    send_every: str = "10m"

    @field_validator("sync_every", "fetch_every", "send_every")
    @classmethod
    def _dur(cls, v: str) -> str:
        if parse_duration(v) is None:
            msg = f"{v!r} is not an interval (expected a number and s, m, h or d, e.g. \"5m\")"
            raise ValueError(msg)
        return v


class InboundSection(_Strict):
    """``[inbound]``: the soft-bounce score (issue #11; Mailman's bounce score, listmonk's soft-bounce count).

    ``soft_bounce_limit`` soft bounces or delays of *distinct* messages to one
    address within ``soft_bounce_days`` suppress it (reason ``soft_bounces``);
    a reply from the customer starts the count again. ``0`` turns it off.
    """

    soft_bounce_limit: int = Field(default=3, ge=0)
    soft_bounce_days: int = Field(default=30, ge=0)


_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*$")


def parse_clock(text: str) -> int | None:
    """``"08:30"`` -> minutes after midnight (510); None when it is not a time of day."""
    m = _CLOCK.match(text)
    if not m:
        return None
    h, mi = int(m.group(1)), int(m.group(2))
    return h * 60 + mi if h < 24 and mi < 60 else None


class DigestSection(_Strict):
    """``[digest]`` (issue #21): each owner's morning email, and what counts as answering customer mail in time.

    ``at``: workspace time; the first cycle at or after it sends that day's
    digests, on ``weekdays``. ``template``: ``email_templates/NAME.txt``
    (+ ``.html``), else the shipped one. ``answer_within_hours``: a customer's
    reply or enquiry not answered within this many *working* hours is
    "waiting too long" (top of the owner's digest, the dashboard's attention
    list); working hours are ``working_hours`` (local time) on ``weekdays``.
    The default, 8, is about one working day of the default 09:00-18:00
    window: mail that comes in at 10:00 is due the same evening, mail of the
    afternoon the next morning.
    Without ``[digest]`` no digests are sent; "waiting" still uses these defaults.
    """

    at: str = "08:30"
    weekdays: list[str] = Field(default_factory=lambda: ["mon", "tue", "wed", "thu", "fri"])
    template: str = "digest"
    answer_within_hours: float = 8.0
    working_hours: str = "09:00-18:00"

    @field_validator("at")
    @classmethod
    def _at(cls, v: str) -> str:
        if parse_clock(v) is None:
            msg = f"{v!r} is not a time of day (expected \"HH:MM\" in workspace time, e.g. \"08:30\")"
            raise ValueError(msg)
        return v

    @field_validator("weekdays")
    @classmethod
    def _weekdays(cls, v: list[str]) -> list[str]:
        names = ", ".join(f"\"{d}\"" for d in _WEEKDAYS)
        wrong = [d for d in v if d.strip().lower() not in _WEEKDAYS]
        if wrong:
            msg = f"{wrong[0]!r} is not a day of the week (expected some of {names})"
            raise ValueError(msg)
        if not v:
            msg = f"is empty (expected at least one day of the week: {names})"
            raise ValueError(msg)
        days = [d.strip().lower() for d in v]
        if len(set(days)) != len(days):
            msg = f"{v!r} names a day twice (expected each day at most once)"
            raise ValueError(msg)
        return days

    @field_validator("template")
    @classmethod
    def _template(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v) or v.startswith("."):
            msg = (f"{v!r} is not a template name (expected the name of email_templates/NAME.txt without "
                   "\".txt\", e.g. \"digest\")")
            raise ValueError(msg)
        return v

    @field_validator("answer_within_hours")
    @classmethod
    def _hours(cls, v: float) -> float:
        if not (math.isfinite(v) and 0 < v <= 10_000):
            msg = (f"is {v!r} (expected working hours, more than 0, e.g. 8: customer mail not answered within "
                   "them is waiting too long)")
            raise ValueError(msg)
        return v

    @field_validator("working_hours")
    @classmethod
    def _working(cls, v: str) -> str:
        w = parse_window(v)
        if w is None or w[0] >= w[1]:
            msg = (f"{v!r} is not a working day (expected \"HH:MM-HH:MM\" in workspace time, start before end, "
                   "e.g. \"09:00-18:00\")")
            raise ValueError(msg)
        return v

    @property
    def weekday_numbers(self) -> frozenset[int]:
        """The working days as ``datetime.weekday()`` numbers (Monday 0)."""
        return frozenset(_WEEKDAYS.index(d) for d in self.weekdays)

    @property
    def minute_of_day(self) -> int:
        """``at`` as minutes after local midnight."""
        return parse_clock(self.at) or 0

    @property
    def working_window(self) -> tuple[int, int]:
        """``working_hours`` as minutes of the day (start, end)."""
        return parse_window(self.working_hours) or (540, 1080)


_PASSWORD_HASH = re.compile(r"scrypt\$\d{1,8}\$\d{1,3}\$\d{1,3}\$[A-Za-z0-9+/]{8,}\$[A-Za-z0-9+/]{16,}")


class ServeSection(_Strict):
    """``[serve]``: the web app (issue #19) — where it listens, where the team publishes it, who may log in.

    ``public_url`` is the address the team's HTTPS reverse proxy publishes
    ``serve`` at; links in mail (one-click unsubscribe, tracked clicks) start
    with it. Secrets are names of environment variables, never values.
    """

    public_url: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    secret_env: str = "CRM_SERVE_SECRET"  # noqa: S105 - the NAME of the variable holding the cookie-signing secret
    admin_password_env: str | None = None  # one "admin" login whose password is in this environment variable
    users: dict[str, str] = Field(default_factory=dict)  # login name -> password hash (`serve --hash-password`)
    # Addresses whose X-Forwarded-For / X-Forwarded-Proto uvicorn believes (the reverse proxy): IPs or networks.
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])

    @field_validator("public_url")
    @classmethod
    def _public(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from urllib.parse import urlsplit

        u = urlsplit(v)
        local_http = u.scheme == "http" and is_loopback(u.hostname)
        if not (u.scheme == "https" or local_http) or not u.hostname or u.query or u.fragment:
            msg = (f"{v!r} is not an https:// address without query or fragment (expected e.g. "
                   "\"https://crm.example.com\"; one-click unsubscribe requires HTTPS, RFC 8058; plain http only "
                   "on loopback, for trying it out)")
            raise ValueError(msg)
        return v.rstrip("/")

    @field_validator("users")
    @classmethod
    def _hashes(cls, v: dict[str, str]) -> dict[str, str]:
        for name, h in v.items():
            if not _PASSWORD_HASH.fullmatch(h):
                msg = (f"user {name!r}: not a password hash (expected \"scrypt$32768$8$1$...\" as printed by "
                       "`crm-automation serve --hash-password`; a password itself never goes in config.toml)")
                raise ValueError(msg)
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                ipaddress.ip_network(p, strict=False)
            except ValueError:
                msg = f"{p!r} is not an IP address or network (expected e.g. \"127.0.0.1\" or \"10.0.0.0/8\")"
                raise ValueError(msg) from None
        return v

    @field_validator("secret_env", "admin_password_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME.fullmatch(v):
            msg = ("is not the name of an environment variable (expected a name in quotes, such as "
                   "\"CRM_SERVE_SECRET\"); the value is not shown because it may be the secret itself")
            raise ValueError(msg)
        return v


class _ConfigModel(_Strict):
    workspace: WorkspaceSection = WorkspaceSection()
    sheet: SheetSection
    mailbox: MailboxSection
    outbound: OutboundSection
    schedule: ScheduleSection = ScheduleSection()
    inbound: InboundSection = InboundSection()
    serve: ServeSection = ServeSection()
    digest: DigestSection = DigestSection()  # given or not: ``model_fields_set`` (no [digest]: no digests)


URL_PLACEHOLDERS = ("{token}",)
ONE_CLICK_PATH = "/u/{token}"  # where `serve` answers one-click unsubscribes (crm_automation/web/public.py)
_BRACED = re.compile(r"\{([^{}]*)\}")
_URL_EXPECTED = "expected only {token}, e.g. \"https://example.com/u/{token}\""


def url_placeholder_problem(url: str) -> str | None:
    """What is wrong with ``unsubscribe_url``'s placeholders, or None (issue #17; ``{email}``: issue #19).

    Only ``{token}`` is filled in (``compose.Composer.unsubscribe_link``);
    anything else in braces would reach the customer as written, and a
    brace is never part of a URL (RFC 3986), so a stray one is a typo.
    ``{email}`` is refused with its reason (issue #19): it puts the
    customer's address in the link, where web server and proxy logs keep it
    and anyone the mail is forwarded to reads it; the send's token already
    names the customer (``crm-automation serve`` resolves it).
    """
    for m in _BRACED.finditer(url):
        if m.group(0) == "{email}":
            return (f"{url!r} has {{email}}, which puts the customer's address in the link: web server and proxy "
                    f"logs keep it, and anyone the mail is forwarded to reads it; the send's {{token}} names the "
                    f"customer without it ({_URL_EXPECTED})")
        if m.group(0) not in URL_PLACEHOLDERS:
            return f"{url!r} has the unknown placeholder {m.group(0)} ({_URL_EXPECTED})"
    rest = _BRACED.sub("", url)
    for ch in "{}":
        if ch in rest:
            at = url.index(ch) if url.count(ch) == 1 else None
            where = f" at character {at + 1}" if at is not None else ""
            return f"{url!r} has an unbalanced {ch!r}{where} ({_URL_EXPECTED})"
    return None


def config_warnings(cfg: Config) -> list[str]:
    """What ``check`` warns about without failing: settings that work but are probably not meant (issue #17)."""
    out: list[str] = []
    url = cfg.outbound.unsubscribe_url
    if url and "{token}" not in url:
        out.append(f"{cfg.path}: outbound.unsubscribe_url {url!r} has no {{token}}: every customer gets the same "
                   "link, so your page cannot tell who unsubscribed (expected e.g. \"https://example.com/u/{token}\")")
    return out


def parse_duration(text: str) -> timedelta | None:
    """``"5m"`` -> 5 minutes; None when the text is not an interval."""
    m = _DURATION.match(text)
    if not m or int(m.group(1)) == 0:
        return None
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
    return timedelta(**{unit: int(m.group(1))})


def parse_window(text: str) -> tuple[int, int] | None:
    """``"09:00-18:00"`` -> minutes of the day (540, 1080); None when malformed."""
    m = _WINDOW.match(text)
    if not m:
        return None
    h1, m1, h2, m2 = (int(x) for x in m.groups())
    if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59:
        return None
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end or start > 1440 or end > 1440:
        return None
    return start, end


def is_loopback(host: str | None) -> bool:
    """True for localhost and the loopback ranges, where plain text is allowed."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Config:
    """The validated configuration with every path made absolute."""

    path: Path
    root: Path
    timezone: ZoneInfo
    database: Path | str  # a SQLite file, or a PostgreSQL URL (issue #20; never with a password)
    mappings: Path
    templates: Path
    sheet: SheetSection
    mailbox: MailboxSection
    outbound: OutboundSection
    schedule: ScheduleSection
    inbound: InboundSection = field(default_factory=InboundSection)
    language: str = DEFAULT_LANGUAGE  # [workspace] language: the sheet's status words, unless [writeback] says
    serve: ServeSection = field(default_factory=ServeSection)
    digest: DigestSection | None = None  # [digest] (issue #21); None: no digests

    @property
    def working(self) -> DigestSection:
        """``[digest]`` or its defaults: the working days and hours that "waiting" counts (issue #21)."""
        return self.digest if self.digest is not None else DigestSection()

    database_password_env: str | None = None  # [workspace]: the variable holding PostgreSQL's password
    # [workspace] heartbeat_timeout (issue #20): a worker silent for longer is dead; it beats every third of it
    heartbeat_timeout: timedelta = timedelta(seconds=60)

    @property
    def database_password(self) -> str | None:
        """PostgreSQL's password from ``database_password_env`` (None: libpq's own sources apply)."""
        if self.database_password_env is None:
            return None
        return secret_from_env("workspace.database", self.database_password_env, key="database_password_env")

    def resolve(self, value: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.root / p


def find_config(explicit: str | os.PathLike[str] | None) -> Path:
    """``--config``, else ``$CRM_AUTOMATION_CONFIG``, else ``./config.toml`` (SPEC §2)."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    return Path("config.toml")


def _loc(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if str(p).startswith(("function-", "literal[")):
            continue
        if isinstance(p, int) and parts and parts[-1].endswith("accounts"):
            parts[-1] += f"[{p}]"  # outbound.accounts[1].port: the entry by its place (its name may be the fault)
        else:
            parts.append(str(p))
    out = ".".join(parts)
    return out.replace("from_", "from")


_BOUNDS = {"greater_than": ("more than", "gt"), "greater_than_equal": ("at least", "ge"),
           "less_than": ("less than", "lt"), "less_than_equal": ("at most", "le")}
_SECRET_NAMES = ("password", "passwd", "pass", "secret", "token", "api_key", "apikey")


def _explain(err: ErrorDetails) -> str:
    kind = err["type"]
    got = err.get("input")
    loc = err.get("loc", ())
    last = str(loc[-1]) if loc else ""
    if kind == "missing":
        return "is required but missing"
    if kind == "extra_forbidden":
        if last.lower() in _SECRET_NAMES:
            return ("is not a known key: secrets never go in the config file (put the password in an environment "
                    "variable and name it with password_env, or use oauth2_token_command)")
        return "is not a known key (check the spelling; see config.example.toml)"
    if last in SECRET_VALUE_KEYS and kind != "value_error":
        return ("is not the name of an environment variable (expected a name in quotes, such as "
                "\"CRM_IMAP_PASSWORD\"); the value is not shown because it may be the password itself")
    if kind in _BOUNDS:
        words, key = _BOUNDS[kind]
        return f"is {got!r} (expected a number {words} {err.get('ctx', {}).get(key)})"
    if kind == "literal_error":
        return f"is {got!r} (expected {err['ctx']['expected']})"
    if kind in {"string_type", "int_type", "bool_type", "float_type", "list_type", "model_type", "dict_type"}:
        want = {"string_type": "a string in quotes", "int_type": "a whole number", "bool_type": "true or false",
                "float_type": "a number", "list_type": "a list like [\"INBOX\"]", "model_type": "a table",
                "dict_type": "a table"}[kind]
        return f"is {got!r} (expected {want})"
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    return f"is {got!r} ({err['msg']})"


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate the config; raise one :class:`ConfigError` listing every problem."""
    cfg_path = find_config(path)
    if not cfg_path.is_file():
        raise ConfigError(
            f"{cfg_path}: config file not found",
            hint="pass --config PATH, set CRM_AUTOMATION_CONFIG, or copy config.example.toml to config.toml",
        )
    try:
        # utf-8-sig: Notepad and some editors save a byte order mark, which tomllib refuses (issue #17).
        raw = tomllib.loads(cfg_path.read_text(encoding="utf-8-sig"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{cfg_path}: not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{cfg_path}: not UTF-8 text (save the file as UTF-8)") from None
    try:
        model = _ConfigModel.model_validate(raw)
    except ValidationError as e:
        problems = [f"{cfg_path}: {_loc(err['loc'])} {_explain(err)}" for err in e.errors()]
        raise ConfigError.collect(problems) from None
    problems = _cross_checks(cfg_path, model)
    if problems:
        raise ConfigError.collect(problems)
    root = cfg_path.resolve().parent

    def res(v: str) -> Path:
        p = Path(v).expanduser()
        return p if p.is_absolute() else root / p

    ws = model.workspace
    outbound = model.outbound
    if outbound.unsubscribe_url is None and model.serve.public_url is not None:
        # issue #19: `serve` answers the one-click link, so publishing it is enough to get one (RFC 8058);
        # an explicit unsubscribe_url (another host, another path) still wins. Resolved here, once: the
        # composer, `check` and the send pass all read outbound.unsubscribe_url.
        outbound = outbound.model_copy(update={"unsubscribe_url": f"{model.serve.public_url}{ONE_CLICK_PATH}"})
    return Config(
        path=cfg_path.resolve(), root=root, timezone=ZoneInfo(ws.timezone),
        database=ws.database if location.is_postgresql(ws.database) else res(ws.database),  # a URL as it is
        database_password_env=ws.database_password_env,
        heartbeat_timeout=parse_duration(ws.heartbeat_timeout) or timedelta(seconds=60),
        mappings=res(ws.mappings), templates=res(ws.templates), sheet=model.sheet, mailbox=model.mailbox,
        outbound=outbound, schedule=model.schedule, inbound=model.inbound, language=ws.language,
        serve=model.serve, digest=model.digest if "digest" in model.model_fields_set else None,
    )


def _cross_checks(p: Path, m: _ConfigModel) -> list[str]:
    """Rules that span keys: which keys each source needs, TLS policy, secrets."""
    out: list[str] = []
    if m.workspace.database_password_env and not location.is_postgresql(m.workspace.database):
        out.append(f"{p}: workspace.database_password_env is for a PostgreSQL database (database = "
                   "\"postgresql://...\"); a SQLite file has no password")
    s = m.sheet
    if s.source in {"excel", "csv"} and not s.path:
        out.append(f"{p}: sheet.path is required when sheet.source = {s.source!r}")
    if s.source == "google":
        if not s.spreadsheet:
            out.append(f"{p}: sheet.spreadsheet is required when sheet.source = \"google\" (a key or URL)")
        if not s.credentials:
            out.append(f"{p}: sheet.credentials is required when sheet.source = \"google\" "
                       f"(a service-account JSON file)")
    mb = m.mailbox
    if mb.source == "maildir" and not mb.path:
        out.append(f"{p}: mailbox.path is required when mailbox.source = \"maildir\"")
    if mb.source == "imap":
        out += _server_checks(p, "mailbox", mb)
        if not mb.folders:
            out.append(f"{p}: mailbox.folders is empty (expected at least one folder, e.g. [\"INBOX\"])")
    ob = m.outbound
    if ob.transport == "smtp" and ob.sends_itself:
        out += _server_checks(p, "outbound", ob)
    from email.utils import parseaddr

    if "@" not in parseaddr(ob.from_)[1]:
        out.append(f"{p}: outbound.from is {ob.from_!r} (expected an address like \"Sales <sales@example.com>\")")
    return out + _account_checks(p, ob)


def _account_checks(p: Path, ob: OutboundSection) -> list[str]:
    """``[[outbound.accounts]]`` (issue #20, part 3): SMTP only, unique names, each a complete server section."""
    from email.utils import parseaddr

    out: list[str] = []
    if ob.accounts and ob.transport != "smtp":
        out.append(f"{p}: outbound.accounts are SMTP accounts, but outbound.transport is {ob.transport!r} "
                   "(expected transport = \"smtp\", or remove the [[outbound.accounts]] entries)")
        return out
    seen: dict[str, int] = {}
    for i, a in enumerate(ob.accounts):
        section = f"outbound.accounts[{a.name}]"
        first = seen.setdefault(a.name.lower(), i)
        if first != i:
            out.append(f"{p}: outbound.accounts[{i}] name {a.name!r} is already the name of outbound.accounts"
                       f"[{first}] (expected a unique name: each send records the account it went through)")
        out += _server_checks(p, section, a)
        for key, value in (("from", a.from_), ("reply_to", a.reply_to)):
            if value is not None and "@" not in parseaddr(value)[1]:
                out.append(f"{p}: {section}.{key} is {value!r} (expected an address like "
                           "\"Sales <sales@example.com>\")")
    return out


def _server_checks(p: Path, section: str, s: _ServerSection) -> list[str]:
    out: list[str] = []
    if not s.host:
        out.append(f"{p}: {section}.host is required for a server connection")
    if s.security == "none" and not s.allow_insecure and not is_loopback(s.host):
        out.append(
            f"{p}: {section}.security = \"none\" sends the password in clear text to {s.host!r}; "
            f"it is allowed only on loopback or with {section}.allow_insecure = true"
        )
    if s.password_env and s.oauth2_token_command:
        out.append(f"{p}: {section}: set password_env or oauth2_token_command, not both")
    if s.username and not (s.password_env or s.oauth2_token_command):
        out.append(f"{p}: {section}.password_env is required with username (the name of an environment variable "
                   f"holding the password; secrets never go in the config file)")
    for key in ("password", "token", "secret"):
        if key in s.model_fields_set:  # pragma: no cover - extra keys are refused earlier
            out.append(f"{p}: {section}.{key}: secrets are read from the environment, never from the file")
    return out


def secret_from_env(section: str, name: str | None, *, key: str = "password_env") -> str:
    """Read a password from the environment variable ``name``; a clear error when unset."""
    if not name:
        raise ConfigError(f"{section}.{key} is not set (name an environment variable holding the password)")
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"{section.partition('.')[0]}.{key} names ${name}, which is not set in the environment",
                          hint=f"export {name}=... before running (the value is never logged)")
    return value
