"""The one-click POST's short way through ``serve`` (issue #19, "Performance"): answered before the router.

Why: a mail provider's RFC 8058 POST is ``serve``'s most frequent request and the only one that arrives while
the worker sends at full speed, on the same cores. Through the Starlette app it crossed the error and
exception middleware, the security-header and session middleware, the router (a regular expression per
route), a ``Request``, python-multipart's form parser for a 26-byte body and the construction of a
``Response``: most of ``serve``'s CPU per POST outside the log's own work, and the worker's send rate dropped
with it (about 13% per millisecond of ``serve`` CPU per POST on 2 cores; benchmarks/bench_unsubscribe.py).

What takes the short way: ``POST /u/<token>`` with a token of our shape (:func:`crm_automation.tokens.is_token`),
``Content-Type: application/x-www-form-urlencoded``, ``Content-Length: 26`` and exactly the body
``List-Unsubscribe=One-Click`` — what RFC 8058 §3.2 has providers send. Everything else (multipart, extra
fields such as our confirmation page's ``page=1``, a malformed token, another method or path, a body sent in
pieces past 26 bytes, a client gone before its body came) goes on to the Starlette app with the body it sent
and is answered there (:func:`crm_automation.web.public.unsubscribe`): nothing is counted before that choice.

What the short way does is what :func:`crm_automation.web.public.unsubscribe` does, in its order: the client's
hit counted against the public rate limit first (429), the token submitted to the group commit
(:mod:`crm_automation.web.batching`: answered only after its transaction committed), 503 when the log stayed
busy, 404 for a token that names no send, else the plain answer in the request's language (``?lang=``, then
``Accept-Language``; no cookie read or set). The answers are the same responses
(:func:`~crm_automation.web.public.plain_answer`, :func:`~crm_automation.web.public.not_found`, …) with the
same security headers (:func:`crm_automation.web.app.secured`), built once and kept as bytes. It sits inside
:class:`~crm_automation.web.app.RequestLog` (``serve -v`` logs these requests as before) and inside
Starlette's error middleware (a bug is a 500, as before).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from starlette.datastructures import QueryParams
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crm_automation.app.suppressions import Outcome
from crm_automation.errors import LockedError
from crm_automation.tokens import is_token
from crm_automation.web import i18n, public
from crm_automation.web.app import WebState, secured

FORM = "application/x-www-form-urlencoded"
BODY = "=".join(public.ONE_CLICK).encode()  # b"List-Unsubscribe=One-Click", RFC 8058 §3.1
_LENGTH = str(len(BODY)).encode()


@dataclass(frozen=True, slots=True)
class Answer:
    """A response kept as the bytes it sends: status, headers (security headers included), body."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    @classmethod
    def of(cls, response: Response) -> Answer:
        """What a public endpoint's ``response`` sends once :class:`~crm_automation.web.app.SecurityHeaders` ran."""
        return cls(response.status_code, tuple(secured(response.raw_headers, static=False)), bytes(response.body))

    async def deliver(self, send: Send) -> None:
        """Send it, as Starlette's ``Response`` does: the start, then the whole body."""
        await send({"type": "http.response.start", "status": self.status, "headers": list(self.headers)})
        await send({"type": "http.response.body", "body": self.body})


class OneClick:
    """ASGI middleware: the RFC 8058 POSTs described in the module docstring answered here, the rest passed on."""

    def __init__(self, app: ASGIApp, web: WebState) -> None:
        self.app = app
        self.web = web
        self.not_found = Answer.of(public.not_found())
        self.too_many = Answer.of(public.too_many())
        self.busy = Answer.of(public.busy())
        self._plain: dict[tuple[str, str], Answer] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a one-click POST, or pass the request on (with what was read of its body)."""
        if scope["type"] != "http" or scope["method"] != "POST" or not _one_click_path(scope):
            await self.app(scope, receive, send)
            return
        length, ctype, accept = _headers(scope)
        if length != _LENGTH or ctype is None or ctype.decode("latin-1").split(";")[0].strip().lower() != FORM:
            await self.app(scope, receive, send)
            return
        read = await _body(receive)
        last = read[-1]
        if last["type"] != "http.request" or last.get("more_body", False) or _joined(read) != BODY:
            await self.app(scope, _replaying(read, receive), send)
            return
        answer = await self._answer(scope, accept)
        await answer.deliver(send)

    async def _answer(self, scope: Scope, accept: bytes | None) -> Answer:
        """What :func:`crm_automation.web.public.unsubscribe` answers a one-click POST whose body it read."""
        client = scope.get("client")
        if not self.web.limits.public.hit(client[0] if client else "unknown"):
            return self.too_many
        try:
            result = await self.web.unsubscribes.submit(scope["path"][3:])  # group commit
        except LockedError:
            return self.busy
        if result.outcome is Outcome.UNKNOWN_TOKEN:
            return self.not_found
        query = scope["query_string"]
        lang = i18n.choose(QueryParams(query).get("lang") if query else None, None,
                           accept.decode("latin-1") if accept is not None else None)
        view = public.VIEWS[result.outcome]
        answer = self._plain.get((view, lang))
        if answer is None:
            answer = self._plain[view, lang] = Answer.of(public.plain_answer(view, lang))
        return answer


def _one_click_path(scope: Scope) -> bool:
    """Whether the path is ``/u/<token>`` with a token of our shape, at the app's root (the route's own match)."""
    path: str = scope["path"]
    return path.startswith("/u/") and is_token(path[3:]) and not scope.get("root_path")


def _headers(scope: Scope) -> tuple[bytes | None, bytes | None, bytes | None]:
    """The first Content-Length, Content-Type and Accept-Language (ASGI header names are lower case)."""
    length = ctype = accept = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = value if length is None else length
        elif name == b"content-type":
            ctype = value if ctype is None else ctype
        elif name == b"accept-language":
            accept = value if accept is None else accept
    return length, ctype, accept


async def _body(receive: Receive) -> list[Message]:
    """The messages of the body, until it ends, passes :data:`BODY`'s length, or the client leaves."""
    read: list[Message] = []
    size = 0
    while True:
        message = await receive()
        read.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            return read
        size += len(message.get("body", b""))
        if size > len(BODY):
            return read


def _joined(read: list[Message]) -> bytes:
    return b"".join(m.get("body", b"") for m in read)


def _replaying(read: list[Message], receive: Receive) -> Receive:
    """``receive`` as the app behind sees it: the messages already read first, then the rest from the client."""
    queue = deque(read)

    async def replay() -> Message:
        if queue:
            return queue.popleft()
        return await receive()

    return replay
