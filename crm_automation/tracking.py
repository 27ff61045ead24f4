"""Click and open tracking (issue #19): a rendered message's links rewritten to ``serve``. Pure: no I/O, no clock.

Off by default, per campaign (``track_clicks``, ``track_opens`` in
campaigns.toml), and only when ``[serve] public_url`` says where ``serve``
is published. Then:

- every ``http(s)`` link of the text part, and every ``<a href>`` of the
  HTML part, becomes ``{public_url}/c/{token}/{n}``: ``n`` numbers the
  message's distinct URLs from 0, in the order they first appear (text,
  then HTML), so the same URL in both parts is one link and one click;
- the original URLs are handed back in that order (:attr:`Tracked.links`)
  and recorded with the send (``send_links``) when it is marked
  ``sending``. ``serve`` redirects to the stored URL and to nothing else:
  no open redirect, and no template rendered again (it may have changed);
- ``track_opens`` adds a 1x1 image ``{public_url}/o/{token}.gif`` at the end
  of the HTML body. Opens are unreliable and documented so: mail clients
  that block images never report one, and Apple Mail Privacy Protection
  (and scanners, Gmail's image proxy) fetch every image at delivery,
  reporting messages nobody read.

Never rewritten: the unsubscribe link (RFC 8058 and the providers want the
real one), ``mailto:`` and any other scheme (``javascript:``, ``data:``,
``tel:``), links already under ``public_url``, and any URL that is not
plain printable ASCII with a host (:func:`trackable`): a CR/LF or a quote
never reaches a stored URL, so never a ``Location`` header either. Such
links stay exactly as written.

Why the standard library's :class:`html.parser.HTMLParser` and not a
regular expression over the HTML: it knows where a tag starts, so a link
inside a comment, a ``<script>`` or an attribute value is not taken for one;
only the ``href`` value of real ``<a>`` start tags is replaced, and the rest
of the HTML stays byte for byte as rendered.
"""

from __future__ import annotations

import html as htmllib
import re
import unicodedata
from collections.abc import Callable, Collection
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import urlsplit

__all__ = ["Tracked", "click_url", "open_url", "track", "trackable"]

MAX_URL = 2048  # longer URLs are left untouched: a stored redirect target stays a sensible size
# What RFC 3986 allows in a URI, ASCII only; a URL in running text ends at anything else (a space, a Chinese
# full stop or comma, an angle bracket), and its trailing punctuation is not part of it (:func:`_trim`).
_TEXT_URL = re.compile(r"https?://[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+", re.IGNORECASE)
# One attribute of a start tag (HTML's tokenizer, simplified): a name, optionally ``=`` and a quoted or bare value.
_ATTR = re.compile(r"""\s*([^\s"'>/=]+)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s"'=<>`]+))?""")
_TAG_NAME = re.compile(r"<[A-Za-z][^\s/>]*")
_UNSAFE = frozenset('"<>\\^`{|}')
_Rewrite = Callable[[str], str | None]  # an original URL -> its tracked URL, or None: leave it as written


@dataclass(frozen=True, slots=True)
class Tracked:
    """A message's parts with links rewritten, and the original URL of each link number."""

    text: str
    html: str | None
    links: tuple[str, ...]


def click_url(base: str, token: str, n: int) -> str:
    """Where tracked link ``n`` of the send with ``token`` points: ``{public_url}/c/{token}/{n}``."""
    return f"{base}/c/{token}/{n}"


def open_url(base: str, token: str) -> str:
    """The open pixel of the send with ``token``: ``{public_url}/o/{token}.gif``."""
    return f"{base}/o/{token}.gif"


def trackable(url: str) -> bool:
    """Whether a URL may be rewritten and later redirected to: http(s), a host, printable ASCII, no quotes.

    Anything else stays as written in the message and is never stored: a
    CR or LF could split a ``Location`` header, a quote or angle bracket
    could leave an attribute, ``javascript:`` and ``data:`` run in the
    browser.
    """
    if not url or len(url) > MAX_URL or not url.isascii() or any(c <= " " or c == "\x7f" or c in _UNSAFE
                                                                   for c in url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:  # an invalid IPv6 literal, say
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def track(text: str, html: str | None, *, base: str, token: str, clicks: bool, opens: bool,
          keep: Collection[str] = ()) -> Tracked:
    """Rewrite the links of one rendered message (``clicks``) and add the open pixel (``opens``).

    ``base`` is ``[serve] public_url`` (no trailing slash); ``keep`` the
    URLs left alone besides those under ``base`` (the message's
    unsubscribe link).
    """
    numbers: dict[str, int] = {}

    def tracked_url(url: str) -> str | None:
        if url in keep or url == base or url.startswith(base + "/") or not trackable(url):
            return None
        n = numbers.setdefault(url, len(numbers))
        return click_url(base, token, n)

    if clicks:
        text = _track_text(text, tracked_url)
        if html is not None:
            html = _track_html(html, tracked_url)
    if opens and html is not None:
        html = _with_pixel(html, open_url(base, token))
    return Tracked(text, html, tuple(numbers))


def _trim(url: str) -> str:
    """A URL found in running text without the punctuation that ends the sentence around it.

    ``see https://example.com/a.`` means ``https://example.com/a``; a
    closing parenthesis or bracket belongs to the URL only when it opens
    one too (``https://en.wikipedia.org/wiki/Mail_(protocol)``).
    """
    while url and url[-1] in ".,;:!?'*":
        url = url[:-1]
    for close, open_ in ((")", "("), ("]", "[")):
        while url.endswith(close) and url.count(close) > url.count(open_):
            url = url[:-1]
            while url and url[-1] in ".,;:!?'*":
                url = url[:-1]
    return url


def _track_text(text: str, tracked_url: _Rewrite) -> str:
    out: list[str] = []
    last = 0
    for m in _TEXT_URL.finditer(text):
        if m.end() < len(text) and unicodedata.category(text[m.end()])[0] in "LNM":
            continue  # a non-ASCII letter goes on: an IRI (``https://example.com/价格``), left as written
        url = _trim(m.group(0))
        new = tracked_url(url)
        if new is None:
            continue
        out += [text[last:m.start()], new]
        last = m.start() + len(url)
    return "".join(out) + text[last:] if out else text


class _Anchors(HTMLParser):
    """Collects where each ``<a href=...>`` start tag is (line and column, as the parser counts) and its text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[int, int, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a" and any(k == "href" for k, _ in attrs):
            line, col = self.getpos()
            raw = self.get_starttag_text()
            if raw is not None:
                self.found.append((line, col, raw))

    handle_startendtag = handle_starttag


def _track_html(html: str, tracked_url: _Rewrite) -> str:
    parser = _Anchors()
    parser.feed(html)
    parser.close()
    if not parser.found:
        return html
    line_starts = [0]
    line_starts += [i + 1 for i, c in enumerate(html) if c == "\n"]
    out: list[str] = []
    last = 0
    for line, col, raw in parser.found:
        at = line_starts[line - 1] + col
        if html[at:at + len(raw)] != raw:  # never expected; a tag not found where the parser saw it stays
            continue
        new_tag = _rewrite_href(raw, tracked_url)
        if new_tag != raw:
            out += [html[last:at], new_tag]
            last = at + len(raw)
    return "".join(out) + html[last:] if out else html


def _rewrite_href(tag: str, tracked_url: _Rewrite) -> str:
    """The start tag with its ``href`` value replaced, or unchanged when the link is not tracked.

    Attributes are read one after another, so ``href=`` inside another
    attribute's quoted value (``title=" href=x"``) is not taken for it.
    """
    name = _TAG_NAME.match(tag)
    pos = name.end() if name is not None else len(tag)
    while (m := _ATTR.match(tag, pos)) is not None and m.end() > pos:
        if m.group(1).lower() == "href" and m.group(2) is not None:
            value = m.group(2)
            if value[:1] in ("'", '"'):
                value = value[1:-1]
            new = tracked_url(htmllib.unescape(value).strip())
            if new is None:
                return tag
            return f'{tag[:m.start(2)]}"{htmllib.escape(new, quote=True)}"{tag[m.end(2):]}'
        pos = m.end()
    return tag


def _with_pixel(html: str, src: str) -> str:
    """The HTML with a 1x1 image at the end of its body (before ``</body>`` when there is one)."""
    pixel = (f'<img src="{htmllib.escape(src, quote=True)}" width="1" height="1" alt="" '
             'style="display:block;width:1px;height:1px;border:0">')
    at = html.lower().rfind("</body>")
    return html[:at] + pixel + html[at:] if at >= 0 else html + pixel
