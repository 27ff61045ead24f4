"""reply_text.extract: one literal per client style, plus the labelled corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from crm_automation.parse import parse
from crm_automation.reply_text import extract

CORPUS = Path(__file__).resolve().parents[1] / "data" / "eml"
LABELLED = sorted(p for kind in ("email_in", "unsubscribe") for p in (CORPUS / kind).glob("*.eml"))

CASES = {
    "gmail_en": ("Thanks!\n\nOn Tue, Nov 24, 2026 at 10:00 AM Sales <sales@example.com> wrote:\n\n> old\n> text\n", "Thanks!"),
    "gmail_en_wrapped": (
        "Thanks!\n\nOn Tue, Nov 24, 2026 at 10:00 AM Sales Team of Example Ltd <\nsales@example.com> wrote:\n> old\n",
        "Thanks!",
    ),
    "gmail_en_wrapped_three_lines": (
        "Fine.\n\nOn Tue, Nov 24, 2026 at 10:00 AM\nSales Team of Example Ltd\n<sales@example.com> wrote:\n> old\n",
        "Fine.",
    ),
    "gmail_zh_zai": ("好的\n\n在 2026年11月24日周二 上午10:00，Sales <sales@example.com> 写道：\n\n> 旧\n", "好的"),
    "gmail_zh_zai_wrapped": ("好的\n\n在 2026年11月24日周二 上午10:00，Sales <\nsales@example.com> 写道：\n> 旧\n", "好的"),
    "gmail_zh_yu": ("好的\n\nSales <sales@example.com> 于2026年11月24日周二 10:00写道：\n> 旧\n", "好的"),
    "163_zai": ('收到\n\n在 2026-11-24 10:00:00，"张三" <x@163.example.cn> 写道：\n>旧的\n', "收到"),
    "163_original_divider": ("收到\n\n----- 原始邮件 -----\n发件人：x@example.com\n主题：y\n\n旧\n", "收到"),
    "qq": (
        "好的，明天见。\n\n------------------ 原始邮件 ------------------\n发件人: \"张三\"<z@example.com>;\n"
        "发送时间: 2026年11月24日(星期二) 上午10:00\n收件人: \"李四\"<l@qq.example.cn>;\n主题: 报价\n\n旧内容\n",
        "好的，明天见。",
    ),
    "qq_nbsp_divider": ("好的\n\n------------------\xa0原始邮件\xa0------------------\n发件人: a\n\n旧\n", "好的"),
    "foxmail_original": (
        "OK\n\n------------------ Original ------------------\nFrom:  \"S\"<s@example.com>;\nDate:  Mon\n\nold\n", "OK"
    ),
    "outlook_original_message": (
        "Go ahead.\n\n-----Original Message-----\nFrom: S <s@example.com>\nSent: Monday\nTo: b\nSubject: x\n\nold\n",
        "Go ahead.",
    ),
    "outlook_spaced_original": ("Go.\n\n----- Original Message -----\nFrom: s\nTo: b\n\nold\n", "Go."),
    "outlook_underscore": ("Hi\n\n________________________________\nFrom: S\nSent: Monday\nTo: A\nSubject: Q\n\nold\n", "Hi"),
    "outlook_block_without_divider": ("Hi\n\nFrom: S <s@example.com>\nSent: Monday\nTo: A\nSubject: Q\n\nold\n", "Hi"),
    "outlook_bold_block": ("Hi\n\n*From:* S <s@example.com>\n*Sent:* Monday\n*To:* A\n\nold\n", "Hi"),
    "outlook_zh_ascii_colon": ("好\n\n发件人: S\n发送时间: 2026年11月24日 10:00\n收件人: A\n主题: Q\n\n旧\n", "好"),
    "outlook_zh_fullwidth_colon": ("好\n\n发件人： S\n发送时间： 2026年11月24日\n收件人： A\n主题： Q\n\n旧\n", "好"),
    "outlook_zh_tw": ("好\n\n寄件者: S\n寄件日期: 2026年11月24日\n收件者: A\n主旨: Q\n\n舊\n", "好"),
    "iphone_zh": ("ok\n\n发自我的iPhone\n\n> 在 2026年11月24日，10:00，x 写道：\n> a\n", "ok"),
    "iphone_zh_space": ("ok\n\n发自我的 iPhone\n", "ok"),
    "iphone_zh_cong": ("ok\n\n从我的 iPhone 发送\n", "ok"),
    "iphone_en": ("ok\n\nSent from my iPhone\n\n> On Nov 24, 2026, at 10:00, S <s@example.com> wrote:\n", "ok"),
    "outlook_mobile": ("ok\n\nGet Outlook for Android\n", "ok"),
    "apple_quoted_header": ("Sure.\n\n> On 24 Nov 2026, at 10:00, S <s@example.com> wrote:\n> \n> q\n", "Sure."),
    "signature": ("Hello,\n\nIs it in stock?\n\n-- \nHenry\n+1 555 0100\n", "Hello,\n\nIs it in stock?"),
    "signature_without_trailing_space": ("Hello\n--\nHenry\n", "Hello"),
    "quoted_lines_only_removed": ("> old\nnew line\n> older\n", "new line"),
    "bottom_post": ("On Tue, Nov 24, 2026 at 10:00 AM S <s@example.com> wrote:\n> q\n\nMy answer.\n", "My answer."),
    "crlf": ("Thanks!\r\n\r\nOn Tue, Nov 24, 2026 S <s@example.com> wrote:\r\n> old\r\n", "Thanks!"),
}


@pytest.mark.parametrize(("text", "expected"), CASES.values(), ids=CASES.keys())
def test_styles(text, expected):
    assert extract(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "On Monday we can meet at the office.\nBring the samples.",
        "谢谢，\n张三",  # "谢谢，" is a sentence here, not a signature marker
        "From: our side, everything is fine.\nRegards",
        "我想退订上周的订单，麻烦处理。",
        "Price: 12 USD\nTo: be confirmed",
        "Line one\n-- not a signature line\nLine three",
    ],
)
def test_plain_text_is_kept_whole(text):
    assert extract(text) == text


def test_all_quote_gives_empty():
    assert extract("> only\n> quoted\n") == ""


def test_empty():
    assert extract("") == ""


@pytest.mark.parametrize("path", LABELLED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_corpus_reply(path):
    expected = path.with_suffix(".expected.txt").read_text(encoding="utf-8").strip()
    assert parse(path.read_bytes()).reply == expected
