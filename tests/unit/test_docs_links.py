"""Links between the docs resolve, and the docs name no path of a build machine (issue #19's docs).

The READMEs point to docs/*.md for detail and the pages point back, often at
a heading (``web.md#7-the-public-endpoints``); a renamed heading or a moved
screenshot breaks such a link silently on GitHub. Anchors are made as GitHub
makes them: lower case, punctuation dropped (CJK letters kept), spaces to
hyphens, a repeated heading numbered ``-1``, ``-2``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", REPO / "README.zh-CN.md", *sorted((REPO / "docs").rglob("*.md"))]
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|tmp|home|root)/[^\s`)]*")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    out: set[str] = set()
    seen: dict[str, int] = {}
    for line in _FENCE.sub("", text).splitlines():
        if m := re.match(r"^#{1,6}\s+(.*)", line):
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


def broken_links(page: Path, text: str) -> list[str]:
    """Relative links (and images) of ``text``, written in ``page``, whose file or heading does not exist."""
    out = []
    for target in _LINK.findall(_FENCE.sub("", text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            out.append(f"{page.relative_to(REPO)}: {target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest.read_text(encoding="utf-8")):
            out.append(f"{page.relative_to(REPO)}: {target}: no heading with that anchor")
    return out


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_between_the_docs_resolves(page):
    assert broken_links(page, page.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_the_docs_name_no_path_of_a_build_machine(page):
    assert _MACHINE_PATH.findall(page.read_text(encoding="utf-8")) == []


def test_a_broken_link_or_anchor_is_noticed():
    readme = REPO / "README.md"
    assert slug("6. QQ Mail (QQ 邮箱) and Tencent Exmail (腾讯企业邮)") == "6-qq-mail-qq-邮箱-and-tencent-exmail-腾讯企业邮"
    assert slug("## 网页端（`serve`）".lstrip("# ")) == "网页端serve"
    assert broken_links(readme, "[a](docs/web.md#7-the-public-endpoints)") == []
    assert len(broken_links(readme, "[a](docs/web.md#no-such-heading) [b](docs/nowhere.md)")) == 2
    assert broken_links(readme, "```\n[in a block](docs/nowhere.md)\n```") == []
    assert _MACHINE_PATH.findall("see /tmp/x and /srv/crm/var") == ["/tmp/x"]
