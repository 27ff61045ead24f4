"""A Google Sheets customer sheet through gspread and a service-account file.

Google's quota is 60 requests a minute per user (issue #3), so requests are
counted and kept flat whatever the number of rows:

- opening costs one ``spreadsheets.get`` (metadata only: the worksheet titles),
  done once per :class:`GoogleSource` on first use, plus the OAuth token
  request google-auth makes about once an hour;
- :meth:`GoogleSource.read` is one ``values.get`` of the whole worksheet;
- :meth:`GoogleSource.write_back` is one ``values.batchUpdate`` holding every
  cell, header cells of new columns included (none when nothing would
  change), placed by key in the sheet as just read: the worker calls it with
  ``reuse_read=True`` right after the sync's ``values.get``, so a sync cycle
  costs one read and at most one write; called on its own it reads first;
- :meth:`GoogleSource.append_rows` is one ``values.get`` of the header row,
  one ``values.batchUpdate`` only if the header needs new columns, and one
  ``values.append``.

Values are written with ``valueInputOption=RAW``, so ``=cmd`` from an email
stays text and is never evaluated (SPEC §11). Values are read unformatted
(numbers as numbers, so a phone number is never shown as ``1.38E+10``) with
dates as formatted text.

Google Sheets has no cheap revision number, so ``SheetData.version`` is empty
and write-back never postpones: cells are placed by key from a read made
a moment before the write (rows people sorted or inserted since the last
cycle are found where they are now).

429 and 5xx answers (and dropped connections) are retried with exponential
backoff, 1 s doubling up to ``max_retries`` times; then :class:`ServiceError`
names the status. ``values.append`` is retried only after a 429: after a 5xx
it may have been carried out, and a retry would add the rows twice.

The ``sleep`` and an HTTP ``adapter`` are injectable for tests: ``adapter``
is mounted for ``https://`` on both the Sheets session and the token
session, so the whole exchange stays in-process.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self, TypeVar

import gspread  # noqa: TID251 - this is the Google adapter
import requests
from google.auth.exceptions import GoogleAuthError, TransportError
from google.auth.transport.requests import AuthorizedSession, Request
from google.oauth2 import service_account

from crm_automation.config import Config
from crm_automation.errors import ConfigError, ServiceError
from crm_automation.models import SheetData
from crm_automation.sheets.base import WriteResult
from crm_automation.sheets.grid import append_plan, grid_to_data, plan_writeback

T = TypeVar("T")

SCOPES = ("https://www.googleapis.com/auth/spreadsheets",)
_URL_KEY = re.compile(r"/spreadsheets/d/([a-zA-Z0-9_-]+)")
_READ_PARAMS: gspread.http_client.ParamsType = {
    "valueRenderOption": "UNFORMATTED_VALUE", "dateTimeRenderOption": "FORMATTED_STRING", "majorDimension": "ROWS"}

#: Test seam: when set, every GoogleSource built without an explicit ``adapter``
#: mounts this one (the in-process fake of the Sheets API sets it).
default_adapter: requests.adapters.BaseAdapter | None = None


def spreadsheet_key(text: str) -> str:
    """A spreadsheet key from a key or a browser URL (``…/spreadsheets/d/<key>/edit``)."""
    m = _URL_KEY.search(text)
    return m.group(1) if m else text.strip()


def _quote_title(title: str) -> str:
    return "'" + title.replace("'", "''") + "'"


class GoogleSource:
    """A Google Sheets worksheet (``[sheet] source = "google"``)."""

    metered = True  # every request counts against Google's quota

    def __init__(
        self,
        spreadsheet: str,
        credentials: Path,
        *,
        worksheet: str | None = None,
        adapter: requests.adapters.BaseAdapter | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_retries: int = 5,
        timeout: float = 60.0,
    ) -> None:
        self.key = spreadsheet_key(spreadsheet)
        self.credentials = Path(credentials)
        self.worksheet = worksheet
        self.name = f"Google sheet {self.key}" + (f" [{worksheet}]" if worksheet else "")
        self._adapter = adapter if adapter is not None else default_adapter
        self._sleep = sleep
        self._max_retries = max_retries
        self._timeout = timeout
        self._http: gspread.http_client.HTTPClient | None = None
        self._title: str | None = None
        self._account = ""
        self._last_grid: list[list[object]] | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> Self:
        """Build from ``[sheet]``: ``spreadsheet`` (key or URL), ``credentials``, optional ``worksheet``."""
        s = cfg.sheet
        if not s.spreadsheet or not s.credentials:
            raise ConfigError(f"{cfg.path}: sheet.spreadsheet and sheet.credentials are required "
                              f"when sheet.source = \"google\"")
        return cls(s.spreadsheet, cfg.resolve(s.credentials), worksheet=s.worksheet)

    # -- plumbing

    def _client(self) -> gspread.http_client.HTTPClient:
        if self._http is not None:
            return self._http
        try:
            # google-auth ships py.typed but leaves this classmethod and AuthorizedSession() unannotated.
            creds: service_account.Credentials = (
                service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                    str(self.credentials), scopes=SCOPES))
        except FileNotFoundError:
            raise ConfigError(f"{self.credentials}: service-account file not found (sheet.credentials)",
                              hint="download a JSON key for the service account (see the README)") from None
        except (ValueError, KeyError, OSError) as e:
            raise ConfigError(f"{self.credentials}: not a service-account JSON key file ({e})",
                              hint="download a JSON key for the service account (see the README)") from None
        self._account = creds.service_account_email
        auth_session = requests.Session()
        session = AuthorizedSession(creds, auth_request=Request(auth_session))  # type: ignore[no-untyped-call]
        if self._adapter is not None:
            auth_session.mount("https://", self._adapter)
            session.mount("https://", self._adapter)
        http = gspread.http_client.HTTPClient(auth=creds, session=session)
        http.set_timeout(self._timeout)
        self._http = http
        return http

    def _call(self, what: str, fn: Callable[[gspread.http_client.HTTPClient], T], *, idempotent: bool = True) -> T:
        """Run one request, retrying 429/5xx and dropped connections with exponential backoff.

        A request that is not idempotent (``values.append``) is retried only
        after a 429, which means it was not carried out: after a 5xx or a
        dropped connection it may have been, and a retry would add the rows twice.
        """
        http = self._client()
        delay = 1.0
        for attempt in range(self._max_retries + 1):
            try:
                return fn(http)
            except gspread.exceptions.APIError as e:
                code = e.code
                if code == 429 or code >= 500:
                    status = f"HTTP {code}"
                else:
                    raise self._refused(what, e) from None
                if code != 429 and not idempotent:
                    raise ServiceError(f"{self.name}: {what} failed with HTTP {code}; not retried, because the "
                                       f"request may have been carried out",
                                       hint="check the sheet's last rows") from None
            except (requests.ConnectionError, requests.Timeout, TransportError) as e:
                status = f"no answer ({type(e).__name__})"
                if not idempotent:
                    raise ServiceError(f"{self.name}: {what} got no answer ({type(e).__name__}); not retried, "
                                       f"because the request may have been carried out",
                                       hint="check the sheet's last rows") from None
            except GoogleAuthError as e:
                raise ServiceError(f"{self.name}: the service account could not log in ({e})",
                                   hint=f"check the key file {self.credentials.name}") from None
            if attempt == self._max_retries:
                break
            self._sleep(delay)
            delay *= 2
        hint = "Google allows 60 requests a minute per user; the next cycle retries" if "429" in status else None
        raise ServiceError(
            f"{self.name}: {what} failed with {status} after {self._max_retries + 1} attempts", hint=hint)

    def _refused(self, what: str, e: gspread.exceptions.APIError) -> ServiceError | ConfigError:
        msg = str(e.error.get("message", "")) if isinstance(e.error, dict) else ""
        if e.code in (403, 404):
            return ServiceError(
                f"{self.name}: {what} refused with HTTP {e.code} ({msg})",
                hint=f"share the spreadsheet with {self._account or 'the service account'} as an editor, "
                     f"and check sheet.spreadsheet")
        if e.code == 400:
            self._title = None  # e.g. the worksheet was renamed: look it up again next time
        if e.code == 401:
            return ServiceError(f"{self.name}: {what} refused with HTTP 401: the service account is not authorised",
                                hint=f"check the key file {self.credentials.name}")
        return ServiceError(f"{self.name}: {what} failed with HTTP {e.code} ({msg})")

    def _open(self) -> str:
        """The worksheet title (one metadata request, once)."""
        if self._title is not None:
            return self._title
        meta = self._call("reading the spreadsheet's worksheets", lambda h: h.fetch_sheet_metadata(
            self.key, params={"includeGridData": "false", "fields": "sheets.properties.title"}))
        titles = [s["properties"]["title"] for s in meta.get("sheets", [])]
        if not titles:
            raise ServiceError(f"{self.name}: the spreadsheet has no worksheets")
        if self.worksheet is None:
            self._title = titles[0]
        elif self.worksheet in titles:
            self._title = self.worksheet
        else:
            found = ", ".join(f'"{t}"' for t in titles)
            raise ConfigError(f"{self.name}: worksheet \"{self.worksheet}\" not found; worksheets found: {found}",
                              hint="fix [sheet] worksheet (or remove it to use the first sheet)")
        return self._title

    def _grid(self, what: str, cells: str = "") -> list[list[object]]:
        title = self._open()
        rng = _quote_title(title) + (f"!{cells}" if cells else "")
        body = self._call(what, lambda h: h.values_get(self.key, rng, params=_READ_PARAMS))
        values: list[list[object]] = body.get("values", [])
        return values

    def _update(self, what: str, cells: list[tuple[int, int, str]]) -> None:
        title = _quote_title(self._open())
        a1 = gspread.utils.rowcol_to_a1
        data = [{"range": f"{title}!{a1(i + 1, c + 1)}", "values": [[text]]} for i, c, text in cells]
        body = {"valueInputOption": "RAW", "data": data}
        self._call(what, lambda h: h.values_batch_update(self.key, body))

    # -- the protocol

    def fingerprint(self) -> str | None:
        """None: a digest would cost a read, which is what skipping is meant to save."""
        return None

    def read(self) -> SheetData:
        """All values of the worksheet in one ``values.get`` (kept for a write-back that reuses it)."""
        grid = self._grid("reading the sheet")
        self._last_grid = grid
        return grid_to_data(self.name, grid, "")

    def write_back(self, key_column: str, updates: dict[str, dict[str, str]], *, version: str,
                   reuse_read: bool = False) -> WriteResult:
        """Find rows by key, then one RAW ``values.batchUpdate`` (none if nothing changes).

        Rows are found in a fresh read, or, with ``reuse_read``, in the grid
        of the last :meth:`read` (the worker writes right after its sync's
        read, so a cycle costs one read). That grid is used once: our own
        write makes it stale.
        """
        grid = self._last_grid if reuse_read and self._last_grid is not None else None
        self._last_grid = None
        if grid is None:
            grid = self._grid("reading the sheet for write-back")
        plan = plan_writeback(grid, key_column, updates)
        if plan.postponed:
            return WriteResult(postponed=f"{self.name}: {plan.postponed}")
        if plan.cells:
            self._update("writing status columns", plan.cells)
        return WriteResult(cells=len(plan.cells) - len(plan.added_columns), added_columns=tuple(plan.added_columns),
                           missing_keys=tuple(plan.missing_keys))

    def append_rows(self, rows: list[dict[str, str]]) -> int:
        """Append rows with ``values.append`` (RAW, INSERT_ROWS); new header names are added first."""
        if not rows:
            return 0
        header = self._grid("reading the header row", "1:1")
        grid: list[list[object]] = [list(header[0]) if header else []]
        width = len(grid[0])
        lines = append_plan(grid, rows)
        if len(grid[0]) > width:
            self._update("adding header columns", [(0, c, str(grid[0][c])) for c in range(width, len(grid[0]))])
        title = _quote_title(self._open())
        params: gspread.http_client.ParamsType = {"valueInputOption": "RAW", "insertDataOption": "INSERT_ROWS"}
        self._call("appending rows", lambda h: h.values_append(self.key, f"{title}!A1", params, {"values": lines}),
                   idempotent=False)
        return len(lines)
