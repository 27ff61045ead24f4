"""The browser fixture itself (tests/fixtures/browser.py): a failing browser test leaves its page behind.

Run as a child pytest on a throw-away test file, because what is checked is
what a failing run reports; the child uses the same fixture plugin.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.browser import require_browser, shoot
from tests.fixtures.core import REPO

pytestmark = pytest.mark.integration

_CHILD = '''
from tests.fixtures.browser import shoot

def test_fails_on_a_page(browser):
    browser.get("data:text/html,<title>t</title><h1 id=x>artefact page</h1>")
    shoot(browser, "made by the child")
    assert browser.find_element("id", "x").text == "something else"
'''


def test_a_failing_browser_test_saves_a_screenshot_and_names_it(tmp_path):
    require_browser()
    (tmp_path / "test_child.py").write_text(_CHILD, encoding="utf-8")
    artefacts, shots = tmp_path / "artefacts", tmp_path / "shots"
    env = {**os.environ, "CRM_TEST_ARTEFACTS": str(artefacts), "CRM_SCREENSHOTS": str(shots),
           "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "tests.fixtures.browser",
                        "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path / "test_child.py")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "browser artefacts" in p.stdout
    (png,) = artefacts.glob("*.png")
    (html,) = artefacts.glob("*.html")
    assert str(png) in p.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "artefact page" in html.read_text(encoding="utf-8")
    assert (shots / "made_by_the_child.png").is_file()


def test_screenshots_are_only_made_when_asked(browser, monkeypatch, tmp_path):
    monkeypatch.delenv("CRM_SCREENSHOTS", raising=False)
    browser.get("data:text/html,<p>hello</p>")
    assert shoot(browser, "nothing") is None
    monkeypatch.setenv("CRM_SCREENSHOTS", str(tmp_path / "s"))
    path = shoot(browser, "a page/with odd name")
    assert path == tmp_path / "s" / "a_page_with_odd_name.png"
    assert Path(path).stat().st_size > 1000
    png = Path(path).read_bytes()
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (1280, 800)  # IHDR
