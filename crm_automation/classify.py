"""What an inbound message is: bounce, auto-reply, unsubscribe request or a reply.

The order matters (SPEC §9): a bounce is checked first (delivery reports
also carry ``Auto-Submitted``), then auto-replies (an out-of-office answer
may quote the word "unsubscribe" from the footer it answers), then
unsubscribe requests; everything else is ``email_in``.

Bounces are detected with GNU Mailman's ``flufl.bounce`` plus our own reading
of RFC 3464 ``Action:``/``Status:`` fields. Every failed recipient is named
with its own permanence (issue #11): ``Action: failed`` means the message is
lost whatever the status class — *hard* with a 5.x.x status, *soft* with a
4.x.x one (4.4.7 "delivery time expired": the server gave up); ``Action:
delayed`` is a *delay* (still retrying). The Chinese providers (QQ Mail,
163.com) and many older servers send no DSN and are not known to
``flufl.bounce``; their notices are read from the text, recipient by
recipient. To keep the common path fast, the message is only re-parsed for
``flufl.bounce`` when a cheap pre-check (sender, ``multipart/report``,
subject) says it may be a bounce.

A notice without DSN structure (a postmaster-like sender, or a failure
subject) is a bounce when its text names one of *our* recipients (the
``is_ours`` callback: a customer's address) next to a failure phrase; the
evidence says which rule decided. ``Auto-Submitted`` alone never makes a
delivery failure an auto-reply: bounces are checked first.

Internationalized reports (RFC 6533: ``message/global-delivery-status``,
returning ``message/global`` or ``message/global-headers``) are read from
their bytes, as neither the stdlib nor flufl.bounce knows them
(:func:`_global_report`, issue #17). Out-of-office notices are known by
their headers, their subject, or their words alone (``_OOO_SELF``,
``_OOO_AWAY``: a gateway may strip the headers, issue #17).

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
from collections.abc import Callable, Iterable
from email.message import Message

import flufl.bounce

from crm_automation.models import BounceFailure, Classification, Kind, ParsedMessage, Permanence

__all__ = ["classify", "mass_mail", "robot_sender"]

_ASCII_ONLY = bytes(range(128)) + b"?" * 128
_BOUNCE_SENDERS = re.compile(r"^(?:mailer-daemon|mailer_daemon|postmaster|mail-daemon|mdaemon|mailerdaemon)$")
# Display names of delivery-failure senders whose address says nothing ("Mail Delivery System <mx@...>").
_BOUNCE_NAMES = re.compile(r"mail delivery (?:sub)?system|mailer[- _]?daemon|postmaster|mail administrator|"
                           r"系统退信|退信|邮件系统|系統退信", re.IGNORECASE)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered mail|delivery status notification|delivery failure|delivery has failed|"
    r"mail delivery failed|returned mail|failure notice|delivery notification|non[- ]?delivery|"
    r"delayed mail|warning: message .* delayed|could not be delivered|delivery warning|rejected mail|"
    r"returned to sender|delivery failed|"
    r"退信|系统退信|投递失败|未送达|无法送达|无法投递|发送失败|投遞失敗|退回",
    re.IGNORECASE,
)
# Next to one of our recipients, these say the delivery failed (rule for notices without DSN structure).
_FAILURE_PHRASE = re.compile(
    r"user unknown|unknown user|no such user|does not exist|doesn't have a .{0,20}account|not found|"
    r"mailbox (?:unavailable|full|is full|not found)|over quota|quota exceeded|rejected|refused|"
    r"could not be delivered|undeliverable|unable to deliver|delivery (?:has )?failed|failed|"
    r"invalid (?:recipient|address|mailbox)|address (?:rejected|unknown)|expired|"
    r"用户不存在|收件人不存在|地址不存在|无效|拒收|被拒|退回|投递失败|失败|满",
    re.IGNORECASE,
)
# A 4.x.x failure with these words is a lost message (the server gave up), not a delay.
_GAVE_UP = re.compile(r"\bfailed\b|expired|gave up|giving up|retry time(?:out)? exceeded|"
                      r"could not be delivered|undeliver|returned to sender|已退回|放弃", re.IGNORECASE)
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
    r"away from (?:the |my )?office|not in (?:the )?office|ooo\b|on vacation|vacation reply|on (?:annual )?leave|"
    r"abwesenheit|automatische antwort|"
    r"自动回复|自动答复|自動回覆|自動回复|休假|不在办公室|不在辦公室|外出(?:中|期间|期間|[:：】\]）)])|出差(?:中|期间|期間))",
    re.IGNORECASE,
)
# The same words in brackets anywhere in the subject ("Re: 报价【自动回复】", "Your quote [Out of Office]").
_AUTO_SUBJECT_TAG = re.compile(r"[【\[(（]\s*(?:自动回复|自動回覆|自动答复|auto[- ]?reply|automatic reply|"
                               r"out of (?:the )?office|外出|休假中?)\s*[】\])）]", re.IGNORECASE)
_AUTO_BODY = re.compile(r"这是一封自动回复邮件|假期自动回复邮件|此邮件为自动回复|这是一封自动回复|本邮件为自动回复")

# Out-of-office replies without auto-reply headers (issue #17: many gateways and clients strip them, or
# a person sets up a rule that sends a plain message). A notice says so itself ("this is an automatic
# reply", "这是一封自动回复邮件") or, in the first person and the present or future, that its writer is
# away AND what follows from it: when they answer, who to call meanwhile, that mail waits. A reply that
# only mentions a holiday ("after the 春节 holiday we would like to order", "I was out of office last
# week") has no such pair. Read in what the sender newly wrote (quotes removed), its first 600 characters.
_OOO_SELF = re.compile(
    r"\bthis is an? (?:auto(?:matic(?:ally[- ]generated)?|mated|[- ]?generated)?[- ]?)"
    r"(?:reply|response|answer|message|e-?mail)"
    r"|\b(?:this|the) (?:message|e-?mail) (?:is|was|has been) (?:sent |generated )?automatically"
    r"|(?:这|此|本)(?:是|为|係|為)(?:一封)?(?:来自[^，。,.\n]{0,12}的|來自[^，。,.\n]{0,12}的)?(?:假期)?自(?:动|動)(?:回复|答复|回覆|回信)"
    r"|(?:此|本)(?:邮件|郵件|信)(?:是|为|為|係)?(?:系统|系統)?自(?:动|動)(?:回复|答复|回覆|发送|發送)",
    re.IGNORECASE,
)
_OOO_AWAY = re.compile(
    # English: "I am (currently) out of (the) office", "I'm on annual leave", "I will be travelling" ...
    r"\b(?:i\s+am|i['’]m|i\s+will\s+be|i['’]ll\s+be|i\s+shall\s+be)\s+(?:currently\s+|now\s+|presently\s+)?"
    r"(?P<en>out\s+of\s+(?:the\s+)?office|ooo\b|away\s+from\s+(?:the\s+|my\s+)?(?:office|desk|e-?mail)|away\b|"
    r"on\s+(?:annual\s+|sick\s+|maternity\s+|paternity\s+|parental\s+|business\s+|study\s+|public\s+)?"
    r"(?:leave|vacation|holidays?)|travell?ing|on\s+a\s+business\s+trip|out\s+of\s+town|off\s+work)"
    # ... or the company: "our office is closed"
    r"|\b(?P<company>(?:our|the)\s+(?:office|offices|company)\s+(?:is|are|will\s+be)\s+closed|we\s+(?:are|will\s+be)\s+closed)"
    # Chinese: "我/本人 ... 休假/外出/出差/不在办公室" (not "我们": someone else may be away) ...
    r"|(?:我|本人)(?!们|們)(?P<gap>[^，。,.!！?？；;\n]{0,10}?)(?P<zh>休假|年假|度假|外出|出差|不在(?:办公室|辦公室|公司|座位)|"
    r"请假|請假|休产假|休產假|产假|產假)"
    # ... or the time of absence itself, and a company's holiday closure
    r"|(?P<during>(?:休假|外出|出差|放假|假期|度假)(?:期间|期間))"
    r"|(?P<closed>(?:我司|本公司|公司)(?:将|將)?于[^。\n]{0,24}?放假)",
    re.IGNORECASE,
)
# In the gap between "我" and the absence: a negation or the past ("我没有休假", "我上周在休假").
_OOO_NOT_NOW = re.compile(r"没|沒|不|未|上周|上週|上个?月|上個?月|前几天|前幾天|昨天|刚|剛|曾|之前")
_OOO_THEN = re.compile(
    r"(?:will|shall|['’]ll)\s+(?:respond|reply|get\s+back|answer|be\s+in\s+touch|deal\s+with|attend\s+to|read)"
    r"[^.\n]{0,60}?(?:upon|on|when|after|once)\s+(?:my|our|i|we)\b"
    r"|(?:limited|no|without|intermittent|restricted)\s+(?:access\s+to\s+(?:my\s+)?e-?mails?|e-?mail\s+access)"
    r"|(?:won['’]t|will\s+not)\s+be\s+(?:checking|reading|monitoring|able\s+to\s+(?:check|read|respond|reply))"
    r"|\burgent\b|\bin\s+my\s+absence\b|\bin\s+the\s+meantime\b|\bwhen\s+we\s+reopen|\breopen(?:s|ing)?\s+on\b"
    r"|\b(?:back|return(?:ing)?)\s+(?:to\s+(?:the\s+)?office\s+|in\s+the\s+office\s+)?on\s+\w"
    r"|\b(?:until|till|through)\s+(?:\d|the\s+\d|mon|tue|wed|thu|fri|sat|sun|jan|feb|mar|apr|may|jun|jul|aug|sep|oct|"
    r"nov|dec|next|end\s+of)"
    r"|(?:返回|回来|回來|回国|回國|回到|上班|收假|假期结束|假期結束|节后|節後|返岗|返崗)(?:后|後|以后|之后|之後)?"
    r"[^。\n]{0,10}?(?:回复|回覆|答复|答覆|处理|處理|联系|聯繫)"
    r"|(?:将|將|会|會)于[^。\n]{0,16}?(?:返回|回来|回來|回到|上班|返岗|返崗)"
    r"|(?:休假|假期|出差|外出)(?:至|到)\s*\d"
    r"|无法及时|無法及時|不能及时|不能及時|不便及时|暂时无法|暫時無法|不及时|不及時|延迟|延遲"
    r"|急事|紧急|緊急",
    re.IGNORECASE,
)
_OOO_WINDOW = 600
# What every rule above needs one of, searched first: without it, no rule can match (1 us for a reply of
# 100 characters instead of 13 for the rules themselves, issue #13's budget). Case-sensitive on purpose
# (IGNORECASE makes the search several times slower): the English words by a tail that is the same in both
# cases, or in both spellings.
_OOO_WORDS = re.compile(r"ffice|FFICE|eave|EAVE|acation|ACATION|oliday|OLIDAY|way|WAY|ravel|RAVEL|losed|LOSED|"
                        r"uto|UTO|OOO|ooo|trip|Trip|TRIP|f town|f Town|F TOWN|ff work|ff Work|FF WORK|"
                        r"假|外出|出差|不在|自[动動]|期[间間]")

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


def classify(msg: ParsedMessage, *, unsubscribe_addresses: frozenset[str] = frozenset(),
             is_ours: Callable[[str], bool] | None = None) -> Classification:
    """Classify ``msg`` as bounce, auto_reply, unsubscribe or email_in, with evidence.

    ``unsubscribe_addresses`` are the addresses whose mail is always an
    unsubscribe request (``unsubscribe_mailto``, SPEC §9). ``is_ours`` tells
    whether an address is one of our recipients (a customer's), for notices
    without DSN structure (issue #11).
    """
    return (
        _bounce(msg, is_ours)
        or _auto_reply(msg)
        or _unsubscribe(msg, unsubscribe_addresses)
        or _own_unsubscribe(msg)
        or Classification(Kind.EMAIL_IN, "no bounce, auto-reply or unsubscribe sign")
    )


# -- bounces -----------------------------------------------------------------


def _bounce_hint(msg: ParsedMessage) -> str | None:
    """The cheap pre-check: why this may be a bounce, or None."""
    local = msg.from_addr.split("@", 1)[0]
    if _BOUNCE_SENDERS.match(local):
        return f"sender {msg.from_addr}"
    if msg.from_name and _BOUNCE_NAMES.search(msg.from_name):
        return f"sender name {msg.from_name!r}"
    ctype = msg.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/report") and "delivery-status" in ctype:
        return "Content-Type multipart/report"
    if "x-failed-recipients" in msg.headers:
        return "header X-Failed-Recipients"
    if _BOUNCE_SUBJECT.search(msg.subject):
        return f"subject {msg.subject[:60]!r}"
    return None


def _bounce(msg: ParsedMessage, is_ours: Callable[[str], bool] | None = None) -> Classification | None:
    """A bounce, read in order of trust: RFC 3464 fields, flufl.bounce, then the notice text."""
    hint = _bounce_hint(msg)
    if hint is None:
        return None
    strong = not hint.startswith("subject")
    mime = _reparse(msg)
    blocks, global_original = _report_blocks(mime, msg.raw)
    original = (_original_message_id(mime) if mime is not None else None) or global_original

    # 1. RFC 3464 delivery-status fields (RFC 6533's global ones too): every recipient block, each with its
    # own permanence.
    dsn = _dsn_failures(blocks)
    if dsn:
        described = "; ".join(f"{f.address} {f.status} {f.permanence.value}" for f in dsn)
        return Classification(Kind.BOUNCE, f"DSN {described}", dsn, original)
    if _is_success_report(blocks):
        return Classification(Kind.AUTO_REPLY, "delivery report without failures (Action delivered/relayed)")

    # 2. GNU Mailman's detectors (Postfix, Exim, Exchange, qmail ...), refined per recipient from the text.
    temporary, permanent_set = _flufl(mime)
    if permanent_set or temporary:
        failures = _text_failures(msg, _unique([*sorted(permanent_set), *sorted(temporary)]),
                                  default_hard=bool(permanent_set), temporary=_unique(sorted(temporary)))
        return Classification(Kind.BOUNCE, f"{_describe(failures)} (flufl.bounce; {hint})", failures, original)

    # 3. Our own reading: X-Failed-Recipients, then addresses on recipient lines of the notice.
    recipients = _unique(a.strip().lower() for a in msg.headers.get("x-failed-recipients", "").split(",") if a.strip())
    source = "header X-Failed-Recipients"
    if not recipients:
        recipients = _text_recipients(msg)
        source = "notice text"
    ours = tuple(a for a in recipients if is_ours is not None and is_ours(a))
    has_code = bool(_STATUS.search(msg.text) or _SMTP_CODE.search(msg.text))
    if not strong and (_REPLY_PREFIX.match(msg.subject) or msg.in_reply_to):
        return None  # a person's reply about a failure ("the parcel was returned / 退回"), not a notice
    phrase = _near_failure(msg.text[:5000], ours)
    if ours and phrase is not None and (not strong or not has_code):
        # Issue #11: a notice without DSN structure that names our recipient next to a failure phrase.
        source = f"rule: notice names our recipient with {phrase.group(0)!r}"
        recipients = ours
    elif not strong and not (recipients and has_code):
        # Only the subject looked like a bounce: a person writing about a
        # returned parcel ("退回") must not become a bounce of their colleague.
        return None
    elif ours:
        recipients = ours  # a notice naming our customer and, say, the relay's postmaster: ours only
    failures = _text_failures(msg, recipients, default_hard=True)
    who = _describe(failures) if failures else "failure for unknown recipient"
    return Classification(Kind.BOUNCE, f"{who} ({source}; {hint})", failures, original)


def _near_failure(text: str, addresses: tuple[str, ...]) -> re.Match[str] | None:
    """A failure phrase on the line naming one of ``addresses``, or on the two lines around it."""
    if not addresses:
        return None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        low = line.lower()
        if any(a in low for a in addresses):
            m = _FAILURE_PHRASE.search("\n".join(lines[max(i - 1, 0):i + 3]))
            if m is not None:
                return m
    return None


def _describe(failures: Iterable[BounceFailure]) -> str:
    return "; ".join(f"{f.permanence.value} failure{' ' + f.status if f.status else ''} for {f.address}"
                     for f in failures)


def _text_failures(msg: ParsedMessage, recipients: tuple[str, ...], *, default_hard: bool,
                   temporary: tuple[str, ...] = ()) -> tuple[BounceFailure, ...]:
    """Each recipient's permanence, read from the part of the notice about it.

    Notices name several recipients one after the other (Exim, qmail): the
    lines from one address to the next are that recipient's. A 5.x.x or 5xx
    code there is hard; a 4.x.x status with "failed"/"expired" words is a
    lost message (soft); "delayed"/"will retry" is a delay. Without a sign
    for that recipient, the whole notice decides, as before: a permanent
    code anywhere is hard, "delayed" words a delay, and silence hard (as
    such notices usually are) — or flufl.bounce's own verdict.
    """
    text = msg.text[:20000]
    whole_code = _permanent_code(text)
    whole_temp = bool(_TEMPORARY_TEXT.search(msg.subject) or _TEMPORARY_TEXT.search(text[:3000]))
    lines = text.splitlines()
    starts: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        low = line.lower()
        for a in recipients:
            if a in low and all(a != b for _, b in starts):
                starts.append((i, a))
    starts.sort()
    segment: dict[str, str] = {}
    for n, (i, a) in enumerate(starts):
        end = starts[n + 1][0] if n + 1 < len(starts) else min(len(lines), i + 12)
        segment[a] = "\n".join(lines[i:max(end, i + 1)])
    out = []
    for a in recipients:
        seg = segment.get(a, "")
        out.append(_failure(a, seg, whole_code=whole_code, whole_temp=whole_temp,
                            default_hard=default_hard and a not in temporary))
    return tuple(out)


def _failure(address: str, segment: str, *, whole_code: str | None, whole_temp: bool,
             default_hard: bool) -> BounceFailure:
    code = _permanent_code(segment)
    if code:
        return BounceFailure(address, Permanence.HARD, code)
    status = _STATUS.search(segment) or _SMTP_CODE.search(segment)
    if status is not None and status.group(1) == "4":
        # Lost only when the text about it says the server gave up, and the notice is no delay warning
        # ("will give up in 5 days" is a warning: future tense is not matched).
        gave_up = _GAVE_UP.search(segment) and not _TEMPORARY_TEXT.search(segment) and not whole_temp
        return BounceFailure(address, Permanence.SOFT if gave_up else Permanence.DELAYED, status.group(0))
    if segment and _TEMPORARY_TEXT.search(segment):
        return BounceFailure(address, Permanence.DELAYED, "")
    if whole_code:
        return BounceFailure(address, Permanence.HARD, whole_code)
    if whole_temp:
        temp = _STATUS.search(segment) or None
        return BounceFailure(address, Permanence.DELAYED, temp.group(0) if temp else "")
    return BounceFailure(address, Permanence.HARD if default_hard else Permanence.DELAYED, "")


def _original_message_id(mime: Message) -> str | None:
    """The Message-ID of the message that bounced, from the returned message or its headers (RFC 3462).

    ``message/global`` and ``message/global-headers`` (RFC 6532 §3.7, RFC
    6533 §6) are the returned message and headers of an internationalized
    message; compat32 parses every ``message/*`` part but delivery-status
    as a nested message, so they read like ``message/rfc822``.
    """
    for part in mime.walk():
        ctype = part.get_content_type()
        value = None
        if ctype in _RETURNED_MESSAGE:
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(inner, Message):
                value = inner.get("message-id")
        elif ctype == "text/rfc822-headers":
            text = part.get_payload(decode=False)
            if isinstance(text, str):
                value = _message_id_in(text)
        if value:
            m = re.search(r"<[^<>\s]+>", str(value))
            if m:
                return m.group(0)
    return None


_RETURNED_MESSAGE = frozenset({"message/rfc822", "message/global", "message/global-headers"})
_MESSAGE_ID_LINE = re.compile(r"^message-id:\s*(<[^>\s]+>)", re.IGNORECASE | re.MULTILINE)


def _message_id_in(headers: str) -> str | None:
    m = _MESSAGE_ID_LINE.search(headers)
    return m.group(1) if m else None


def _reparse(msg: ParsedMessage) -> Message | None:
    """The bounce as a stdlib Message for flufl.bounce, with 8-bit bytes made ASCII.

    compat32 hands raw 8-bit header values out as ``Header`` objects, on
    which flufl.bounce's detectors call ``.lower()`` and crash (logging a
    traceback each time). Bounce notices name addresses in ASCII anyway,
    so every byte over 0x7F becomes ``?`` first. The exception, the
    internationalized reports of RFC 6533, are read from the bytes as they
    are (:func:`_global_report`).
    """
    if not msg.raw:
        return None
    try:
        return email.message_from_bytes(msg.raw.translate(_ASCII_ONLY))
    except (ValueError, LookupError, TypeError, AttributeError, IndexError, RecursionError,
            email.errors.MessageError):
        return None


# RFC 6533: an internationalized DSN has a message/global-delivery-status part (UTF-8 fields, recipients of
# address type "utf-8") and returns message/global or message/global-headers. Postfix writes one for a
# message sent with SMTPUTF8 (tests/data/eml/bounce/postfix_smtputf8_global_dsn.eml).
_GLOBAL_TYPE = re.compile(rb"(content-type:\s*)message/global(-delivery-status|-headers)?\b", re.IGNORECASE)
_GLOBAL_LEAF = b"application/x-crm-global"
_BLOCK_SPLIT = re.compile(r"\r?\n(?:[ \t]*\r?\n)+")
_EMBEDDED_UNICODE = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
_UTF8_ADDRESS = re.compile(r"[^\s<>;,\"()\[\]@]+@[^\s<>;,\"()\[\]@]+")


def _global_report(raw: bytes) -> tuple[list[Message], str | None]:
    """The per-recipient field groups and the returned Message-ID of an RFC 6533 report, from its bytes.

    Why by hand: the stdlib parses ``message/delivery-status`` into field
    groups but no other type; it reads ``message/global-delivery-status``
    as a nested message (its first group as headers, the recipients as
    text), and flufl.bounce (6.0) looks at ``message/delivery-status``
    only, so it finds nothing. Here the three global types are renamed to
    a leaf type before parsing, so each part's content comes out
    transfer-decoded (these parts may be base64 or quoted-printable, RFC
    6532 §3.5, unlike their ASCII originals), in UTF-8, and is split into
    groups here. Never raises: what cannot be read gives nothing.
    """
    try:
        renamed = _GLOBAL_TYPE.sub(lambda m: m.group(1) + _GLOBAL_LEAF + (m.group(2) or b""), raw)
        mime = email.message_from_bytes(renamed)
        blocks: list[Message] = []
        original: str | None = None
        for part in mime.walk():
            ctype = part.get_content_type()
            if not ctype.startswith("application/x-crm-global"):
                continue
            data = part.get_payload(decode=True)
            if not isinstance(data, bytes):
                continue
            text = data.decode("utf-8", "replace")
            if ctype.endswith("-delivery-status"):
                blocks += [email.message_from_string(g) for g in _BLOCK_SPLIT.split(text.strip()) if g.strip()]
            elif original is None:
                original = _message_id_in(text.split("\n\n", 1)[0].split("\r\n\r\n", 1)[0])
    except (ValueError, LookupError, TypeError, AttributeError, IndexError, RecursionError, UnicodeError,
            email.errors.MessageError):
        return [], None
    return blocks, original


def _report_blocks(mime: Message | None, raw: bytes) -> tuple[list[Message], str | None]:
    """Every field group of the report's delivery-status parts (RFC 3464, RFC 6533), and the global Message-ID."""
    blocks: list[Message] = []
    if mime is not None:
        for part in mime.walk():
            if part.get_content_type() == "message/delivery-status":
                payload = part.get_payload()
                if isinstance(payload, list):
                    blocks += [b for b in payload if isinstance(b, Message)]
    if _GLOBAL_TYPE.search(raw) is None:
        return blocks, None
    more, original = _global_report(raw)
    return blocks + more, original


def _dsn_failures(blocks: list[Message]) -> tuple[BounceFailure, ...]:
    """Each failed or delayed recipient of a DSN with its permanence (RFC 3464 §2.3.3, RFC 3463).

    ``Action: failed`` is a lost message whatever the status class: hard
    with 5.x.x (or no status), soft with 4.x.x (e.g. 4.4.7, the queue
    lifetime expired). ``Action: delayed``, or a 4.x.x status without
    ``failed``, is a delay.
    """
    out: list[BounceFailure] = []
    for block in blocks:
        action = str(block.get("action", "")).strip().lower()
        status_match = _STATUS.search(str(block.get("status", "")))
        status = status_match.group(0) if status_match else ""
        addr = _dsn_address(block)
        if not addr or any(f.address == addr for f in out):
            continue
        if status.startswith("5"):
            out.append(BounceFailure(addr, Permanence.HARD, status))
        elif action == "failed":
            soft = status.startswith("4")
            out.append(BounceFailure(addr, Permanence.SOFT if soft else Permanence.HARD, status or action))
        elif status.startswith("4") or action == "delayed":
            out.append(BounceFailure(addr, Permanence.DELAYED, status or action))
    return tuple(out)


def _dsn_address(block: Message) -> str:
    r"""The recipient a field group is about: Original-Recipient, else Final-Recipient, lower-cased.

    An address of type ``utf-8`` (RFC 6533 §3) may hold UTF-8 as it is
    (``utf-8; 张三@example.com``) or embedded as ``\x{5F20}``; Postfix also
    writes UTF-8 under type ``rfc822``. Both are read.
    """
    for name in ("original-recipient", "final-recipient"):
        value = str(block.get(name, ""))
        value = value.split(";", 1)[-1]
        if value.isascii() and "\\x{" not in value:
            m = _ADDRESS.search(value)
            if m:
                return m.group(0).lower()
            continue
        value = _EMBEDDED_UNICODE.sub(_embedded, value)
        m2 = _UTF8_ADDRESS.search(value)
        if m2 and "\ufffd" not in m2.group(0):
            return m2.group(0).strip(".").lower()
    return ""


def _embedded(m: re.Match[str]) -> str:
    r"""One ``\x{HEX}`` of a utf-8 address (RFC 6533 §3 EmbeddedUnicodeChar); a bad code point stays as written."""
    point = int(m.group(1), 16)
    return chr(point) if point <= 0x10FFFF and not 0xD800 <= point <= 0xDFFF else m.group(0)


def _is_success_report(blocks: list[Message]) -> bool:
    actions = {str(b.get("action", "")).strip().lower() for b in blocks}
    actions.discard("")
    return bool(actions) and actions <= {"delivered", "relayed", "expanded"}


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
        return _auto(f"subject starts with {m.group(0).strip(' 【[(（】])）')}")
    m = _AUTO_SUBJECT_TAG.search(msg.subject)
    if m:
        return _auto(f"subject is tagged {m.group(0)}")
    m = _AUTO_BODY.search(msg.text[:500])
    if m:
        return _auto(f"body says {m.group(0)}")
    return _out_of_office(msg.reply or msg.text)


def _out_of_office(text: str) -> Classification | None:
    """An out-of-office notice told by its words alone (issue #17); see ``_OOO_SELF``/``_OOO_AWAY``."""
    if _OOO_WORDS.search(text, 0, _OOO_WINDOW) is None:
        return None
    text = text[:_OOO_WINDOW]
    m = _OOO_SELF.search(text)
    if m is not None:
        return _auto(f"body says {m.group(0)!r}")
    for away in _OOO_AWAY.finditer(text):
        gap = away.group("gap")
        if gap and _OOO_NOT_NOW.search(gap):
            continue  # "我没有休假", "我上周在休假": not away now
        then = _OOO_THEN.search(text)
        if then is not None:
            return _auto(f"body says {_phrase(text, away)!r} and {_phrase(text, then)!r}")
        return None
    return None


_PHRASE_END = re.compile(r"[.,;:!?。，；：！？\n]")


def _phrase(text: str, m: re.Match[str]) -> str:
    """What a match says, for the evidence: from its start to the end of its clause (at most 60 characters)."""
    end = _PHRASE_END.search(text, m.end(), m.start() + 60)
    return text[m.start():end.start() if end is not None else min(len(text), max(m.end(), m.start() + 60))].strip()


def _auto(evidence: str) -> Classification:
    return Classification(Kind.AUTO_REPLY, evidence)


# -- unsubscribe requests ------------------------------------------------------------


def _normalise(text: str) -> str:
    """Lower-case, drop punctuation, symbols and white space (also full-width ones)."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if unicodedata.category(ch)[0] not in {"P", "S", "Z", "C"})


# Characters that each stay exactly one character of the normalised word: NFKC leaves ASCII letters and
# digits and CJK Unified Ideographs as they are (at most composing one with a following mark, still one
# character), lower-casing keeps them one character, and they are never dropped. So more of them than
# _MAX_UNSUBSCRIBE_CHARS proves a text too long to be a request without normalising it (issue #13:
# normalising every reply was half of classifying one).
_NOT_SURE_KEPT = re.compile(r"[^0-9A-Za-z\u4e00-\u9fff]+")


def _is_unsubscribe_text(text: str) -> bool:
    if len(text) > _MAX_UNSUBSCRIBE_CHARS and len(_NOT_SURE_KEPT.sub("", text)) > _MAX_UNSUBSCRIBE_CHARS:
        return False
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


def _own_unsubscribe(msg: ParsedMessage) -> Classification | None:
    """A reply to our own ``mailto:...?subject=unsubscribe`` link (``List-Unsubscribe``) is an unsubscribe request.

    Whatever the body says: a mail client fills in the subject from the link
    and may add a signature, so only the exact subject is trusted.
    """
    subject = msg.subject.strip()
    if subject.lower() in {"unsubscribe", "退订"}:
        return Classification(Kind.UNSUBSCRIBE, f"subject {subject!r} (the List-Unsubscribe mailto)")
    return None


# -- senders who are nobody to add to the sheet ---------------------------------------------


_BULK_PRECEDENCE = frozenset({"bulk", "list", "junk"})
# Local parts no person writes from (issue #17): anywhere in it ("account-noreply", "noreply-dmarc-support") ...
_ROBOT_ANYWHERE = re.compile(r"no[-_.]?reply|do[-_.]?not[-_.]?reply|dont[-_.]?reply|mailer[-_.]?daemon")
# ... or as the whole local part, optionally with a tag ("bounces+1234", "notifications-ab12").
_ROBOT_LOCAL = re.compile(r"(?:postmaster|bounces?|notifications?|notify|alerts?|daemon|robot|"
                          r"auto[-_.]?(?:reply|responder|confirm|mailer))(?:[-+_.][a-z0-9._=-]*)?")
# Known robots by address: QQ Mail's own notices come from 10000@qq.com (QQ邮箱团队).
_ROBOT_ADDRESSES = frozenset({"10000@qq.com"})
_ROBOT_NAME = re.compile(r"do[- ]?not[- ]?reply|no[- ]?reply|mail delivery (?:sub)?system|"
                         r"请勿(?:直接)?回复|系统(?:邮件|通知)", re.IGNORECASE)


def mass_mail(msg: ParsedMessage) -> str:
    """Why ``msg`` is list or bulk mail, from its headers ("" when it is not; issue #17).

    ``List-Id`` (RFC 2919) is set by list servers only. ``Precedence:
    bulk``, ``list`` and ``junk`` mark mass mail (RFC 3834 §3.1.8 reads them
    the same way). ``List-Unsubscribe`` alone is not enough — a prospect
    writing from a sales tool sends it with a person's mail — but with any
    ``Precedence`` it is a newsletter. Not an auto-reply, and still logged
    (see the module's note on ``Precedence``): only never a new customer.
    """
    h = msg.headers
    if "list-id" in h:
        return f"list mail (header List-Id: {h['list-id'].strip()[:60]})"
    precedence = h.get("precedence", "").strip().lower()
    if precedence in _BULK_PRECEDENCE:
        return f"bulk mail (header Precedence: {precedence})"
    if precedence and "list-unsubscribe" in h:
        return f"bulk mail (headers List-Unsubscribe and Precedence: {precedence[:20]})"
    return ""


def robot_sender(addr: str, name: str = "") -> str:
    """Why ``addr`` (with display name ``name``) is a robot no person answers from ("" when it is not).

    no-reply and do-not-reply addresses, MAILER-DAEMON and postmaster,
    notification, alert and bounce senders (``notifications@github.com``,
    ``bounces+1234@...``), and display names that say so ("请勿回复",
    "Do not reply"). A new customer row for one of them would be mailed our
    campaigns for nothing (issue #17).
    """
    local = addr.rpartition("@")[0].lower()
    if addr.lower() in _ROBOT_ADDRESSES:
        return f"a known robot address ({addr})"
    if _ROBOT_ANYWHERE.search(local) is not None or _ROBOT_LOCAL.fullmatch(local) is not None:
        return f"a robot address ({local}@)"
    if name and _ROBOT_NAME.search(name) is not None:
        return f"a robot sender (display name {name[:40]!r})"
    return ""
