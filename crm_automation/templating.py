"""email_templates/ -> finished messages (SPEC §6, §10).

Templates render in Jinja2's sandbox with StrictUndefined (mailmerge's
lesson: a missing column must fail, not render blank), HTML autoescaped in
``.html`` files. Sheet values are passed as data, never compiled as template
code. Messages are assembled as bytes here rather than through the stdlib's
MIME classes, whose header folding alone cost about 1 ms a message (issue #5
measures ``policy.default`` at 1.3 ms); every header value that can carry
data passes through :func:`header_safe` so no CR/LF from a sheet reaches a header.
"""

from __future__ import annotations

import base64
import functools
import re
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from email.utils import formatdate, parseaddr
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import SandboxedEnvironment

from crm_automation.errors import ConfigError, DataError

CONTEXT_NAMES = frozenset({"customer", "campaign", "sender", "unsubscribe", "now"})
ALLOWED_HEADERS = {"subject": "Subject", "reply-to": "Reply-To"}
_CRLF = re.compile(r"[\r\n\x00\u2028\u2029\x0b\x0c\x85]+")


def header_safe(value: str) -> str:
    """Collapse CR, LF and other line breaks into one space: data never starts a new header."""
    return _CRLF.sub(" ", value).strip()


@dataclass(frozen=True, slots=True)
class Rendered:
    """One rendered email before it becomes bytes."""

    subject: str
    text: str
    html: str | None
    reply_to: str | None


@dataclass(frozen=True, slots=True)
class _Template:
    name: str
    headers: dict[str, jinja2.Template]
    body: jinja2.Template
    html: jinja2.Template | None


def _format_date(value: Any, fmt: str = "%Y-%m-%d", *, tz: ZoneInfo) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(tz)
        return value.strftime(fmt)
    if isinstance(value, date):
        return value.strftime(fmt)
    return str(value)


class Templates:
    """The workspace's template folder, compiled once per run."""

    def __init__(self, folder: Path, tz: ZoneInfo) -> None:
        self.folder = folder
        self.tz = tz
        loader = jinja2.FileSystemLoader(str(folder), encoding="utf-8")
        self.text_env = SandboxedEnvironment(loader=loader, undefined=jinja2.StrictUndefined, autoescape=False,
                                             keep_trailing_newline=True)
        self.html_env = SandboxedEnvironment(loader=loader, undefined=jinja2.StrictUndefined, autoescape=True)
        for env in (self.text_env, self.html_env):
            env.filters["date"] = lambda v, fmt="%Y-%m-%d": _format_date(v, fmt, tz=tz)
            env.filters["datetime"] = lambda v, fmt="%Y-%m-%d %H:%M": _format_date(v, fmt, tz=tz)
        self._cache: dict[str, _Template] = {}

    def names(self) -> list[str]:
        """Template names (``NAME.txt`` files not starting with ``_``)."""
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.txt") if not p.name.startswith("_"))

    def _split(self, name: str, text: str) -> tuple[dict[str, str], str]:
        path = self.folder / f"{name}.txt"
        text = text.replace("\r\n", "\n").removeprefix("\ufeff")
        head, sep, body = text.partition("\n\n")
        if not sep:
            raise ConfigError(f"{path}: no blank line after the header lines "
                              f"(expected \"Subject: ...\", a blank line, then the body)")
        headers: dict[str, str] = {}
        for n, line in enumerate(head.split("\n"), start=1):
            k, colon, v = line.partition(":")
            if not colon or k.strip().lower() not in ALLOWED_HEADERS:
                raise ConfigError(f"{path} line {n}: {line!r} is not a header line "
                                  f"(expected \"Subject: ...\" or \"Reply-To: ...\")")
            headers[k.strip().lower()] = v.strip()
        if "subject" not in headers:
            raise ConfigError(f"{path}: the Subject: header line is required")
        return headers, body

    def load(self, name: str) -> _Template:
        """Compile one template (cached); a syntax error is a ConfigError naming file and line."""
        if name in self._cache:
            return self._cache[name]
        path = self.folder / f"{name}.txt"
        if not path.is_file():
            raise ConfigError(f"{path}: template not found (campaigns refer to templates by file name "
                              f"without .txt; found: {', '.join(self.names()) or 'none'})")
        try:
            headers, body = self._split(name, path.read_text(encoding="utf-8"))
            compiled = {k: self.text_env.from_string(v) for k, v in headers.items()}
            body_t = self.text_env.from_string(body)
            html_t = None
            if (self.folder / f"{name}.html").is_file():
                html_t = self.html_env.get_template(f"{name}.html")
        except jinja2.TemplateSyntaxError as e:
            raise ConfigError(f"{e.filename or path}: line {e.lineno}: template syntax error: {e.message}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text (save the template as UTF-8)") from None
        t = _Template(name, compiled, body_t, html_t)
        self._cache[name] = t
        return t

    def variables(self, name: str) -> tuple[set[str], set[str]]:
        """(top-level names, customer fields) a template uses, layouts and includes included."""
        path = self.folder / f"{name}.txt"
        headers, body = self._split(name, path.read_text(encoding="utf-8"))
        sources = [*headers.values(), body]
        html = self.folder / f"{name}.html"
        if html.is_file():
            sources.append(html.read_text(encoding="utf-8"))
        top: set[str] = set()
        fields: set[str] = set()
        seen: set[str] = set()
        while sources:
            src = sources.pop()
            try:
                ast = self.html_env.parse(src)
            except jinja2.TemplateSyntaxError as e:
                raise ConfigError(f"{path}: line {e.lineno}: template syntax error: {e.message}") from None
            top |= meta.find_undeclared_variables(ast)
            for node in ast.find_all(nodes.Getattr):
                if isinstance(node.node, nodes.Name) and node.node.name == "customer":
                    fields.add(node.attr)
            for node in ast.find_all(nodes.Getitem):
                if (isinstance(node.node, nodes.Name) and node.node.name == "customer"
                        and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str)):
                    fields.add(node.arg.value)
            for ref in meta.find_referenced_templates(ast):
                if ref and ref not in seen and (self.folder / ref).is_file():
                    seen.add(ref)
                    sources.append((self.folder / ref).read_text(encoding="utf-8"))
        return top, fields

    def check(self, name: str, fields: set[str]) -> list[str]:
        """Problems with one template: syntax, unknown top-level names, unknown customer fields."""
        path = self.folder / f"{name}.txt"
        try:
            self.load(name)
            top, used = self.variables(name)
        except ConfigError as e:
            return list(e.problems)
        problems = []
        for v in sorted(top - CONTEXT_NAMES):
            problems.append(f"{path}: uses {{{{ {v} }}}}, which templates do not have "
                            f"(expected one of: {', '.join(sorted(CONTEXT_NAMES))})")
        for f in sorted(used - fields):
            problems.append(f"{path}: uses customer.{f}, which is not a field in mappings/customers.toml "
                            f"(fields: {', '.join(sorted(fields))})")
        return problems

    def render(self, name: str, context: dict[str, Any]) -> Rendered:
        """Render one email; an undefined variable or a sandbox violation is a DataError for this send."""
        t = self.load(name)
        try:
            subject = header_safe(t.headers["subject"].render(context))
            reply_to = header_safe(t.headers["reply-to"].render(context)) if "reply-to" in t.headers else None
            text = t.body.render(context)
            html = t.html.render(context) if t.html is not None else None
        except jinja2.UndefinedError as e:
            raise DataError(f"template {name}: {e.message} (customer {context.get('customer', {}).get('_key')!r})",
                            hint="add the column to the mapping or fix the template; `crm-automation check` "
                                 "finds these before sending") from None
        except jinja2.exceptions.SecurityError as e:
            raise DataError(f"template {name}: blocked by the sandbox: {e}") from None
        except jinja2.TemplateError as e:
            raise DataError(f"template {name}: {e}") from None
        return Rendered(subject=subject, text=text, html=html, reply_to=reply_to)


_SPECIALS = re.compile(r'[][\\()<>@,:;".]')


def encode_words(text: str) -> str:
    """RFC 2047 ``B`` encoded-words for non-ASCII text, split on character boundaries.

    Hand-written because ``email.header.Header`` costs about a millisecond a
    header, which was a third of the per-message cost of a campaign (issue #5).
    """
    if text.isascii():
        return text
    words: list[bytes] = []
    buf = b""
    for ch in text:
        b = ch.encode("utf-8")
        if len(buf) + len(b) > 45:  # 45 bytes -> 60 base64 chars: each word fits a 76-char line
            words.append(buf)
            buf = b
        else:
            buf += b
    if buf:
        words.append(buf)
    return " ".join(f"=?utf-8?b?{base64.b64encode(w).decode('ascii')}?=" for w in words)


def _fold(name: str, value: str) -> str:
    """``Name: value`` folded at spaces so no line passes 78 characters (RFC 5322 §2.2.3)."""
    line = f"{name}: "
    out: list[str] = []
    for word in value.split(" "):
        if len(line) + len(word) > 78 and line.strip() and not line.endswith(": "):
            out.append(line.rstrip(" "))
            line = " "
        line += word + " "
    out.append(line.rstrip(" "))
    return "\r\n".join(out)


@functools.lru_cache(maxsize=4096)
def _address(name: str | None, email: str) -> str:
    """``Name <email>`` with the name encoded or quoted as needed and no line breaks."""
    email = header_safe(email)
    name = header_safe(name or "")
    if not name:
        return email
    if not name.isascii():
        return f"{encode_words(name)} <{email}>"
    if _SPECIALS.search(name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{email}>"


@functools.lru_cache(maxsize=64)
def _sender(sender: str) -> str:
    return _address(*parseaddr(sender))


def _body(text: str, subtype: str) -> str:
    data = base64.encodebytes(text.encode("utf-8")).decode("ascii").replace("\n", "\r\n")
    return (f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
            f"{data}")


def build_message(r: Rendered, *, sender: str, to_name: str | None, to_email: str, message_id: str,
                  now: datetime, reply_to: str | None = None, list_unsubscribe: str | None = None,
                  one_click: bool = False, extra_headers: dict[str, str] | None = None) -> bytes:
    """Assemble the MIME message as bytes: text, plus an HTML alternative when there is one.

    Every header value passes through :func:`header_safe` (no CR/LF from data)
    and non-ASCII text becomes RFC 2047 encoded-words; bodies are UTF-8 in base64.
    """
    headers = [("From", _sender(sender)), ("To", _address(to_name, to_email)),
               ("Subject", encode_words(header_safe(r.subject))), ("Date", formatdate(now.timestamp())),
               ("Message-ID", header_safe(message_id))]
    rt = r.reply_to or reply_to
    if rt:
        rname, raddr = parseaddr(header_safe(rt))
        headers.append(("Reply-To", _address(rname, raddr)))
    if list_unsubscribe:
        headers.append(("List-Unsubscribe", header_safe(list_unsubscribe)))
        if one_click:
            headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    for k, v in (extra_headers or {}).items():
        headers.append((header_safe(k), encode_words(header_safe(v))))
    headers.append(("MIME-Version", "1.0"))
    head = "\r\n".join(_fold(k, v) for k, v in headers)
    if r.html is None:
        return f"{head}\r\n{_body(r.text, 'plain')}".encode("ascii")
    boundary = f"=_crm_{uuid.uuid4().hex}"
    return (f'{head}\r\nContent-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'
            f"--{boundary}\r\n{_body(r.text, 'plain')}--{boundary}\r\n{_body(r.html, 'html')}"
            f"--{boundary}--\r\n").encode("ascii")
