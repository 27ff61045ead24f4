"""Composing outgoing mail: sender identity, Message-ID, template context, unsubscribe links, rendering.

One module so the send pass, ``preview``, the owner notification and,
later, a web endpoint (one-click unsubscribe, a dashboard's "send now")
build messages the same way (issue #10). Pure apart from reading templates:
the time comes in as ``now``. Templates render in the workspace's Jinja2
sandbox (:mod:`crm_automation.templating`); bytes are assembled by
:func:`~crm_automation.templating.build_message`, which keeps every header
free of CR/LF.

The owner notification is a template too (``_owner_notification.txt``),
overridable in ``email_templates/`` like the others; the default ships with
the package (bilingual, as the team reads both). So is the owner digest
(issue #21): ``[digest] template`` in ``email_templates/``, else the
package's ``default_templates/<language>/digest.txt`` (+ ``.html``) in the
workspace's ``[workspace] language`` (``zh-CN`` or ``en``).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import quote

from crm_automation.addresses import ascii_domain, wire_address
from crm_automation.config import Config
from crm_automation.errors import DataError
from crm_automation.models import CustomerView
from crm_automation.templating import Templates, build_message
from crm_automation.tokens import mailto_subject, token_of
from crm_automation.tracking import track

NOTIFICATION = "_owner_notification"
DIGEST = "digest"  # the shipped digest template's name (issue #21)
DIGEST_NAMES = frozenset({"owner", "digest", "sender", "now"})  # what a digest template sees (app/digest.py)
DEFAULT_TEMPLATES = Path(__file__).resolve().parent / "default_templates"


@dataclass(frozen=True, slots=True)
class Composed:
    """One finished message: the bytes to hand over, and the subject and text the log keeps.

    ``text`` is the text part as rendered, before any link was tracked
    (the timeline shows where the links lead); ``links``: the original URL
    of each tracked link by number (issue #19), recorded with the send.
    """

    data: bytes
    subject: str
    text: str
    links: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Sender:
    """Who a message is from: ``[outbound]``'s from/reply_to, or an SMTP account's (issue #20, part 3).

    ``name``/``addr`` are ``from_`` parsed once (templates see them as
    ``sender.name``/``sender.email``; ``addr`` is also the envelope's ``MAIL
    FROM``, which QQ Mail, 163 and Exmail require to be the logged-in account).
    """

    from_: str
    reply_to: str | None = None
    name: str = ""
    addr: str = ""

    @classmethod
    def of(cls, from_: str, reply_to: str | None) -> Sender:
        """The sender with its display name and address parsed."""
        name, addr = parseaddr(from_)
        return cls(from_, reply_to, name, addr)


@dataclass(frozen=True, slots=True)
class InboundNote:
    """What the owner is told about a customer's message (from its ``email_in`` activity)."""

    subject: str
    body: str
    message_id: str | None


class Composer:
    """Builds the workspace's outgoing messages; one per run (sender parsing and templates are cached)."""

    def __init__(self, cfg: Config, templates: Templates, *,
                 name_field: Callable[[], str | None] = lambda: "name") -> None:
        ob = cfg.outbound
        self.cfg = cfg
        self.templates = templates
        # the mapping's name role (issue #18), asked at each use: the worker reloads an edited mapping
        self.name_field = name_field
        self.sender = Sender.of(ob.from_, ob.reply_to)  # ``[outbound]``'s own; an account's is passed to build
        self.from_name, self.from_addr = self.sender.name, self.sender.addr
        self.domain = _id_domain(self.from_addr.rpartition("@")[2])
        self.mailto = _mailto_address(parseaddr(ob.unsubscribe_mailto or ob.from_)[1])
        self.public_url = cfg.serve.public_url  # where tracked links point (issue #19); None: never tracked
        self._defaults: Templates | None = None
        self._digest_defaults: Templates | None = None
        self._mailto_of: tuple[str | None, str] = (None, "")  # (Message-ID, its mailto): asked twice a message

    def refresh(self) -> None:
        """Once a send pass: forget compiled templates whose files changed on disk (issue #17).

        The owner notification (the workspace's own ``_owner_notification``)
        is not a campaign template, so the pass's checks do not see it; this
        makes its edits count too. The package's default never changes.
        """
        self.templates.revalidate()

    def message_id(self) -> str:
        """A new, unique Message-ID on the sender's domain (SPEC §10)."""
        return f"<crm.{uuid.uuid4().hex}@{self.domain}>"

    def unsubscribe_link(self, email: str, message_id: str) -> str:
        """What templates show as ``unsubscribe``: the one-click URL when configured, else the mailto."""
        url = self.cfg.outbound.unsubscribe_url
        if url:
            return url.replace("{token}", token_of(message_id))  # the only placeholder (config.py; issue #19)
        return self.unsubscribe_mailto(message_id)

    def unsubscribe_mailto(self, message_id: str) -> str:
        """``mailto:ADDRESS?subject=unsubscribe%20TOKEN``: the send's token rides in the subject (issue #17).

        So a request sent from another of the customer's accounts still names
        the customer; why the subject and not a plus address, and what the
        providers' buttons send, is in :mod:`crm_automation.tokens`. The
        template's ``unsubscribe`` and the ``List-Unsubscribe`` header both ask
        for the same message's link: the last one is kept (the send loop's
        per-message path, issue #18).
        """
        if self._mailto_of[0] != message_id:
            self._mailto_of = (message_id, f"mailto:{self.mailto}?subject={mailto_subject(token_of(message_id))}")
        return self._mailto_of[1]

    def list_unsubscribe(self, email: str, message_id: str) -> str:
        """The ``List-Unsubscribe`` header value (RFC 2369; with the URL for RFC 8058 one-click)."""
        parts = [f"<{self.unsubscribe_mailto(message_id)}>"]
        if self.cfg.outbound.unsubscribe_url:
            parts.append(f"<{self.unsubscribe_link(email, message_id)}>")
        return ", ".join(parts)

    def context(self, view: CustomerView, campaign_id: str, step: int, message_id: str,
                now: datetime, sender: Sender | None = None) -> dict[str, Any]:
        """The names a campaign template sees (SPEC §6); ``sender``: the account's (default ``[outbound]``'s)."""
        who = sender or self.sender
        return {"customer": {**view.data, "_key": view.key}, "campaign": {"id": campaign_id, "step": step},
                "sender": {"name": who.name, "email": who.addr, "from": who.from_},
                "unsubscribe": self.unsubscribe_link(view.email or "", message_id),
                "now": now.astimezone(self.cfg.timezone)}

    def campaign_email(self, template: str, view: CustomerView, campaign_id: str, step: int, message_id: str,
                       now: datetime, *, track_clicks: bool = False, track_opens: bool = False,
                       sender: Sender | None = None) -> Composed:
        """Render and build one campaign email; a DataError names the template or the bad address.

        ``track_clicks``/``track_opens``: the campaign's (issue #19); they
        change the message only when ``[serve] public_url`` is set (``check``
        says so otherwise), and cost nothing when off. ``sender``: the SMTP
        account's From and Reply-To (issue #20 part 3; None: ``[outbound]``'s).
        """
        who = sender or self.sender
        r = self.templates.render(template, self.context(view, campaign_id, step, message_id, now, who))
        ob = self.cfg.outbound
        name = value if isinstance(value := self._name(view), str) else None
        if not view.email or "@" not in view.email or any(c in view.email for c in " \r\n<>,;\""):
            raise DataError(f"customer {view.key!r}: {view.email!r} is not a usable address")
        sent = r
        links: tuple[str, ...] = ()
        if (track_clicks or track_opens) and self.public_url:
            t = track(r.text, r.html, base=self.public_url, token=token_of(message_id), clicks=track_clicks,
                      opens=track_opens, keep=(self.unsubscribe_link(view.email, message_id),))
            sent, links = dataclasses.replace(r, text=t.text, html=t.html), t.links
        data = build_message(sent, sender=who.from_, to_name=name, to_email=view.email, message_id=message_id,
                             now=now, reply_to=who.reply_to,
                             list_unsubscribe=self.list_unsubscribe(view.email, message_id),
                             one_click=bool(ob.unsubscribe_url))
        return Composed(data, r.subject, r.text, links)

    def _name(self, view: CustomerView) -> object:
        """The value of the customer's name role (None when the mapping has no name field)."""
        field = self.name_field()
        return view.data.get(field) if field else None

    def owner_notification(self, view: CustomerView, note: InboundNote, owner: str, message_id: str,
                           now: datetime, sender: Sender | None = None) -> Composed:
        """The owner's note: who wrote, what they newly wrote, and a reply link that keeps the thread."""
        name = self._name(view) or view.key
        reply_link = f"mailto:{view.email}?subject={quote('Re: ' + note.subject)}"
        if note.message_id:
            reply_link += f"&In-Reply-To={quote(note.message_id)}"
        ctx = {"name": name, "email": view.email or "", "key": view.key, "subject": note.subject,
               "body": note.body, "reply_link": reply_link, "customer": {**view.data, "_key": view.key},
               "now": now.astimezone(self.cfg.timezone)}
        r = self._notification_templates().render(NOTIFICATION, ctx)
        extra = {"In-Reply-To": note.message_id, "References": note.message_id} if note.message_id else {}
        data = build_message(r, sender=(sender or self.sender).from_, to_name=None, to_email=owner,
                             message_id=message_id, now=now, reply_to=view.email, extra_headers=extra)
        return Composed(data, r.subject, r.text)

    def owner_digest(self, owner: str, context: Mapping[str, object], message_id: str, now: datetime,
                     sender: Sender | None = None) -> Composed:
        """An owner's digest (issue #21): the digest template over its contents, to the owner, marked automatic.

        ``Auto-Submitted: auto-generated`` (RFC 3834 §5) and Exchange's
        ``X-Auto-Response-Suppress`` keep the owner's out-of-office from
        answering it; no ``List-Unsubscribe``: it is the team's own mail,
        turned off by removing ``[digest]``.
        """
        name, templates = self.digest_templates()
        who = sender or self.sender
        ctx = {**context, "sender": {"name": who.name, "email": who.addr, "from": who.from_},
               "now": now.astimezone(self.cfg.timezone)}
        r = templates.render(name, ctx)
        data = build_message(r, sender=who.from_, to_name=None, to_email=owner, message_id=message_id,
                             now=now, reply_to=who.reply_to,
                             extra_headers={"Auto-Submitted": "auto-generated", "X-Auto-Response-Suppress": "All"})
        return Composed(data, r.subject, r.text)

    def digest_problems(self) -> list[str]:
        """Every problem of the digest template (syntax, names a digest does not have, missing layouts)."""
        name, templates = self.digest_templates()
        return templates.check(name, set(), DIGEST_NAMES)

    def digest_templates(self) -> tuple[str, Templates]:
        """(template name, where it is): the workspace's ``[digest] template`` if it has one, else the shipped one."""
        name = self.cfg.digest.template if self.cfg.digest is not None else DIGEST
        if (self.templates.folder / f"{name}.txt").is_file():
            return name, self.templates
        if self._digest_defaults is None:
            folder = DEFAULT_TEMPLATES / self.cfg.language
            if not (folder / f"{DIGEST}.txt").is_file():  # a language without a shipped digest reads English
                folder = DEFAULT_TEMPLATES / "en"
            self._digest_defaults = Templates(folder, self.cfg.timezone)
        return DIGEST, self._digest_defaults

    def _notification_templates(self) -> Templates:
        """The workspace's templates when it has its own notification, else the package's default."""
        if (self.templates.folder / f"{NOTIFICATION}.txt").is_file():
            return self.templates
        if self._defaults is None:
            self._defaults = Templates(DEFAULT_TEMPLATES, self.cfg.timezone)
        return self._defaults


def _id_domain(domain: str) -> str:
    """The Message-ID's domain: the sender's, as A-labels (a Message-ID is ASCII, RFC 5322 §3.6.4)."""
    try:
        return ascii_domain(domain) if domain else "localhost"
    except DataError:
        return "localhost"


def _mailto_address(addr: str) -> str:
    """The unsubscribe address as a ``mailto:`` URI writes it (RFC 6068 §2).

    An IDN domain as A-labels and a non-ASCII local part percent-encoded as
    UTF-8, so ``List-Unsubscribe`` stays ASCII (issue #17).
    """
    if addr.isascii():
        return addr
    try:
        local, _, domain = wire_address(addr).address.rpartition("@")
    except DataError:
        local, _, domain = addr.rpartition("@")
    return f"{quote(local, safe='')}@{domain}" if local else quote(addr, safe="@")
