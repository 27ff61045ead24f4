"""The send loop's per-message composing work, made cheaper for issue #18, writes the same messages.

``encode_words`` cuts the encoded text at character boundaries instead of
adding one character at a time, and the composer asks for a message's
unsubscribe mailto once for the template and the header. These tests pin
that the output is what it was: the words of the character-at-a-time
definition (kept here as the oracle), and each message's own token in both
its body and its ``List-Unsubscribe``, whatever order messages are composed in.
"""

from __future__ import annotations

import base64
import random
from datetime import UTC, datetime
from email import policy
from email.parser import Parser
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from crm_automation.compose import Composer
from crm_automation.config import load_config
from crm_automation.models import CustomerView
from crm_automation.templating import Templates, encode_words

NOW = datetime(2027, 1, 10, 2, 0, tzinfo=UTC)


def _words_one_character_at_a_time(text: str) -> str:
    """The definition ``encode_words`` had before issue #18: add characters while the word stays <= 42 bytes."""
    words: list[bytes] = []
    buf = b""
    for ch in text:
        b = ch.encode("utf-8")
        if len(buf) + len(b) > 42:
            words.append(buf)
            buf = b
        else:
            buf += b
    if buf:
        words.append(buf)
    return " ".join(f"=?utf-8?b?{base64.b64encode(w).decode('ascii')}?=" for w in words)


@pytest.mark.parametrize("text", ["", "a", "客户123，年终老客户专享优惠", "é" * 21, "é" * 22, "中" * 14, "中" * 15,
                                  "😀" * 10, "😀" * 11, "x" + "😀" * 11, "Mixed ascii and 中文 " * 6])
def test_encoded_words_are_the_character_at_a_time_words(text: str) -> None:
    assert encode_words(text, force=True) == _words_one_character_at_a_time(text)


def test_encoded_words_match_on_generated_text_of_one_to_four_byte_characters() -> None:
    rnd = random.Random(18)
    for _ in range(2000):
        text = "".join(rnd.choice("a é中😀\u0800\u07ff") for _ in range(rnd.randint(0, 130)))
        got = encode_words(text, force=True)
        assert got == _words_one_character_at_a_time(text)
        words = [base64.b64decode(w[len("=?utf-8?b?"):-2]) for w in got.split(" ")] if got else []
        assert all(0 < len(w) <= 42 for w in words)
        assert "".join(w.decode("utf-8") for w in words) == text  # every word whole UTF-8


def test_ascii_text_passes_unencoded_unless_forced() -> None:
    assert encode_words("hello") == "hello"
    assert encode_words("hello", force=True) == "=?utf-8?b?aGVsbG8=?="


def _composer(tmp_path: Path) -> Composer:
    (tmp_path / "config.toml").write_text(
        '[sheet]\nsource = "csv"\npath = "c.csv"\n\n[mailbox]\nsource = "maildir"\npath = "inbox"\n\n'
        '[outbound]\ntransport = "outbox"\nfrom = "Sales <sales@example.com>"\n', encoding="utf-8")
    (tmp_path / "t.txt").write_text("Subject: Hi {{ customer.name }}\n\nbye: {{ unsubscribe }}\n", encoding="utf-8")
    return Composer(load_config(tmp_path / "config.toml"), Templates(tmp_path, ZoneInfo("Asia/Shanghai")))


def test_each_message_carries_its_own_unsubscribe_token_in_body_and_header(tmp_path: Path) -> None:
    composer = _composer(tmp_path)
    mids = [composer.message_id() for _ in range(3)]
    order = [0, 1, 1, 0, 2, 0]  # the same Message-ID again, and back to an earlier one
    for i in order:
        view = CustomerView(f"k{i}", f"c{i}@example.net", {"name": f"C{i}"}, NOW, None)
        msg = Parser(policy=policy.default).parsestr(
            composer.campaign_email("t", view, "promo", 0, mids[i], NOW).data.decode("ascii"))
        token = mids[i].strip("<>").partition("@")[0]
        mailto = f"mailto:sales@example.com?subject=unsubscribe%20{token}"
        assert str(msg["List-Unsubscribe"]) == f"<{mailto}>"
        assert msg.get_body(("plain",)).get_content() == f"bye: {mailto}\n"
        assert composer.unsubscribe_mailto(mids[i]) == mailto
