"""Rewriting a rendered message's links for click tracking, and the open pixel (issue #19): pure, on literals."""

from __future__ import annotations

import pytest

from crm_automation.tracking import track, trackable

BASE = "https://crm.example.com"
TOKEN = "crm.0123456789abcdef0123456789abcdef"
UNSUB = "https://unsub.example.com/u/" + TOKEN


def c(n: int) -> str:
    return f"{BASE}/c/{TOKEN}/{n}"


def _track(text: str, html: str | None = None, *, clicks: bool = True, opens: bool = False):
    return track(text, html, base=BASE, token=TOKEN, clicks=clicks, opens=opens, keep=(UNSUB,))


def test_links_in_both_parts_are_numbered_by_distinct_url():
    text = ("Offer: https://example.com/offer?a=1&b=2.\nDocs (https://docs.example.com/x) and "
            "https://example.com/offer?a=1&b=2 again; 价格见https://example.com/p，谢谢。IRI: https://example.com/价格\n")
    html = ('<p><a href="https://example.com/offer?a=1&amp;b=2">offer</a> '
            "<A class=x HREF='https://shop.example.com/p/1'>shop</A> <a href=https://docs.example.com/x>docs</a></p>")
    t = _track(text, html)
    assert t.links == ("https://example.com/offer?a=1&b=2", "https://docs.example.com/x", "https://example.com/p",
                       "https://shop.example.com/p/1")
    assert t.text == (f"Offer: {c(0)}.\nDocs ({c(1)}) and {c(0)} again; 价格见{c(2)}，谢谢。IRI: "
                      "https://example.com/价格\n")
    assert t.html == (f'<p><a href="{c(0)}">offer</a> <A class=x HREF="{c(3)}">shop</A> '
                      f'<a href="{c(1)}">docs</a></p>')


@pytest.mark.parametrize("href", [
    UNSUB,  # the unsubscribe link: RFC 8058 and the providers want the real one
    "mailto:sales@example.com?subject=unsubscribe",
    f"{BASE}/u/{TOKEN}",  # serve's own pages
    BASE,
    "javascript:alert(1)",
    " javascript:alert(document.cookie)",
    "data:text/html;base64,PHNjcmlwdD4=",
    "tel:+861012345678",
    "https://example.com/a&#13;&#10;Set-Cookie:%20x=1",  # CR/LF as character references
    "https://example.com/a\r\nLocation: https://evil.example",  # a literal CR/LF
    "https://example.com/a&quot;onmouseover=&quot;alert(1)",  # a quote inside the value
    "https://example.com/\u00e9",  # not ASCII: left as written
    "https:///no-host",
    "/relative/path",
    "#top",
])
def test_links_that_must_not_be_tracked_stay_exactly_as_written(href):
    html = f'<p><a href="{href}">x</a></p>'
    t = _track(f"see {UNSUB} or {BASE}/help", html)
    assert t.html == html
    assert t.text == f"see {UNSUB} or {BASE}/help"
    assert t.links == ()


def test_what_is_trackable():
    assert trackable("https://example.com/a?b=c#d") and trackable("HTTP://Example.com")
    assert not any(trackable(u) for u in ("javascript:alert(1)", "https://example.com/a\nb", "https://a.example/\"",
                                          "https://a.example/<x>", "ftp://example.com", "https://", "",
                                          "https://[::1", "https://example.com/" + "a" * 3000))


def test_links_in_comments_scripts_and_attributes_are_not_links():
    html = ('<!-- <a href="https://old.example.com">old</a> -->'
            '<script>var u = "<a href=\'https://s.example.com\'>";</script>'
            '<img alt=\'<a href="https://alt.example.com">\' src="https://img.example.com/logo.png">'
            '<a title="x" href="https://real.example.com/">real</a>')
    t = _track("", html)
    assert t.links == ("https://real.example.com/",)
    assert t.html == html.replace('href="https://real.example.com/"', f'href="{c(0)}"')


def test_href_inside_another_attribute_is_not_the_link():
    html = '<a title=" href=https://fake.example.com" data-x=\'href="https://f2.example.com"\' href=https://real.example.com/a>x</a>'
    t = _track("", html)
    assert t.links == ("https://real.example.com/a",)
    assert t.html == html.replace("href=https://real.example.com/a>", f'href="{c(0)}">')


def test_off_changes_nothing():
    text, html = "https://example.com/a", '<a href="https://example.com/a">a</a></body>'
    t = _track(text, html, clicks=False, opens=False)
    assert (t.text, t.html, t.links) == (text, html, ())


def test_the_open_pixel_goes_at_the_end_of_the_body():
    t = _track("x", '<html><body><p>Hi</p></BODY></html>', clicks=False, opens=True)
    assert t.html == (f'<html><body><p>Hi</p><img src="{BASE}/o/{TOKEN}.gif" width="1" height="1" alt="" '
                      'style="display:block;width:1px;height:1px;border:0"></BODY></html>')
    assert t.links == ()
    bare = _track("x", "<p>Hi</p>", clicks=False, opens=True).html
    assert bare is not None and bare.startswith("<p>Hi</p><img ") and bare.endswith(">")
    assert _track("x", None, clicks=False, opens=True).html is None  # a text-only message has no pixel
