"""email_templates/ -> finished messages (SPEC §6, §10, §11).

Templates render in Jinja2's sandbox with StrictUndefined (mailmerge's
lesson: a missing column must fail, not render blank), HTML autoescaped in
``.html`` files. Sheet values are passed as data, never compiled as template
code. Messages are assembled as bytes here rather than through the stdlib's
MIME classes, whose header folding alone cost about 1 ms a message (issue #5
measures ``policy.default`` at 1.3 ms); every header value that can carry
data passes through :func:`header_safe` so no CR/LF from a sheet reaches a header.

Issue #9 hardened three things. Whatever goes wrong while rendering one
customer's message is a :class:`DataError` for that send naming the template
file, the line and the customer; the line comes from Jinja2's rewritten
traceback (see :func:`_template_location`). Rendering is bounded by
:class:`RenderLimits` (size per part, amplifying operators, wall-clock time).
And no header line passes RFC 5322's 998 characters: long display names and
subjects are cut (:data:`MAX_NAME_CHARS`, :data:`MAX_SUBJECT_CHARS`) and long
words become encoded-words that fold.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import re
import signal
import string
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import date, datetime
from email.utils import formatdate, parseaddr
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TypeAlias
from zoneinfo import ZoneInfo

import jinja2
from jinja2 import meta, nodes
from jinja2.filters import do_center, do_format, do_indent
from jinja2.loaders import split_template_path
from jinja2.sandbox import SandboxedEnvironment

from crm_automation.addresses import wire_address
from crm_automation.errors import ConfigError, DataError

if TYPE_CHECKING:
    # What ``signal.getsignal`` returns and ``signal.signal`` takes (typeshed's private ``signal._HANDLER``).
    _SignalHandler: TypeAlias = Callable[[int, FrameType | None], object] | int | signal.Handlers | None

log = logging.getLogger("crm_automation")

Context = Mapping[str, object]
"""The names a template sees (``customer``, ``campaign``, ``sender``, ``unsubscribe``, ``now``; SPEC §6)."""

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
class RenderLimits:
    """Bounds on rendering one customer's message (issue #9); passing one is a DataError for that send.

    A template is written by the workspace's owner, not by customers, but one runaway loop or one
    huge value must fail a send, not hang the worker or exhaust its memory. The defaults:

    - ``body_chars`` 1 MiB (1,048,576 characters) per text or HTML body, counted while Jinja2
      generates it, so rendering stops at the limit. Campaign bodies are a few KB; a Chinese body
      at the limit is 3 MiB of UTF-8 (4 MiB in base64), so text and HTML together stay under the
      10 MB message size many providers accept.
    - ``header_chars`` 16 KiB for the rendered Subject or Reply-To: far above a real subject
      (:func:`build_message` cuts subjects at :data:`MAX_SUBJECT_CHARS`), low enough that a loop
      in a header line stops at once.
    - ``seconds`` 2 s of wall-clock time per render, all parts together. Our templates render in
      about 30 µs, so only a runaway loop reaches it. It is enforced with ``ITIMER_REAL`` and only
      when rendering on the main thread (Python delivers signals there and cannot interrupt another
      thread); elsewhere only the size limits apply. An outer ``ITIMER_REAL`` (pytest-timeout's,
      say) is restored afterwards, or left alone if it is due before ours.
    - ``sequence_items`` 1 MiB: the longest string or list ``*`` and ``+`` may build, and the
      largest padding or format width (``center``, ``ljust``, ``rjust``, ``zfill``, ``expandtabs``,
      the ``center``, ``indent`` and ``format`` filters, ``%`` and ``str.format``). These run as
      one call into C that no signal interrupts, so they are refused before they run.
    - ``int_bits`` 16,384 bits (about 4,900 digits; Python refuses to print more than 4,300
      anyway): the largest integer ``**`` or ``*`` may build. ``10 ** (10 ** 8)`` would otherwise
      spend minutes in C.

    What stays unbounded: a value grown step by step (``~`` on a ``namespace`` attribute in a loop,
    a list that extends itself, ``replace`` or ``join`` with long strings) can still outgrow memory
    before the time limit; only a separate process with an address-space limit would close that.
    """

    header_chars: int = 16_384
    body_chars: int = 1_048_576
    seconds: float = 2.0
    sequence_items: int = 1_048_576
    int_bits: int = 16_384


class _LimitExceeded(Exception):  # noqa: N818 - internal, becomes a DataError in Templates.render
    """A :class:`RenderLimits` bound was reached; ``file`` names the part when no template line does."""

    def __init__(self, message: str, *, file: str | None = None) -> None:
        super().__init__(message)
        self.file = file


class _RenderTimeout(_LimitExceeded):
    """Raised by the ``SIGALRM`` handler of :class:`_Deadline` inside the render it interrupts."""


class _RenderAbort(BaseException):
    """Raised on a later alarm: the first :class:`_RenderTimeout` was swallowed by an ``except Exception``."""


_SEQUENCES = (str, list, tuple)
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")
_CAN_ALARM = hasattr(signal, "setitimer")


class _Sandbox(SandboxedEnvironment):
    """Jinja2's sandbox with the operations that build big values in one C call bounded.

    Jinja2 routes the operators named in ``intercepted_binops`` through :meth:`call_binop`
    and every call from template code through :meth:`call` (jinja2/sandbox.py), which is where
    the sandbox's own ``MAX_RANGE`` lives too. Each check is a few ``isinstance`` calls.
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, limits: RenderLimits, **options: object) -> None:
        super().__init__(**options)
        self.limits = limits
        self.filters["center"] = self._center
        self.filters["indent"] = self._indent
        self.filters["format"] = self._format

    def _items(self, op: str, n: int) -> None:
        if n > self.limits.sequence_items:
            raise _LimitExceeded(f"{op!r} would make a sequence of {n:,} items "
                                 f"(limit {self.limits.sequence_items:,})")

    def _bits(self, op: str, n: int) -> None:
        if n > self.limits.int_bits:
            raise _LimitExceeded(f"{op!r} would make an integer of about {n:,} bits (limit {self.limits.int_bits:,})")

    def _width(self, width: object) -> None:
        if isinstance(width, int) and width > self.limits.sequence_items:
            raise _LimitExceeded(f"refused a width of {width:,} characters (limit {self.limits.sequence_items:,})")

    def _printf(self, fmt: str, args: object) -> None:
        """Widths and precisions in a ``%`` format, ``*`` ones taken from the arguments."""
        for m in _PRINTF_SPEC.finditer(fmt):
            for spec in m.groups():
                if spec == "*":
                    for a in args if isinstance(args, tuple) else (args,):
                        self._width(a)
                elif spec:
                    self._width(int(spec))

    def _format_spec(self, fmt: str, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        """Widths in a ``str.format`` string; a nested ``{}`` width comes from the arguments."""
        for _, _, spec, _ in string.Formatter().parse(fmt):
            if not spec:
                continue
            if "{" in spec:
                for a in (*args, *kwargs.values()):
                    self._width(a)
            for d in _DIGITS.findall(spec):
                self._width(int(d))

    def _center(self, value: str, width: int = 80) -> str:
        self._width(width)
        return do_center(value, width)

    def _indent(self, s: str, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
        self._width(width)
        return do_indent(s, width, first, blank)

    def _format(self, value: str, *args: object, **kwargs: object) -> str:
        self._printf(str(value), tuple(kwargs.values()) or args)
        return do_format(value, *args, **kwargs)

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: object, right: object) -> object:
        """Refuse ``*``, ``+``, ``**`` and ``%`` results past :class:`RenderLimits` before computing them."""
        if operator == "*":
            if isinstance(left, _SEQUENCES) and isinstance(right, int):
                self._items(operator, len(left) * right)
            elif isinstance(right, _SEQUENCES) and isinstance(left, int):
                self._items(operator, len(right) * left)
            elif isinstance(left, int) and isinstance(right, int):
                self._bits(operator, left.bit_length() + right.bit_length())
        elif operator == "+":
            if isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
                self._items(operator, len(left) + len(right))
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 1 and abs(left) > 1:
                self._bits(operator, left.bit_length() * right)
        elif operator == "%" and isinstance(left, str):
            self._printf(left, right)
        return self.binop_table[operator](left, right)

    def call(self, context: jinja2.runtime.Context, obj: object, /, *args: object, **kwargs: object) -> object:
        """Refuse padding widths and ``str.format`` widths past the limit, then call as the sandbox does."""
        name = getattr(obj, "__name__", None)
        if name in _WIDTH_METHODS and isinstance(getattr(obj, "__self__", None), str):
            self._width(args[0] if args else kwargs.get("width", kwargs.get("tabsize")))
        elif name in ("format", "format_map"):
            # the sandbox hands templates a wrapper of str.format (SandboxedEnvironment.wrap_str_format)
            target = getattr(getattr(obj, "__wrapped__", None), "__self__", None)
            if isinstance(target, str):
                self._format_spec(target, args, kwargs)
        return super().call(context, obj, *args, **kwargs)


class _Deadline:
    """Wall-clock limit for one render: ``ITIMER_REAL`` whose ``SIGALRM`` handler raises inside it.

    Only on the main thread, where Python runs signal handlers; elsewhere (and where there is no
    ``setitimer``) this does nothing and only the size limits apply. The first alarm raises an
    ``Exception``, so Jinja2 rewrites the traceback and the error names the template line; the
    timer then repeats every 50 ms and raises :class:`_RenderAbort`, a ``BaseException``, in case
    an ``except Exception`` (in a filter, say) swallowed the first. The handler raises only while
    armed, so an alarm arriving as the render ends is ignored rather than raised in the caller.
    The previous handler and any outer timer are put back; an outer timer due before ours is left
    as it is (it fires first, and its owner decides).
    """

    __slots__ = ("_armed", "_fired", "_outer", "_previous", "_seconds", "_started")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._armed = False
        self._fired = False
        self._previous: _SignalHandler = None
        self._outer = (0.0, 0.0)
        self._started = 0.0

    def __enter__(self) -> None:
        if self._seconds <= 0 or not _CAN_ALARM or threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGALRM)
        outer = signal.getitimer(signal.ITIMER_REAL)
        if previous is None or 0 < outer[0] <= self._seconds:
            return  # a handler installed outside Python cannot be put back; an earlier outer timer stays
        self._previous, self._outer, self._started = previous, outer, time.monotonic()
        signal.signal(signal.SIGALRM, self._on_alarm)
        self._armed = True
        signal.setitimer(signal.ITIMER_REAL, self._seconds, 0.05)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if not self._armed:
            return
        message = f"rendering took longer than the limit of {self._seconds:g} s"
        if self._fired:
            raise _RenderAbort(message)
        self._fired = True
        raise _RenderTimeout(message)

    def __exit__(self, *exc: object) -> None:
        if self._previous is None:
            return
        self._armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._previous)
        delay, interval = self._outer
        if delay > 0:
            signal.setitimer(signal.ITIMER_REAL, max(delay - (time.monotonic() - self._started), 1e-6), interval)
        self._previous = None


@dataclass(frozen=True, slots=True)
class _Template:
    name: str
    path: str
    headers: dict[str, jinja2.Template]
    body: jinja2.Template
    html: jinja2.Template | None
    files: tuple[tuple[str, str | None], ...] = ()  # (NAME.txt, NAME.html) and their content digests (None: absent)


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _file_digest(path: Path) -> str | None:
    """The digest of a file's bytes; None when it is not there (or cannot be read: it changed, either way)."""
    try:
        return _digest(path.read_bytes())
    except OSError:
        return None


def _current() -> bool:
    return True


class _PassLoader(jinja2.BaseLoader):
    """Layouts and includes exactly as the last check read them; nothing is read or stat'ed while rendering.

    Why (issue #17): a running worker must render what ``check`` reads. Jinja2's
    ``FileSystemLoader`` decides whether a compiled layout is current by comparing
    its mtime at each render: an edit saved within the same timestamp tick (or
    copied with its mtime kept) is never seen, and every include costs a
    ``stat`` per message. Here each file's text is kept with the digest of its
    bytes; :meth:`Templates.check` (each send pass) hands over what it read, and
    :meth:`Templates.revalidate` drops what changed on disk, then the compiled
    cache of both environments is cleared. A name not read yet is read from the
    folder on first use (``split_template_path`` refuses ``..`` as Jinja2 does).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.texts: dict[str, tuple[str, str, str]] = {}  # name -> (text, file name, digest of its bytes)

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        """The text kept for ``template`` (read now if it was never read), and "always up to date"."""
        got = self.texts.get(template)
        if got is None:
            path = self.folder.joinpath(*split_template_path(template))
            try:
                data = path.read_bytes() if path.is_file() else None
            except OSError:
                data = None
            if data is None:
                raise jinja2.TemplateNotFound(template)
            got = self.texts[template] = (data.decode("utf-8"), str(path), _digest(data))
        return got[0], got[1], _current


@dataclass(frozen=True, slots=True)
class _Scan:
    """What :meth:`Templates._scan` found, and the texts it read (so a check compiles exactly those)."""

    top: dict[str, str]
    fields: dict[str, str]
    problems: list[str]
    text: tuple[str, str]  # NAME.txt: (text, digest)
    html: tuple[str, str] | None  # NAME.html, when there is one
    refs: dict[str, tuple[Path, str, str]]  # layout/include name -> (path, text, digest)


def _format_date(value: object, fmt: str = "%Y-%m-%d", *, tz: ZoneInfo) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        text = value
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return text
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(tz)
        return value.strftime(fmt)
    if isinstance(value, date):
        return value.strftime(fmt)
    return str(value)


def _at_line(source: str, line: int) -> str:
    """``source`` preceded by a comment spanning ``line - 1`` lines, so Jinja2 counts its lines from ``line``.

    A header value or the body of ``NAME.txt`` starts below the file's first line; with this its
    syntax errors and tracebacks give the file's own line numbers, and the output is unchanged.
    """
    return "{#" + "\n" * (line - 1) + "#}" + source if line > 1 else source


def _syntax_problem(e: jinja2.TemplateSyntaxError, path: Path) -> str:
    return f"{e.filename or path} line {e.lineno}: template syntax error: {e.message}"


def _template_location(exc: BaseException) -> str | None:
    """``FILE line N`` of the innermost template frame in ``exc``'s traceback, if any.

    Jinja2 rewrites the traceback of an ``Exception`` raised while rendering
    (jinja2/debug.py ``rewrite_traceback_stack``): each frame of template code becomes a fake
    frame compiled with the template's filename at the template's line, whose globals hold
    ``__jinja_exception__``. The innermost one is in the included or extended file when the
    error is there; frames of filters and Python code below it are skipped. A ``BaseException``
    (:class:`_RenderAbort`) is not rewritten: its frames run the compiled module, whose globals
    hold ``__jinja_template__``, and map lines as Jinja2 does.
    """
    found = None
    tb = exc.__traceback__
    while tb is not None:
        g = tb.tb_frame.f_globals
        if "__jinja_exception__" in g:
            found = f"{tb.tb_frame.f_code.co_filename} line {tb.tb_lineno}"
        elif isinstance(template := g.get("__jinja_template__"), jinja2.Template):
            found = f"{template.filename} line {template.get_corresponding_lineno(tb.tb_lineno)}"
        tb = tb.tb_next
    return found


def _generate(template: jinja2.Template, context: Context, limit: int, part: str) -> str:
    """Render through ``generate()``, stopping as soon as the output passes ``limit`` characters."""
    out: list[str] = []
    size = 0
    for chunk in template.generate(context):
        size += len(chunk)
        if size > limit:
            raise _LimitExceeded(f"the {part} is longer than the limit of {limit:,} characters",
                                 file=template.filename)
        out.append(chunk)
    return "".join(out)


def _references(ast: nodes.Template) -> Iterator[tuple[str, int, bool]]:
    """(name, line, may be missing) of each template an extends, include or import names by a constant."""
    for node in ast.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        if not isinstance(node, nodes.Extends | nodes.Include | nodes.Import | nodes.FromImport):
            continue  # find_all yields only these; the check tells the type checker
        target = node.template
        if isinstance(target, nodes.Const) and isinstance(target.value, str):
            yield target.value, node.lineno, isinstance(node, nodes.Include) and node.ignore_missing
        elif isinstance(target, nodes.Tuple | nodes.List):  # include ['a', 'b']: the first that exists
            for item in target.items:
                if isinstance(item, nodes.Const) and isinstance(item.value, str):
                    yield item.value, node.lineno, True


_LIMIT_HINT = ("the limits (RenderLimits in crm_automation/templating.py) stop runaway loops and huge values; "
               "check the template's loops and this customer's values")
_FIX_HINT = ("fix the template or this customer's values; `crm-automation preview TEMPLATE --customer KEY` "
             "renders it for one customer")


# ---------------------------------------------------------------- the NAME.txt file format (SPEC §6)
# Reading, splitting and compiling one file is the file format's job, apart from the folder's
# cache (Templates): check, load and the scan all read a template the same way, and a problem
# names the file and its line whichever of them met it.


def _read_file(path: Path) -> tuple[str, str]:
    """A template file's (text, digest of its bytes); an unreadable or non-UTF-8 file is a ConfigError."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8"), _digest(data)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path} line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}; "
                          f"expected UTF-8: save the template as UTF-8)") from None


def _split_txt(path: Path, text: str) -> tuple[dict[str, tuple[int, str]], int, str]:
    """(header -> (line, value), the body's first line, the body) of a ``NAME.txt``."""
    text = text.replace("\r\n", "\n").removeprefix("\ufeff")
    head, sep, body = text.partition("\n\n")
    if not sep:
        raise ConfigError(f"{path}: no blank line after the header lines "
                          f"(expected \"Subject: ...\", a blank line, then the body)")
    headers: dict[str, tuple[int, str]] = {}
    for n, line in enumerate(head.split("\n"), start=1):
        k, colon, v = line.partition(":")
        if not colon or k.strip().lower() not in ALLOWED_HEADERS:
            raise ConfigError(f"{path} line {n}: {line!r} is not a header line "
                              f"(expected \"Subject: ...\" or \"Reply-To: ...\")")
        headers[k.strip().lower()] = (n, v.strip())
    if "subject" not in headers:
        raise ConfigError(f"{path}: the Subject: header line is required")
    subject_line, subject = headers["subject"]
    if not subject:
        # Sent as is, an empty subject lands in spam folders and reads as a mistake (issue #17).
        raise ConfigError(f"{path} line {subject_line}: the Subject: header is empty (expected the email's subject "
                          f"after \"Subject:\", e.g. \"Subject: 您好 {{{{ customer.name }}}}\")")
    return headers, head.count("\n") + 3, body


def _compile(env: _Sandbox, source: str, path: Path, line: int = 1) -> jinja2.Template:
    """Compile ``source`` as file ``path`` from ``line`` on: errors and tracebacks name that file and line."""
    code = env.compile(_at_line(source, line), name=path.name, filename=str(path))
    return env.template_class.from_code(env, code, env.make_globals(None))


def _usage(ast: nodes.Template, file: Path, env: _Sandbox, top: dict[str, str], fields: dict[str, str]) -> list[str]:
    """Note the names and customer fields ``ast`` uses (where first) in ``top`` and ``fields``; return its problems.

    The problems are unknown filters and tests.

    Why from the syntax tree: ``check`` must name every variable a template
    uses before anything is sent (SPEC §7), including those behind a
    condition no test customer reaches; and Jinja2 finds an unknown filter or
    test inside a condition only when rendering reaches it.
    """
    undeclared = meta.find_undeclared_variables(ast)
    for n in ast.find_all(nodes.Name):
        if n.ctx == "load" and n.name in undeclared:
            top.setdefault(n.name, f"{file} line {n.lineno}")
    for attr in ast.find_all(nodes.Getattr):
        if isinstance(attr.node, nodes.Name) and attr.node.name == "customer":
            fields.setdefault(attr.attr, f"{file} line {attr.lineno}")
    for item in ast.find_all(nodes.Getitem):
        if (isinstance(item.node, nodes.Name) and item.node.name == "customer"
                and isinstance(item.arg, nodes.Const) and isinstance(item.arg.value, str)):
            fields.setdefault(item.arg.value, f"{file} line {item.lineno}")
    problems = [f"{file} line {f.lineno}: uses the filter {f.name!r}, which does not exist "
                f"(expected one of Jinja2's filters, or date or datetime)"
                for f in ast.find_all(nodes.Filter) if f.name not in env.filters]
    problems += [f"{file} line {test.lineno}: uses the test {test.name!r}, which does not exist "
                 f"(expected one of Jinja2's tests)"
                 for test in ast.find_all(nodes.Test) if test.name not in env.tests]
    return problems


def _render_error(t: _Template, e: BaseException, context: Context, folder: Path) -> DataError:
    """``template NAME: FILE line N: what went wrong (customer 'key')``, with a hint for the next step."""
    customer = context.get("customer")
    key = customer.get("_key") if isinstance(customer, dict) else None
    where = _template_location(e) or (e.file if isinstance(e, _LimitExceeded) and e.file else None) or t.path
    hint: str | None = _FIX_HINT
    if isinstance(e, _LimitExceeded | _RenderAbort):
        what, hint = str(e), _LIMIT_HINT
    elif isinstance(e, jinja2.UndefinedError):
        what = e.message or str(e)
        hint = ("add the column to the mapping or fix the template; `crm-automation check` finds these "
                "before sending")
    elif isinstance(e, jinja2.exceptions.SecurityError):
        what = f"blocked by the sandbox: {e}"
    elif isinstance(e, jinja2.TemplateNotFound):
        what = f"refers to {e.name!r}, which is not a file in {folder}"
    elif isinstance(e, jinja2.TemplateSyntaxError):
        what = f"template syntax error: {e.message}"
    elif isinstance(e, jinja2.TemplateError):
        what = str(e)
    else:
        what = f"{type(e).__name__}: {e}"
    if len(what) > 300:
        what = what[:300] + "…"
    return DataError(f"template {t.name}: {where}: {what} (customer {key!r})", hint=hint)


class Templates:
    """The workspace's template folder, compiled once and compiled again when a file's content changes.

    A running worker renders exactly what ``check`` reads (issue #17): each send
    pass calls :meth:`check` for every campaign template, which reads
    ``NAME.txt``, ``NAME.html`` and every layout and include, and compiles what
    it read when its content differs from what was compiled; :meth:`revalidate`
    (also once a pass) drops any other compiled template whose files changed.
    Content digests rather than mtimes: an edit within the same timestamp tick
    counts. Rendering itself (:meth:`render`, the send loop) reads no file.

    The class holds only the folder's compiled templates and whether they are
    still current (issue #18: one job per room). The file format
    (:func:`_read_file`, :func:`_split_txt`), what a template uses
    (:func:`_usage`) and the message for a failed render (:func:`_render_error`)
    are functions of their inputs, kept outside it.
    """

    def __init__(self, folder: Path, tz: ZoneInfo, *, limits: RenderLimits | None = None) -> None:
        self.folder = folder
        self.tz = tz
        self.limits = limits or RenderLimits()
        loader = self._loader = _PassLoader(folder)
        self.text_env = _Sandbox(self.limits, loader=loader, undefined=jinja2.StrictUndefined, autoescape=False,
                                 keep_trailing_newline=True)
        self.html_env = _Sandbox(self.limits, loader=loader, undefined=jinja2.StrictUndefined, autoescape=True)
        for env in (self.text_env, self.html_env):
            env.filters["date"] = lambda v, fmt="%Y-%m-%d": _format_date(v, fmt, tz=tz)
            env.filters["datetime"] = lambda v, fmt="%Y-%m-%d %H:%M": _format_date(v, fmt, tz=tz)
        self._cache: dict[str, _Template] = {}

    def names(self) -> list[str]:
        """Template names (``NAME.txt`` files not starting with ``_``)."""
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.txt") if not p.name.startswith("_"))

    def _not_found(self, path: Path) -> ConfigError:
        return ConfigError(f"{path}: template not found (campaigns refer to templates by file name "
                           f"without .txt; found: {', '.join(self.names()) or 'none'})")

    def load(self, name: str) -> _Template:
        """The compiled template (cached); a missing file or a syntax error is a ConfigError naming file and line.

        Reads nothing when it is compiled already: the send loop calls this for
        every message. What changed on disk is found once a pass by
        :meth:`check` and :meth:`revalidate`.
        """
        t = self._cache.get(name)
        if t is not None:
            return t
        path = self.folder / f"{name}.txt"
        if not path.is_file():
            raise self._not_found(path)
        html = self.folder / f"{name}.html"
        t = self._compile_files(name, _read_file(path), _read_file(html) if html.is_file() else None)
        self._cache[name] = t
        return t

    def _compile_files(self, name: str, text: tuple[str, str], html_text: tuple[str, str] | None) -> _Template:
        """Compile ``NAME.txt`` (and ``NAME.html``) from the texts given; a syntax error is a ConfigError."""
        path = self.folder / f"{name}.txt"
        html = self.folder / f"{name}.html"
        headers, body_line, body = _split_txt(path, text[0])
        try:
            compiled = {k: _compile(self.text_env, v, path, n) for k, (n, v) in headers.items()}
            body_t = _compile(self.text_env, body, path, body_line)
            html_t = _compile(self.html_env, html_text[0], html) if html_text is not None else None
        except jinja2.TemplateSyntaxError as e:
            raise ConfigError(_syntax_problem(e, path)) from None
        files = ((str(path), text[1]), (str(html), html_text[1] if html_text is not None else None))
        return _Template(name, str(path), compiled, body_t, html_t, files)

    def revalidate(self) -> None:
        """Forget every compiled template, layout and include whose file changed on disk (once a send pass).

        Why (issue #17): a template compiled once used to be rendered until the
        worker stopped, whatever the admin saved since. Compares digests of the
        files' bytes, so an edit within the same mtime tick counts too; a
        template forgotten here is compiled from disk when next used (or by the
        pass's :meth:`check`).
        """
        loader = self._loader
        stale = [ref for ref, (_, filename, digest) in loader.texts.items() if _file_digest(Path(filename)) != digest]
        for ref in stale:
            del loader.texts[ref]
        if stale:
            self._forget_compiled()
        for name, t in list(self._cache.items()):
            if any(_file_digest(Path(p)) != d for p, d in t.files):
                del self._cache[name]

    def _forget_compiled(self) -> None:
        """Drop Jinja2's compiled layouts and includes (they are compiled again from the loader's texts)."""
        for env in (self.text_env, self.html_env):
            if env.cache is not None:
                env.cache.clear()

    def _adopt(self, name: str, scan: _Scan) -> None:
        """Make what :meth:`check` read the texts rendered from now on: layouts and includes, then the template.

        A template with problems is dropped from the cache (its campaign is held
        until the fix, which the next pass's check compiles).
        """
        loader = self._loader
        changed = False
        for ref, (path, text, digest) in scan.refs.items():
            known = loader.texts.get(ref)
            if known is None or known[2] != digest:
                loader.texts[ref] = (text, str(path), digest)
                changed = changed or known is not None
        if changed:
            self._forget_compiled()
        if scan.problems:
            self._cache.pop(name, None)
            return
        t = self._cache.get(name)
        html_digest = scan.html[1] if scan.html is not None else None
        if t is not None and tuple(d for _, d in t.files) == (scan.text[1], html_digest):
            return
        try:
            self._cache[name] = self._compile_files(name, scan.text, scan.html)
        except ConfigError:
            self._cache.pop(name, None)

    def _scan(self, name: str) -> _Scan:
        """Walk ``NAME.txt``, ``NAME.html`` and every layout or include they name.

        Returns the top-level names and the customer fields used, each with where it is first
        used (``FILE line N``), and the problems met on the way: syntax errors, unknown filters
        and tests (Jinja2 finds those inside a condition only when rendering reaches them),
        missing, unreadable or non-UTF-8 referenced files. A problem in ``NAME.txt`` or
        ``NAME.html`` themselves raises ConfigError. Every text read is returned with its
        digest, so :meth:`check` compiles exactly what it checked.
        """
        path = self.folder / f"{name}.txt"
        text = _read_file(path)
        headers, body_line, body = _split_txt(path, text[0])
        queue: list[tuple[Path, str, _Sandbox]] = [(path, _at_line(v, n), self.text_env) for n, v in headers.values()]
        queue.append((path, _at_line(body, body_line), self.text_env))
        html = self.folder / f"{name}.html"
        html_text = _read_file(html) if html.is_file() else None
        if html_text is not None:
            queue.append((html, html_text[0], self.html_env))
        refs: dict[str, tuple[Path, str, str]] = {}
        top: dict[str, str] = {}
        fields: dict[str, str] = {}
        problems: list[str] = []
        seen: set[str] = set()
        while queue:
            file, source, env = queue.pop(0)
            try:
                ast = env.parse(source, filename=str(file))
                env.compile(ast, filename=str(file))
            except jinja2.TemplateSyntaxError as e:
                problems.append(_syntax_problem(e, file))
                continue
            problems += _usage(ast, file, env, top, fields)
            for ref, line, optional in _references(ast):
                if ref in seen:
                    continue
                seen.add(ref)
                ref_path = self.folder / ref
                if not ref_path.is_file():
                    if not optional:
                        problems.append(f"{file} line {line}: refers to {ref!r}, which is not a file in {self.folder}")
                    continue
                try:
                    ref_text, ref_digest = _read_file(ref_path)
                except ConfigError as e:
                    problems += e.problems
                    continue
                queue.append((ref_path, ref_text, env))
                with suppress(jinja2.TemplateNotFound):  # a name the loader refuses ("..") is never served
                    split_template_path(ref)
                    refs[ref] = (ref_path, ref_text, ref_digest)
        return _Scan(top, fields, problems, text, html_text, refs)

    def variables(self, name: str) -> tuple[set[str], set[str]]:
        """(top-level names, customer fields) a template uses, layouts and includes included."""
        scan = self._scan(name)
        if scan.problems:
            raise ConfigError.collect(scan.problems)
        return set(scan.top), set(scan.fields)

    def check(self, name: str, fields: set[str], names: frozenset[str] = CONTEXT_NAMES) -> list[str]:
        """Every problem that would fail a send of this template, as lines naming file and line; never raises.

        The worker calls this at the start of each send pass and refuses a campaign when it
        returns anything: a missing, unreadable or non-UTF-8 file, a syntax error in the template
        or in a layout or include it names, an unknown filter, test or top-level name, or a
        customer field that ``fields`` (the mapping's) does not have.

        What it read is what is rendered from then on (issue #17): a template
        whose files changed is compiled again from the texts checked here, and
        one with problems is dropped, so its fix is used from the next pass.
        """
        path = self.folder / f"{name}.txt"
        if not path.is_file():
            self._cache.pop(name, None)
            return list(self._not_found(path).problems)
        try:
            scan = self._scan(name)
        except ConfigError as e:
            self._cache.pop(name, None)
            return list(e.problems)
        self._adopt(name, scan)
        top, used, problems = scan.top, scan.fields, list(scan.problems)
        known = names | self.text_env.globals.keys()  # ``names``: a campaign's (SPEC §6), or the digest's (#21)
        for v, where in sorted(top.items()):
            if v not in known:
                problems.append(f"{where}: uses {{{{ {v} }}}}, which templates do not have "
                                f"(expected one of: {', '.join(sorted(names))})")
        for f, where in sorted(used.items()):
            if f not in fields:
                problems.append(f"{where}: uses customer.{f}, which is not a field in mappings/customers.toml "
                                f"(fields: {', '.join(sorted(fields))})")
        return problems

    def render(self, name: str, context: Context) -> Rendered:
        """Render one email; whatever goes wrong is a DataError for this send naming file, line and customer.

        Rendering is bounded by :attr:`limits` (see :class:`RenderLimits`). A missing template or a
        syntax error is the ConfigError of :meth:`load`.
        """
        t = self.load(name)
        lim = self.limits
        try:
            with _Deadline(lim.seconds):
                subject = header_safe(_generate(t.headers["subject"], context, lim.header_chars, "subject"))
                rt = t.headers.get("reply-to")
                reply_to = header_safe(_generate(rt, context, lim.header_chars, "Reply-To")) if rt is not None else None
                text = _generate(t.body, context, lim.body_chars, "text body")
                html = _generate(t.html, context, lim.body_chars, "HTML body") if t.html is not None else None
        except (Exception, _RenderAbort) as e:  # the per-send boundary: no template may stop the worker (issue #9)
            raise _render_error(t, e, context, self.folder) from e
        return Rendered(subject=subject, text=text, html=html, reply_to=reply_to)

_SPECIALS = re.compile(r'[][\\()<>@,:;".]')

MAX_SUBJECT_CHARS = 255
"""Longer subjects are cut, with a warning. Outlook and Exchange keep 255 characters of a subject,
and no mail client shows more; a cap keeps the Subject well inside RFC 5322's line limit."""
MAX_NAME_CHARS = 128
"""Longer display names (From, To, Reply-To) are cut, with a warning. Clients show a few dozen
characters; 128 leaves room for "Company – Department – Person". A 5,000-character name once made
a 5,005-character ``To:`` line that a server refused (issue #9)."""
_LINE_MAX = 998  # RFC 5322 §2.1.1: each line MUST be no more than 998 characters
_FOLD_AT = 78  # RFC 5322 §2.1.1: SHOULD be no more than 78


def encode_words(text: str, *, force: bool = False) -> str:
    """RFC 2047 ``B`` encoded-words for non-ASCII text (any text with ``force``), split on character boundaries.

    Hand-written because ``email.header.Header`` costs about a millisecond a
    header, which was a third of the per-message cost of a campaign (issue #5).
    Each word holds 42 bytes (56 base64 characters, 68 with its wrapper), so a
    word fits a folded line even right after ``Reply-To: `` (RFC 5322 §2.1.1's 78).
    The text is encoded once and cut at the last character boundary within 42
    bytes (a UTF-8 continuation byte is ``0b10xxxxxx``): the same words as
    adding one character at a time, at a third of the cost (the subject and the
    To name of every campaign message, issue #18).
    """
    if not force and text.isascii():
        return text
    data = text.encode("utf-8")
    words: list[bytes] = []
    start, size = 0, len(data)
    while start < size:
        end = start + 42
        if end < size:
            while data[end] & 0xC0 == 0x80:
                end -= 1
        words.append(data[start:end])
        start = end
    return " ".join(f"=?utf-8?b?{base64.b64encode(w).decode('ascii')}?=" for w in words)


def _fits(value: str, room: int) -> bool:
    """Every space-separated word of ``value`` fits in ``room`` characters, so :func:`_fold` can fold it."""
    return len(value) <= room or max(map(len, value.split(" "))) <= room


def _fold(name: str, value: str) -> str:
    """``Name: value`` folded at spaces so no line passes 78 characters (RFC 5322 §2.2.3).

    A word that is longer still (a URL, a Message-ID) stays whole; a line it makes longer than
    998 characters (RFC 5322 §2.1.1) is a DataError, as a server would refuse the message.
    """
    line = f"{name}: "
    out: list[str] = []
    for word in value.split(" "):
        if len(line) + len(word) > _FOLD_AT and line.strip() and not line.endswith(": "):
            out.append(line.rstrip(" "))
            line = " "
        line += word + " "
    out.append(line.rstrip(" "))
    if len(name) + len(value) > _LINE_MAX - 2:
        longest = max(out, key=len)
        if len(longest) > _LINE_MAX:
            raise DataError(f"{name} header: a word of {max(map(len, value.split(' '))):,} characters makes a line "
                            f"of {len(longest):,} characters (expected at most {_LINE_MAX}, RFC 5322 §2.1.1)")
    return "\r\n".join(out)


def _cut(value: str, cap: int, what: str, where: str) -> str:
    """``value`` cut to ``cap`` characters, logging its length only (no names or subjects in the log)."""
    if len(value) <= cap:
        return value
    log.warning("%s of %s is %d characters; cut to %d (RFC 5322 §2.1.1 limits a header line to 998)",
                what, where, len(value), cap)
    return value[:cap].strip()


@functools.lru_cache(maxsize=4096)
def _address(name: str | None, email: str, room: int = _FOLD_AT - 4) -> str:
    """``Name <email>``: the name quoted as needed, or encoded-words when not ASCII or a word cannot fold.

    ``room`` is the space a word has on the first line (78 less ``Field: ``). The address is
    never changed beyond :func:`header_safe` and writing an IDN domain as A-labels, as the
    envelope does (:func:`~crm_automation.addresses.wire_address`, RFC 5890); a non-ASCII
    local part stays UTF-8 (RFC 6532), there being no ASCII form of it.

    Raises:
        DataError: the domain is not a valid internationalized domain name.
    """
    email = wire_address(header_safe(email)).address
    name = header_safe(name or "")
    if not name:
        return email
    if name.isascii():
        phrase = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"' if _SPECIALS.search(name) else name
        if _fits(phrase, room):
            return f"{phrase} <{email}>"
    return f"{encode_words(name, force=True)} <{email}>"


def _mailbox(field: str, name: str | None, email: str, where: str) -> str:
    """The address for header ``field``, its display name cut at :data:`MAX_NAME_CHARS`."""
    if name and len(name) > MAX_NAME_CHARS:  # header_safe never lengthens: only long names need the cut
        name = _cut(header_safe(name), MAX_NAME_CHARS, f"the {field} display name", where)
    return _address(name, email, _FOLD_AT - len(field) - 2)


@functools.lru_cache(maxsize=64)
def _sender(sender: str) -> str:
    name, addr = parseaddr(sender)
    return _mailbox("From", name, addr, "[outbound] from")


def _unstructured(field: str, value: str) -> str:
    """Text for an unstructured header: as is when ASCII and foldable, else RFC 2047 encoded-words."""
    if value.isascii() and _fits(value, _FOLD_AT - len(field) - 2):
        return value
    return encode_words(value, force=True)


def _body(text: str, subtype: str) -> str:
    data = base64.encodebytes(text.encode("utf-8")).decode("ascii").replace("\n", "\r\n")
    return (f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
            f"{data}")


def build_message(r: Rendered, *, sender: str, to_name: str | None, to_email: str, message_id: str,
                  now: datetime, reply_to: str | None = None, list_unsubscribe: str | None = None,
                  one_click: bool = False, extra_headers: dict[str, str] | None = None) -> bytes:
    """Assemble the MIME message as bytes: text, plus an HTML alternative when there is one.

    Every header value passes through :func:`header_safe` (no CR/LF from data) and non-ASCII
    text becomes RFC 2047 encoded-words; bodies are UTF-8 in base64. No header line passes 998
    characters (RFC 5322 §2.1.1): display names and the subject are cut at
    :data:`MAX_NAME_CHARS` and :data:`MAX_SUBJECT_CHARS` with a warning, an ASCII word too long
    to fold at a space makes the value encoded-words, which fold, and a header that still cannot
    be folded (a 1,000-character URL) is a DataError for this message.
    """
    where = f"the message to {to_email}"
    subject = _cut(header_safe(r.subject), MAX_SUBJECT_CHARS, "the Subject", where)
    headers = [("From", _sender(sender)), ("To", _mailbox("To", to_name, to_email, where)),
               ("Subject", _unstructured("Subject", subject)), ("Date", formatdate(now.timestamp())),
               ("Message-ID", header_safe(message_id))]
    rt = r.reply_to or reply_to
    if rt:
        rname, raddr = parseaddr(header_safe(rt))
        headers.append(("Reply-To", _mailbox("Reply-To", rname, raddr, where)))
    if list_unsubscribe:
        headers.append(("List-Unsubscribe", header_safe(list_unsubscribe)))
        if one_click:
            headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    for k, v in (extra_headers or {}).items():
        headers.append((header_safe(k), encode_words(header_safe(v))))
    headers.append(("MIME-Version", "1.0"))
    head = "\r\n".join(_fold(k, v) for k, v in headers)
    if r.html is None:
        return _bytes(f"{head}\r\n{_body(r.text, 'plain')}", where)
    boundary = f"=_crm_{uuid.uuid4().hex}"
    return _bytes(f'{head}\r\nContent-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'
                  f"--{boundary}\r\n{_body(r.text, 'plain')}--{boundary}\r\n{_body(r.html, 'html')}"
                  f"--{boundary}--\r\n", where)


def _bytes(message: str, where: str) -> bytes:
    """The message as bytes: ASCII, or UTF-8 when a header must carry UTF-8 (issue #17, RFC 6532).

    Everything this module writes is ASCII (encoded-words, base64 bodies,
    A-label domains) except what has no ASCII form: an address with a
    non-ASCII local part (``张三@example.cn``), or a configured URL with
    non-ASCII characters. Such a message is UTF-8; the SMTP transport sends it
    with SMTPUTF8 or fails that message alone. It used to raise
    ``UnicodeEncodeError`` here, which crashed every send pass.
    """
    try:
        return message.encode("ascii")
    except UnicodeEncodeError:
        pass
    try:
        return message.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate: no encoding can write it
        raise DataError(f"{where}: a header holds a character that cannot be written ({e.reason}, "
                        f"{e.object[e.start:e.end]!r})") from None
