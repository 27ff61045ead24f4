"""The ``/pipeline`` page shows ``report pipeline --json``'s numbers (issue #21), over HTTP against a real serve.

The log is the hand-counted month of tests/app/test_app_pipeline.py; the
page is read with a real HTTP client after a login, its cells, owners,
funnel and moves taken from the table rows' data attributes.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest

from crm_automation.web.auth import hash_password
from crm_automation.workspace import Clock
from tests.app.test_app_pipeline import NOW, at, build_pipeline_log

PASSWORD = "correct horse battery staple"
_ROW = re.compile(r'<tr class="(cell|owner|step|move)"([^>]*)>(.*?)</tr>', re.S)
_ATTR = re.compile(r'data-([a-z]+)="([^"]*)"')
_COL = re.compile(r'data-col="([a-z_0-9]+)">([^<]*)<')


def _number(text: str) -> float | int | None:
    if text == "":
        return None
    return float(text) if "." in text else int(text)


def _rows(html: str, kind: str) -> list[dict[str, object]]:
    out = []
    for k, attrs, body in _ROW.findall(html):
        if k != kind:
            continue
        row: dict[str, object] = {a: (v or None) for a, v in _ATTR.findall(attrs)}
        row.update({c: _number(v) for c, v in _COL.findall(body)})
        out.append(row)
    return out


def _login(c: httpx.Client) -> None:
    token = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text)
    assert token
    r = c.post("/login", data={"csrf": token.group(1), "user": "sales", "password": PASSWORD, "next": "/pipeline"})
    assert r.status_code == 303


@pytest.fixture
def served(tmp_path, cli, web_server):
    cfg = build_pipeline_log(tmp_path / "ws", cli,
                             extra_config=f'\n[serve]\nusers = {{ sales = "{hash_password(PASSWORD)}" }}\n')
    return cfg, web_server(cfg, Clock(at(NOW)))


def test_the_page_shows_the_numbers_of_report_pipeline_json(served, cli):
    cfg, srv = served
    r = cli("report", "pipeline", "--json", "--since", "2026-11-01", "--config", str(cfg), "--now", NOW)
    assert r.code == 0, r.err
    expected = json.loads(r.out)
    with httpx.Client(base_url=srv.url) as c:
        assert c.get("/pipeline").status_code == 303  # login required
        _login(c)
        page = c.get("/pipeline", params={"since": "2026-11-01", "lang": "en"})
    assert page.status_code == 200
    html = page.text
    assert 'href="/pipeline" aria-current="page"' in html
    assert _rows(html, "cell") == expected["cells"] and len(expected["cells"]) == 3
    owners = [{"owner": o["owner"], **{k: v for k, v in o.items() if k != "owner"}} for o in expected["owners"]]
    assert _rows(html, "owner") == owners
    assert _rows(html, "step") == expected["funnel"]
    assert [{"from": m["from"], "to": m["to"], "count": m["count"]} for m in _rows(html, "move")] == \
        expected["moves"]


def test_the_page_in_chinese_and_a_bad_date(served):
    _, srv = served
    with httpx.Client(base_url=srv.url) as c:
        _login(c)
        page = c.get("/pipeline", params={"lang": "zh-CN"})
        assert page.status_code == 200 and "销售漏斗" in page.text and "首次响应" in page.text
        assert _rows(page.text, "step") == []  # no since: no funnel
        bad = c.get("/pipeline", params={"since": "yesterday"})
        assert bad.status_code == 400 and "Traceback" not in bad.text
        future = c.get("/pipeline", params={"since": "2027-01-01"})
        assert future.status_code == 400 and "after now" in future.text
