"""What an inbound message is: bounce, auto-reply, unsubscribe request or a reply.

The order matters (SPEC §9): a bounce is checked first (delivery reports
also carry ``Auto-Submitted``), then auto-replies (an out-of-office answer
may quote the word "unsubscribe" from the footer it answers), then
unsubscribe requests; everything else is ``email_in``.

Bounces are detected with GNU Mailman's ``flufl.bounce`` plus our own reading
of RFC 3464 ``Action:``/``Status:`` fields, which tells a permanent failure
(``5.x.x``, ``failed``) from a temporary one (``4.x.x``, ``delayed``). The
Chinese providers (QQ Mail, 163.com) send no DSN and are not known to
``flufl.bounce``; their notices are read from the text. To keep the common
path fast, the message is only re-parsed for ``flufl.bounce`` when a cheap
pre-check (sender, ``multipart/report``, subject) says it may be a bounce.

``Precedence: bulk``, ``junk`` and ``list`` are deliberately NOT auto-replies:
RFC 3834 §3.1.8 uses them to tell responders not to answer newsletters and
list traffic, but a person's message through a list carries them too and is
a real reply. Only ``Precedence: auto_reply`` counts.
"""

from __future__ import annotations

import email
import email.errors
import email.utils
import re
import unicodedata
from collections.abc import Iterable
from email.message import Message

import flufl.bounce

from crm_automation.models import Classification, Kind, ParsedMessage

__all__ = ["classify"]

_ASCII_ONLY = bytes(range(128)) + b"?" * 128
_BOUNCE_SENDERS = re.compile(r"^(?:mailer-daemon|mailer_daemon|postmaster|mail-daemon|mdaemon|mailerdaemon)$")
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered mail|delivery status notification|delivery failure|delivery has failed|"
    r"mail delivery failed|returned mail|failure notice|delivery notification|non[- ]?delivery|"
    r"delayed mail|warning: message .* delayed|"
    r"退信|系统退信|投递失败|未送达|无法送达|无法投递|发送失败|投遞失敗|退回",
    re.IGNORECASE,
)
_TEMPORARY_TEXT = re.compile(
    r"\(delay\)|delayed|will (?:continue to )?(?:be )?retr|still (?:being )?retr|not yet been delivered|"
    r"temporar|暂时|延迟|继续尝试|稍后重试|重试",
    re.IGNORECASE,
)
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_SMTP_CODE = re.compile(r"(?<![\d.])([45])\d\d(?![\d.])")
_ADDRESS = re.compile(r"[A-Za-z0-9._%+'=-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_RECIPIENT_HINT = re.compile(
    r"recipient|address|failed|could not|couldn't|unknown|not found|does not exist|undeliver|rcpt|"
    r"delivered to|收件人|收信人|地址|无法|不存在|退回|失败|投递|發送|收件者|^\s*\S+@\S+\s*$",
    re.IGNORECASE,
)

_AUTO_SUBJECT = re.compile(
    r"^[\s【\[(（]*(?:auto(?:matic)?[ -]?(?:reply|response|answer)|autoreply|auto:|out of (?:the )?office|"
    r"on vacation|vacation reply|abwesenheit|automatische antwort|"
    r"自动回复|自动答复|自動回覆|自動回复|休假|不在办公室)",
    re.IGNORECASE,
)
_AUTO_BODY = re.compile(r"这是一封自动回复邮件|假期自动回复邮件|此邮件为自动回复|这是一封自动回复|本邮件为自动回复")

_UNSUBSCRIBE_EN = re.compile(
    r"^(?:please|pls|kindly)?(?:unsubscribe|unsub|remove|optout|stop)(?:me|us)?"
    r"(?:from(?:this|the|your|all)?(?:list|mailinglist|mailing|emails?|newsletters?|mailings?))?"
    r"(?:please|pls|thanks|thankyou|thx)?$"
)
_UNSUBSCRIBE_ZH = re.compile(
    r"^(?:您好|你好)?(?:请|麻烦|麻烦你|麻烦您|我要|我想|帮我)?(?:帮我)?"
    r"(?:退订|取消订阅|退订邮件|取消邮件订阅|退订此邮件|拒收|不要再发了?|请勿再发|别再发了?|不再接收)"
    r"(?:一下)?(?:邮件)?(?:了)?(?:谢谢|谢了|多谢|感谢)?$"
)
_UNSUBSCRIBE_WORDS = frozenset({"t", "td", "退", "退订", "unsubscribe", "退订谢谢", "谢谢退订"})
_MAX_UNSUBSCRIBE_CHARS = 40
_REPLY_PREFIX = re.compile(r"^\s*(?:(?:re|fw|fwd|aw|sv|回复|答复|回覆|转发)\s*[:：]\s*)+", re.IGNORECASE)


def classify(msg: ParsedMessage, *, unsubscribe_addresses: frozenset[str] = frozenset()) -> Classification:
    """Classify ``msg`` as bounce, auto_reply, unsubscribe or email_in, with evidence.

    ``unsubscribe_addresses`` are the addresses whose mail is always an
    unsubscribe request (``unsubscribe_mailto``, SPEC §9).
    """
    return (
        _bounce(msg)
        or _auto_reply(msg)
        or _unsubscribe(msg, unsubscribe_addresses)
        or Classification(Kind.EMAIL_IN, "no bounce, auto-reply or unsubscribe sign")
    )


# -- bounces -----------------------------------------------------------------


def _bounce_hint(msg: ParsedMessage) -> str | None:
    """The cheap pre-check: why this may be a bounce, or None."""
    local = msg.from_addr.split("@", 1)[0]
    if _BOUNCE_SENDERS.match(local):
        return f"sender {msg.from_addr}"
    ctype = msg.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/report") and "delivery-status" in ctype:
        return "Content-Type multipart/report"
    if "x-failed-recipients" in msg.headers:
        return "header X-Failed-Recipients"
    if _BOUNCE_SUBJECT.search(msg.subject):
        return f"subject {msg.subject[:60]!r}"
    return None


def _bounce(msg: ParsedMessage) -> Classification | None:
    """A bounce, read in order of trust: RFC 3464 fields, flufl.bounce, then the notice text."""
    hint = _bounce_hint(msg)
    if hint is None:
        return None
    strong = not hint.startswith("subject")
    mime = _reparse(msg)

    # 1. RFC 3464 delivery-status fields.
    dsn = _dsn_failures(mime) if mime is not None else []
    if dsn:
        permanent = any(p for _a, p, _s in dsn)
        recipients = _unique(a for a, p, _s in dsn if p == permanent)
        status = next(s for a, p, s in dsn if p == permanent)
        word = "Status" if status[0].isdigit() else "Action"
        return Classification(
            Kind.BOUNCE, f"DSN {word} {status} for {', '.join(recipients)}", recipients, permanent
        )
    if mime is not None and _is_success_report(mime):
        return Classification(Kind.AUTO_REPLY, "delivery report without failures (Action delivered/relayed)")

    # 2. GNU Mailman's detectors (Postfix, Exim, Exchange, qmail ...).
    temporary, permanent_set = _flufl(mime)
    text_temporary = bool(_TEMPORARY_TEXT.search(msg.subject) or _TEMPORARY_TEXT.search(msg.text[:3000]))
    if permanent_set or temporary:
        is_permanent = bool(permanent_set) and not (text_temporary and not _permanent_code(msg.text))
        chosen = permanent_set if permanent_set else temporary
        recipients = _unique(sorted(chosen))
        kind = "permanent" if is_permanent else "temporary"
        return Classification(
            Kind.BOUNCE, f"{kind} failure for {', '.join(recipients)} (flufl.bounce; {hint})", recipients, is_permanent
        )

    # 3. Our own reading: X-Failed-Recipients, then addresses in the notice.
    recipients = _unique(a.strip().lower() for a in msg.headers.get("x-failed-recipients", "").split(",") if a.strip())
    source = "header X-Failed-Recipients"
    if not recipients:
        recipients = _text_recipients(msg)
        source = "notice text"
    if not strong and not (recipients and (_STATUS.search(msg.text) or _SMTP_CODE.search(msg.text))):
        # Only the subject looked like a bounce: a person writing about a
        # returned parcel ("退回") must not become a bounce of their colleague.
        return None
    code = _permanent_code(msg.text)
    # A notice without a 5xx code that says "delayed"/"暂时" is temporary;
    # one that says nothing either way is taken as permanent, as they usually are.
    is_permanent = code is not None or not text_temporary
    if code is None:
        temp = _STATUS.search(msg.text) or _SMTP_CODE.search(msg.text)
        code = temp.group(0) if temp else None
    detail = ("permanent failure" if is_permanent else "temporary failure") + (f" {code}" if code else "")
    who = ", ".join(recipients) if recipients else "unknown recipient"
    return Classification(Kind.BOUNCE, f"{detail} for {who} ({source}; {hint})", recipients, is_permanent)


def _reparse(msg: ParsedMessage) -> Message | None:
    """The bounce as a stdlib Message for flufl.bounce, with 8-bit bytes made ASCII.

    compat32 hands raw 8-bit header values out as ``Header`` objects, on
    which flufl.bounce's detectors call ``.lower()`` and crash (logging a
    traceback each time). Bounce notices name addresses in ASCII anyway,
    so every byte over 0x7F becomes ``?`` first.
    """
    if not msg.raw:
        return None
    try:
        return email.message_from_bytes(msg.raw.translate(_ASCII_ONLY))
    except (ValueError, LookupError, TypeError, AttributeError, IndexError, RecursionError,
            email.errors.MessageError):
        return None


def _dsn_failures(mime: Message) -> list[tuple[str, bool, str]]:
    """(recipient, permanent, status) for each failed or delayed recipient in a DSN."""
    out: list[tuple[str, bool, str]] = []
    for part in mime.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        blocks = part.get_payload()
        if not isinstance(blocks, list):
            continue
        for block in blocks:
            if not isinstance(block, Message):
                continue
            action = str(block.get("action", "")).strip().lower()
            status_match = _STATUS.search(str(block.get("status", "")))
            status = status_match.group(0) if status_match else ""
            addr = _dsn_address(block)
            if not addr:
                continue
            if status.startswith("5") or (not status and action == "failed"):
                out.append((addr, True, status or action))
            elif status.startswith("4") or action == "delayed":
                out.append((addr, False, status or action))
            elif action == "failed":
                out.append((addr, True, action))
    return out


def _dsn_address(block: Message) -> str:
    for name in ("original-recipient", "final-recipient"):
        value = str(block.get(name, ""))
        m = _ADDRESS.search(value.split(";", 1)[-1])
        if m:
            return m.group(0).lower()
    return ""


def _is_success_report(mime: Message) -> bool:
    for part in mime.walk():
        if part.get_content_type() == "message/delivery-status":
            blocks = part.get_payload()
            if isinstance(blocks, list):
                actions = {str(b.get("action", "")).strip().lower() for b in blocks if isinstance(b, Message)}
                actions.discard("")
                return bool(actions) and actions <= {"delivered", "relayed", "expanded"}
    return False


def _flufl(mime: Message | None) -> tuple[frozenset[bytes | str], frozenset[bytes | str]]:
    if mime is None:
        return frozenset(), frozenset()
    # flufl.bounce's Yale detector indexes getaddresses(From)[0] and logs a
    # traceback (then raises) when From holds no address: skip it up front.
    if not email.utils.getaddresses([str(mime.get("from", ""))]):
        return frozenset(), frozenset()
    try:
        temporary, permanent = flufl.bounce.all_failures(mime)
    except (ValueError, LookupError, TypeError, AttributeError, IndexError, UnicodeError,
            email.errors.MessageError):
        return frozenset(), frozenset()
    return frozenset(temporary), frozenset(permanent)


def _unique(items: Iterable[bytes | str]) -> tuple[str, ...]:
    """Lower-cased, de-duplicated addresses in first-seen order (flufl gives bytes)."""
    out: list[str] = []
    for item in items:
        text = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
        text = text.strip().strip("<>").lower()
        if text and text not in out:
            out.append(text)
    return tuple(out)


def _permanent_code(text: str) -> str | None:
    """The first 5.x.x status or 5xx SMTP code in the notice, if any."""
    m = _STATUS.search(text)
    if m and m.group(1) == "5":
        return m.group(0)
    m = _SMTP_CODE.search(text)
    if m and m.group(1) == "5":
        return m.group(0)
    return None


def _text_recipients(msg: ParsedMessage) -> tuple[str, ...]:
    """Addresses named on recipient-ish lines of the notice, minus the bounce's own parties."""
    own = {msg.from_addr, *msg.to_addrs}
    found: list[str] = []
    for line in msg.text[:5000].splitlines():
        if not _RECIPIENT_HINT.search(line):
            continue
        for addr in _ADDRESS.findall(line):
            addr = addr.lower().strip(".")
            local = addr.split("@", 1)[0]
            if addr in own or _BOUNCE_SENDERS.match(local) or addr in found:
                continue
            found.append(addr)
    return tuple(found)


# -- auto-replies ----------------------------------------------------------------


def _auto_reply(msg: ParsedMessage) -> Classification | None:
    h = msg.headers
    auto_submitted = re.sub(r"\(.*?\)", "", h.get("auto-submitted", "")).strip().lower()
    if auto_submitted and auto_submitted != "no":
        return _auto(f"header Auto-Submitted: {auto_submitted}")
    for name, label in (("x-autoreply", "X-Autoreply"), ("x-autorespond", "X-Autorespond"),
                        ("x-auto-reply", "X-Auto-Reply")):
        if name in h and h[name].strip().lower() not in {"no", "false", "0"}:
            return _auto(f"header {label}: {h[name].strip()}")
    suppress = h.get("x-auto-response-suppress", "")
    tokens = {t.strip().lower() for t in suppress.split(",")}
    if tokens & {"oof", "all"}:
        return _auto(f"header X-Auto-Response-Suppress: {suppress.strip()}")
    if h.get("precedence", "").strip().lower() in {"auto_reply", "auto-reply"}:
        return _auto("header Precedence: auto_reply")
    m = _AUTO_SUBJECT.match(msg.subject)
    if m:
        return _auto(f"subject starts with {m.group(0).strip(' 【[(（')}")
    m = _AUTO_BODY.search(msg.text[:500])
    if m:
        return _auto(f"body says {m.group(0)}")
    return None


def _auto(evidence: str) -> Classification:
    return Classification(Kind.AUTO_REPLY, evidence)


# -- unsubscribe requests ------------------------------------------------------------


def _normalise(text: str) -> str:
    """Lower-case, drop punctuation, symbols and white space (also full-width ones)."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if unicodedata.category(ch)[0] not in {"P", "S", "Z", "C"})


def _is_unsubscribe_text(text: str) -> bool:
    word = _normalise(text)
    if not word or len(word) > _MAX_UNSUBSCRIBE_CHARS:
        return False
    return word in _UNSUBSCRIBE_WORDS or bool(_UNSUBSCRIBE_EN.match(word) or _UNSUBSCRIBE_ZH.match(word))


def _unsubscribe(msg: ParsedMessage, addresses: frozenset[str]) -> Classification | None:
    wanted = {a.lower() for a in addresses}
    for addr in msg.to_addrs:
        if addr in wanted:
            return Classification(Kind.UNSUBSCRIBE, f"sent to unsubscribe address {addr}")
    reply = msg.reply.strip()
    if reply:
        if _is_unsubscribe_text(reply):
            return Classification(Kind.UNSUBSCRIBE, f"short reply {reply[:_MAX_UNSUBSCRIBE_CHARS]!r}")
        return None
    subject = _REPLY_PREFIX.sub("", msg.subject)
    if _is_unsubscribe_text(subject):
        return Classification(Kind.UNSUBSCRIBE, f"empty reply with subject {msg.subject[:60]!r}")
    return None
