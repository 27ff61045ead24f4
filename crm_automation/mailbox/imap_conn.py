"""The IMAP connection under :class:`~crm_automation.mailbox.imap.ImapSource` (SPEC §3 ``[mailbox]``; issue #4).

Why its own module (issue #18): reaching a server and staying logged in
(TLS, login, the one reconnect, folder names) is one job; what is read from
the folders is another (:mod:`.imap`, its fast path :mod:`.imap_fetch`).

* **TLS by default.** Certificates and host names are verified; ``ca_file``
  (a company or test CA) replaces the system store.
* **Folder names.** ``/`` is the hierarchy separator in the config (as mail
  clients show it); it is translated to the server's delimiter (``.`` on
  Dovecot's Maildir++), so ``CRM/Processed`` works everywhere.
* **One transparent reconnect.** A dropped connection (server restart, idle
  timeout, ``doveadm kick``) is reopened once and the operation runs again;
  a second failure in a row raises :class:`ServiceError`.
* **Errors name host:port and user, never the secret.** imapclient's own
  DEBUG logging redacts LOGIN/AUTHENTICATE lines; messages built here are
  scrubbed of the password and token as well.
"""

from __future__ import annotations

import imaplib
import logging
import ssl
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, Self, TypeVar

import imapclient  # noqa: TID251 - the IMAP adapter (mailbox/imap*.py)
from imapclient.exceptions import IMAPClientError, LoginError  # noqa: TID251

from crm_automation.config import MailboxSection
from crm_automation.credentials import Credentials, load_credentials
from crm_automation.errors import ConfigError, ServiceError

log = logging.getLogger("crm_automation.mailbox.imap")  # the adapter's one logger, whichever module logs

T = TypeVar("T")

DEFAULT_PORTS = {"ssl": 993, "starttls": 143, "none": 143}

# Errors that mean the connection is gone (worth one reconnect), as opposed to
# a server answering NO/BAD to a command.
DROPPED: tuple[type[BaseException], ...] = (imaplib.IMAP4.abort, OSError, EOFError)


#: One ``LIST`` answer line as imapclient parses it: (flags, hierarchy delimiter or None, folder name).
_FolderEntry = tuple[tuple[bytes, ...], bytes | None, str]


class _Client(Protocol):
    """What this module uses of ``imapclient.IMAPClient``, typed (imapclient ships no type information).

    Answers not read here are ``object``. ``fetch`` is typed for the items
    fetched here: ``RFC822.SIZE`` is an int, ``BODY[...]`` bytes.
    """

    def has_capability(self, capability: str) -> bool: ...
    def capabilities(self) -> tuple[bytes, ...]: ...
    def starttls(self, ssl_context: ssl.SSLContext | None = None) -> object: ...
    def login(self, username: str, password: str) -> object: ...
    def oauth2_login(self, user: str, access_token: str) -> object: ...
    def id_(self, parameters: dict[str, str] | None = None) -> object: ...
    def list_folders(self, directory: str = "", pattern: str = "*") -> list[_FolderEntry]: ...
    # EXISTS, UIDNEXT and UIDVALIDITY are ints; other keys hold flags or raw answers
    def select_folder(self, folder: str, readonly: bool = False) -> dict[bytes, object]: ...
    def folder_exists(self, folder: str) -> bool: ...
    def find_special_folder(self, folder_flag: bytes) -> str | None: ...
    def create_folder(self, folder: str) -> object: ...
    def search(self, criteria: Sequence[object]) -> list[int]: ...
    def fetch(self, messages: list[int], data: list[str]) -> dict[int, dict[bytes, bytes | int]]: ...
    def move(self, messages: list[int], folder: str) -> object: ...
    def copy(self, messages: list[int], folder: str) -> object: ...
    def add_flags(self, messages: list[int], flags: list[bytes], silent: bool = False) -> object: ...
    def uid_expunge(self, messages: list[int]) -> object: ...
    def logout(self) -> object: ...
    def shutdown(self) -> None: ...


def uidvalidity_of(info: Mapping[bytes, object]) -> int:
    """UIDVALIDITY of a SELECT answer (imapclient parses it to an int)."""
    value = info[b"UIDVALIDITY"]
    if not isinstance(value, int):
        raise TypeError(f"UIDVALIDITY {value!r} is not a number")
    return value


class ImapConnection:
    """One IMAP connection, opened lazily and reused for every folder of a pass; :meth:`close` logs out.

    Credentials are loaded at each (re)connect so a fresh OAuth2 token is
    fetched when the old connection is gone. :meth:`_call` runs an operation
    on the connection, reconnecting once if it dropped.
    """

    def __init__(
        self,
        settings: MailboxSection,
        *,
        ca_file: Path | None = None,
        section: str = "mailbox",
        credentials: Callable[[], Credentials] | None = None,
    ) -> None:
        if not settings.host:
            raise ConfigError(f"{section}.host is required for an IMAP mailbox (e.g. \"imap.example.com\")")
        if ca_file is not None and not ca_file.is_file():
            raise ConfigError(f"{section}.ca_file: {ca_file} does not exist (expected a PEM file of CA certificates)")
        self.settings = settings
        self.section = section
        self.host: str = settings.host
        self.port: int = settings.port or DEFAULT_PORTS[settings.security]
        self.ca_file = ca_file
        self.username = settings.username or ""
        self._credentials = credentials or (lambda: load_credentials(section, settings))
        self._secrets: list[str] = []
        self._client: _Client | None = None
        self._selected: tuple[str, bool] | None = None  # (folder, readonly)
        self._processed_ready = False
        self._delimiter: str | None = None
        self.name = f"imap://{self.username}@{self.host}" if self.username else f"imap://{self.host}"
        self.tracks_names = False  # the cursor is UIDVALIDITY + last UID

    # ------------------------------------------------------------ connection
    @property
    def where(self) -> str:
        """``host:port (user u)``, the prefix of every error message."""
        user = f" (user {self.username})" if self.username else ""
        return f"IMAP {self.host}:{self.port}{user}"

    def _scrub(self, text: str) -> str:
        for s in self._secrets:
            if s:
                text = text.replace(s, "***")
        return text

    def _tls_context(self) -> ssl.SSLContext:
        """Certificates and host names verified; ``ca_file`` (a company or test CA) replaces the system store."""
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)

    def _open(self) -> _Client:
        sec = self.settings.security
        timeout = self.settings.timeout
        client: _Client
        try:
            if sec == "ssl":
                client = imapclient.IMAPClient(self.host, self.port, ssl=True, ssl_context=self._tls_context(),
                                               timeout=timeout)
            else:
                client = imapclient.IMAPClient(self.host, self.port, ssl=False, timeout=timeout)
                if sec == "starttls":
                    if not client.has_capability("STARTTLS"):
                        client.shutdown()
                        raise ServiceError(
                            f"{self.where}: the server does not offer STARTTLS (security = \"starttls\")",
                            hint="use security = \"ssl\" with port 993, which most providers offer",
                        )
                    client.starttls(self._tls_context())
        except ssl.SSLCertVerificationError as e:
            raise ServiceError(
                f"{self.where}: the server's TLS certificate is not trusted: {e.verify_message or e}",
                hint=f"if the server uses a company or test CA, set {self.section}.ca_file to its PEM file",
            ) from None
        except ssl.SSLError as e:
            raise ServiceError(f"{self.where}: TLS handshake failed: {e}",
                               hint="check the port: 993 is implicit TLS (\"ssl\"), 143 is \"starttls\"") from None
        except (OSError, EOFError, imaplib.IMAP4.error) as e:
            raise ServiceError(f"{self.where}: cannot connect: {type(e).__name__}: {e}",
                               hint="check host, port and network; the next pass retries") from None
        self._login(client)
        return client

    def _login(self, client: _Client) -> None:
        creds = self._credentials()
        if not creds.username:
            client.shutdown()
            raise ConfigError(f"{self.section}.username is required for an IMAP mailbox")
        self._secrets = [s for s in (creds.password, creds.token) if s]
        try:
            if creds.token:
                client.oauth2_login(creds.username, creds.token)
            else:
                client.login(creds.username, creds.password or "")
        except DROPPED as e:
            raise ServiceError(f"{self.where}: connection lost during login: {self._scrub(str(e))}") from None
        except (LoginError, IMAPClientError) as e:
            with _quiet():
                client.shutdown()
            how = "XOAUTH2 token" if creds.token else "password"
            raise ServiceError(
                f"{self.where}: login refused ({how}): {self._scrub(str(e))}",
                hint=("check the token command's account and scopes" if creds.token
                      else f"check ${self.settings.password_env}; many providers need an app password for IMAP"),
            ) from None
        self._send_id(client)
        log.info("%s: logged in (%s)", self.where, self.settings.security)

    def _send_id(self, client: _Client) -> None:
        """Identify the client (RFC 2971) where the server offers ID.

        NetEase (163.com, 126.com) refuses SELECT with "Unsafe Login" until the
        client has sent ID; other servers just log it. A refusal is ignored.
        """
        try:
            if b"ID" in client.capabilities():
                client.id_({"name": "crm-automation", "version": "0.1"})
        except (IMAPClientError, *DROPPED) as e:
            log.debug("%s: IMAP ID not accepted: %s", self.where, self._scrub(str(e)))

    def _conn(self) -> _Client:
        if self._client is None:
            self._client = self._open()
            self._selected = None
        return self._client

    def _drop(self) -> None:
        """Forget a broken connection without waiting on it."""
        if self._client is not None:
            with _quiet():
                self._client.shutdown()
        self._client = None
        self._selected = None

    def _call(self, what: str, op: Callable[[_Client], T]) -> T:
        """Run ``op`` on the connection, reconnecting once if the connection dropped."""
        for attempt in (1, 2):
            client = self._conn()
            try:
                return op(client)
            except DROPPED as e:
                self._drop()
                if attempt == 2:
                    raise ServiceError(f"{self.where}: connection lost again while {what}: "
                                       f"{type(e).__name__}: {self._scrub(str(e))}") from None
                log.warning("%s: connection lost while %s (%s); reconnecting", self.where, what, type(e).__name__)
            except IMAPClientError as e:
                raise ServiceError(f"{self.where}: {what} failed: {self._scrub(str(e))}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _server_name(self, client: _Client, folder: str) -> str:
        """The server's name for a configured folder: ``/`` is the hierarchy separator in the config.

        Mail clients show ``CRM/Processed`` whatever the server's delimiter is;
        Dovecot's Maildir++ default is ``.`` and refuses ``/`` in a name, Gmail,
        Exchange, QQ and 163 use ``/``. The delimiter is read once (``LIST "" ""``).
        """
        if "/" not in folder:
            return folder
        if self._delimiter is None:
            listed = client.list_folders("", "")
            delim = listed[0][1] if listed and listed[0][1] else b"/"
            self._delimiter = delim.decode() if isinstance(delim, bytes) else str(delim)
        return folder if self._delimiter == "/" else folder.replace("/", self._delimiter)

    def _select(self, client: _Client, folder: str, *, readonly: bool) -> dict[bytes, object]:
        """SELECT/EXAMINE ``folder``; a missing folder is reported by name."""
        name = self._server_name(client, folder)
        try:
            info = client.select_folder(name, readonly=readonly)
        except imaplib.IMAP4.abort:
            raise  # the connection dropped: _call reconnects
        except IMAPClientError as e:
            if not client.folder_exists(name):
                names = ", ".join(sorted(str(f[2]) for f in client.list_folders()))
                raise ServiceError(f"{self.where}: folder {folder!r} does not exist (folders there: {names})",
                                   hint=f"fix {self.section}.folders, or create the folder") from None
            raise ServiceError(f"{self.where}: cannot open folder {folder!r}: {self._scrub(str(e))}") from None
        self._selected = (folder, readonly)
        return info

    def _ensure_selected(self, client: _Client, folder: str) -> dict[bytes, object] | None:
        """Select ``folder`` read-only unless it is already selected (in either mode)."""
        if self._selected is not None and self._selected[0] == folder:
            return None
        return self._select(client, folder, readonly=True)

    def close(self) -> None:
        """Log out; a connection that is already gone is simply dropped."""
        if self._client is None:
            return
        try:
            self._client.logout()
        except (*DROPPED, IMAPClientError):
            self._drop()
        self._client = None
        self._selected = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _quiet:  # noqa: N801 - used like contextlib.suppress
    """Suppress connection errors while tearing down a connection that is already broken."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> bool:
        return exc_type is not None and issubclass(exc_type, (*DROPPED, IMAPClientError))
