"""Write the labelled inbound corpus: tests/data/eml/<kind>/<name>.eml.

Every message is invented and anonymised (example.com/.cn/.net/.org
domains), written to look like what each client really sends. Many need
exact bytes in legacy charsets (GBK labelled GB2312, Big5, raw 8-bit
headers), which is why they are generated rather than typed.

Expectations travel with the files:
- email_in / unsubscribe: ``<name>.expected.txt`` holds the newly written text.
- bounce: header ``X-Test-Expected-Failures: addr1=hard, addr2=soft`` names
  every failed recipient (lower-case) with its permanence (``hard``: Action
  failed + 5.x.x or a permanent refusal; ``soft``: Action failed + 4.x.x, the
  message is lost; ``delayed``: still retrying; issue #11), and, when the
  report returns the message (a message/rfc822 or text/rfc822-headers part),
  ``X-Test-Expected-Original: <message-id>``. The real-Postfix files
  (``bounce/postfix_*.eml`` listed in ``bounce/postfix_expected.json``, made
  by ``make_postfix_bounces.py``) are real bytes without these headers.
- quarantine: parsing must raise MessageError.

Run ``python tests/data/eml/make_corpus.py`` after changing a case; the
output files are committed. It writes only the files it generates (other
files in these folders, such as the real-Postfix corpus, are left alone).
"""

from __future__ import annotations

import base64
import quopri
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SALES = "Sales Team <sales@example.com>"
DATE = "Tue, 24 Nov 2026 10:15:00 +0800"

ENCODE_AS = {"gb2312": "gbk", "gbk": "gbk", "gb18030": "gb18030", "big5": "big5", "utf-8": "utf-8", "us-ascii": "utf-8"}


def encode(text: str, charset: str) -> bytes:
    return text.encode(ENCODE_AS.get(charset.lower(), "gbk"))


def word(text: str, charset: str = "utf-8", kind: str = "B") -> str:
    """An RFC 2047 encoded word."""
    data = encode(text, charset)
    if kind == "B":
        return f"=?{charset}?B?{base64.b64encode(data).decode()}?="
    q = quopri.encodestring(data, header=True).decode()
    return f"=?{charset}?Q?{q}?="


def body_bytes(text: str, charset: str, cte: str) -> bytes:
    data = encode(text.replace("\n", "\r\n"), charset)
    if cte == "base64":
        return base64.encodebytes(data).replace(b"\n", b"\r\n")
    if cte == "quoted-printable":
        return quopri.encodestring(data).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return data


def headers_bytes(headers: list[tuple[str, str | bytes]]) -> bytes:
    out = b""
    for name, value in headers:
        v = value if isinstance(value, bytes) else value.encode("ascii")
        out += name.encode() + b": " + v + b"\r\n"
    return out


def message(
    headers: list[tuple[str, str | bytes]],
    text: str,
    *,
    charset: str = "utf-8",
    cte: str = "base64",
    subtype: str = "plain",
) -> bytes:
    h = [*headers, ("MIME-Version", "1.0"), ("Content-Type", f'text/{subtype}; charset="{charset}"'),
         ("Content-Transfer-Encoding", cte)]
    return headers_bytes(h) + b"\r\n" + body_bytes(text, charset, cte)


def alternative(headers: list[tuple[str, str | bytes]], text: str, html: str, *, charset: str = "utf-8") -> bytes:
    b = "----=_Part_alt_0001"
    h = [*headers, ("MIME-Version", "1.0"), ("Content-Type", f'multipart/alternative; boundary="{b}"')]
    parts = b""
    for sub, content in (("plain", text), ("html", html)):
        parts += (f"--{b}\r\nContent-Type: text/{sub}; charset=\"{charset}\"\r\n"
                  "Content-Transfer-Encoding: base64\r\n\r\n").encode() + body_bytes(content, charset, "base64")
    return headers_bytes(h) + b"\r\n" + parts + f"--{b}--\r\n".encode()


def std(frm: str, subject: str, mid: str, *, to: str = SALES, date: str = DATE, extra: tuple = ()) -> list:
    return [("From", frm), ("To", to), ("Subject", subject), ("Date", date), ("Message-ID", f"<{mid}>"),
            ("In-Reply-To", "<c1.s1.k42@example.com>"), ("References", "<c1.s1.k42@example.com>"), *extra]


QQ_QUOTE = """

------------------ 原始邮件 ------------------
发件人: "Sales Team"<sales@example.com>;
发送时间: 2026年11月23日(星期一) 下午3:00
收件人: "王先生"<wang@qq.example.cn>;
主题: 关于2027年度报价

王先生您好，

附件是我们2027年度的报价单，请查收。

销售部
"""

OUTLOOK_EN_QUOTE = """

________________________________
From: Sales Team <sales@example.com>
Sent: Monday, November 23, 2026 3:00 PM
To: Alice Brown <alice@example.org>
Subject: Your quote for 2027

Dear Alice,

Please find our 2027 quote attached.

Kind regards,
Sales
"""

EMAIL_IN: dict[str, tuple[bytes, str]] = {}
UNSUB: dict[str, tuple[bytes, str]] = {}
AUTO: dict[str, bytes] = {}
BOUNCE: dict[str, bytes] = {}
QUARANTINE: dict[str, bytes] = {}
REPLY: dict[str, bytes] = {}


def add_in(name: str, raw: bytes, expected: str, target: dict | None = None) -> None:
    (EMAIL_IN if target is None else target)[name] = (raw, expected)


# ---------------------------------------------------------------- email_in

r = "王先生回复：报价收到，我们下周一开会讨论后给您答复。\n\n谢谢！"
add_in("qq_reply_gb18030", message(std(f"{word('王先生', 'gb18030')} <wang@qq.example.cn>",
       word("回复：关于2027年度报价", "gb18030"), "tencent_1A2B3C@qq.com",
       extra=(("X-Mailer", "QQMail 2.x"),)), r + QQ_QUOTE, charset="gb18030"), r)

r = "李总：\n样品已经收到，质量不错。喆哥说下周可以下单。"
add_in("foxmail_gb2312_label_gbk_qp", message(std(f"{word('李堃', 'gb2312')} <likun@foxmail.example.cn>",
       word("Re: 样品", "gb2312"), "202611241015327654321@foxmail.example.cn",
       extra=(("X-Mailer", "Foxmail 7.2.25.228[cn]"),)),
       r + "\n\n\n------------------ Original ------------------\nFrom:  \"Sales Team\"<sales@example.com>;\n"
       "Date:  Mon, Nov 23, 2026 03:00 PM\nTo:  \"李堃\"<likun@foxmail.example.cn>;\nSubject:  样品\n\n李总您好，样品已寄出。\n",
       charset="gb2312", cte="quoted-printable"), r)

r = "您好，价格可以接受，请发合同过来。"
add_in("163_reply_gbk_base64", message(std(f"{word('张三', 'gbk')} <zhangsan@163.example.cn>",
       word("Re:合同", "gbk"), "4c5d6e7f.1a2b.18c0000000a.Coremail.zhangsan@163.example.cn"),
       r + "\n\n\n\n\n\n在 2026-11-23 15:00:00，\"Sales Team\" <sales@example.com> 写道：\n>张先生您好，\n>\n>报价见附件。\n",
       charset="gbk"), r)

r = "收到，谢谢。我们会尽快安排付款。"
add_in("126_reply_wrapped", message(std("zhaoliu <zhaoliu@126.example.cn>", word("Re:付款通知", "gbk"),
       "1b2c3d4e.2a3b.18c0000000b.Coremail.zhaoliu@126.example.cn"),
       r + "\n\n在 2026-11-23 15:00:00，\"Sales Team\"\n<sales@example.com> 写道：\n> 赵先生您好，\n> 请安排付款。\n",
       charset="gbk"), r)

r = "好的，我周三有空。\n\n陈七"
add_in("126_original_divider", message(std("chenqi <chenqi@126.example.cn>", word("回复:拜访", "gbk"),
       "3c4d5e6f.3a4b.18c0000000c.Coremail.chenqi@126.example.cn"),
       r + "\n\n----- 原始邮件 -----\n发件人：\"Sales Team\" <sales@example.com>\n发送日期：2026-11-23 15:00\n"
       "收件人：chenqi@126.example.cn\n主题：拜访\n\n陈先生，下周方便拜访吗？\n", charset="gbk"), r)

r = "Hi,\n\nThanks for the quote. Could you also include shipping to Rotterdam?\n\nBest,\nAlice"
add_in("outlook_en_underscore", message(std("Alice Brown <Alice.Brown@Example.org>", "RE: Your quote for 2027",
       "DB9PR01MB1234ABCD@DB9PR01MB1234.eurprd01.prod.exchangelabs.example.com",
       extra=(("Thread-Topic", "Your quote for 2027"),)), r + OUTLOOK_EN_QUOTE, cte="quoted-printable"), r)

r = "您好，\n\n请把发票寄到新地址：上海市浦东新区世纪大道100号。"
add_in("outlook_zh_fullwidth_block", message(std(f"{word('孙经理', 'gb2312')} <sun@corp.example.cn>",
       word("答复: 发票", "gb2312"), "HK0PR01MB5678EF@HK0PR01MB5678.apcprd01.prod.example.com"),
       r + "\n\n发件人： Sales Team <sales@example.com>\n发送时间： 2026年11月23日 15:00\n收件人： 孙经理 <sun@corp.example.cn>\n"
       "主题： 发票\n\n孙经理您好，发票已开具。\n", charset="gb2312"), r)

r = "Please go ahead with the order.\n\nRegards,\nBob"
add_in("outlook_original_message", message(std("bob@example.net", "RE: Order 1042", "000001d9a1b2$c3d4e5f0$@example.net",
       extra=(("X-Mailer", "Microsoft Outlook 16.0"),)),
       r + "\n\n-----Original Message-----\nFrom: Sales Team <sales@example.com> \nSent: Monday, November 23, 2026 3:00 PM\n"
       "To: bob@example.net\nSubject: Order 1042\n\nHi Bob, shall we go ahead?\n", cte="7bit"), r)

r = "Thanks, that works for us. Let's talk on Friday."
add_in("gmail_en_alternative", alternative(std("Carol White <carol.white@gmail.example.com>", "Re: Meeting",
       "CAF=abc123+XyZ@mail.gmail.example.com"),
       r + "\n\nOn Mon, Nov 23, 2026 at 3:00 PM Sales Team <sales@example.com> wrote:\n\n> Hi Carol,\n> Does Friday suit you?\n>\n",
       f"<div dir=\"ltr\">{r}</div><br><div class=\"gmail_quote\"><div dir=\"ltr\" class=\"gmail_attr\">On Mon, Nov 23, 2026 at "
       "3:00 PM Sales Team &lt;<a href=\"mailto:sales@example.com\">sales@example.com</a>&gt; wrote:<br></div>"
       "<blockquote class=\"gmail_quote\">Hi Carol,<br>Does Friday suit you?</blockquote></div>"), r)

r = "Yes, please send the samples."
add_in("gmail_en_wrapped_header", message(std("Dan Green <dan@example.org>", "Re: Samples", "CAF=def456@mail.gmail.example.com"),
       r + "\n\nOn Mon, Nov 23, 2026 at 3:00 PM Sales Team from Example Company Limited <\nsales@example.com> wrote:\n\n"
       "> Dan, shall we send samples?\n", cte="quoted-printable"), r)

r = "没问题，周五见。"
add_in("gmail_zh_yu_xiedao", message(std(f"{word('周八')} <zhouba@gmail.example.com>", word("Re: 会议"),
       "CAG=zh001@mail.gmail.example.com"),
       r + "\n\nSales Team <sales@example.com> 于2026年11月23日周一 15:00写道：\n\n> 周先生，周五开会可以吗？\n"), r)

r = "好的，我把资料发给同事。"
add_in("gmail_zh_zai_wrapped", message(std(f"{word('吴九')} <wujiu@gmail.example.com>", word("Re: 资料"),
       "CAG=zh002@mail.gmail.example.com"),
       r + "\n\n在 2026年11月23日周一 下午3:00，Sales Team <\nsales@example.com> 写道：\n\n> 吴先生，资料请查收。\n"), r)

r = "Sounds good, see you then."
add_in("apple_mail_en", message(std("Erin Black <erin@example.org>", "Re: Visit", "1F2E3D4C-5B6A-7980-ABCD-EF0123456789@example.org",
       extra=(("X-Mailer", "Apple Mail (2.3774.200.91.1.1)"),)),
       r + "\n\n> On 23 Nov 2026, at 15:00, Sales Team <sales@example.com> wrote:\n> \n> Erin, can we visit on Thursday?\n> \n",
       cte="quoted-printable"), r)

r = "收到，马上处理"
add_in("iphone_zh_qq", message(std(f"{word('郑十')} <zhengshi@qq.example.cn>", word("回复：订单"),
       "tencent_9F8E7D@qq.com"), r + "\n\n\n发自我的iPhone" + QQ_QUOTE), r)

r = "Sounds good."
add_in("iphone_en", message(std("Frank Miller <frank@example.net>", "Re: Delivery date", "A1B2C3D4-iphone@example.net"),
       r + "\n\nSent from my iPhone\n\n> On Nov 23, 2026, at 3:00 PM, Sales Team <sales@example.com> wrote:\n>\n> Frank, delivery is on Monday.\n",
       cte="7bit"), r)

r = "好的，明天上午发货。"
add_in("iphone_zh_cong_wode", message(std(f"{word('钱一')} <qianyi@example.cn>", word("Re: 发货"), "iphone-zh-2@example.cn"),
       r + "\n\n从我的 iPhone 发送\n\n> 在 2026年11月23日，15:00，Sales Team <sales@example.com> 写道：\n>\n> 钱先生，什么时候发货？\n"), r)

r = "您好：\n報價已收到，我們下週回覆。\n\n林小姐"
add_in("big5_outlook_tw", message(std(f"{word('林小姐', 'big5')} <lin@example.com.tw>", word("回覆: 報價", "big5"),
       "TY0PR01MB9999@example.com.tw"),
       r + "\n\n寄件者: Sales Team <sales@example.com>\n寄件日期: 2026年11月23日 下午 03:00\n收件者: 林小姐 <lin@example.com.tw>\n"
       "主旨: 報價\n\n林小姐您好，報價如附件。\n", charset="big5"), r)

r = "谢谢😀，价格没问题，䶮总已经同意。"
add_in("gb18030_four_byte", message(std(f"{word('刘䶮', 'gb18030')} <liuyan@example.cn>", word("回复：价格", "gb18030"),
       "gb18030-4byte@example.cn"), r + QQ_QUOTE, charset="gb18030"), r)

r = "您好，请问交货期可以提前一周吗？"
add_in("rfc2047_q_subject_signature", message(std(f"\"{word('何经理', 'gb2312', 'Q')}\" <he@example.cn>",
       word("交货期咨询", "gb2312", "Q"), "rfc2047-q@example.cn"),
       r + "\n\n-- \n何经理\n采购部 | 示例贸易有限公司\n电话 021-00000000\n", charset="gb2312", cte="quoted-printable"), r)

r = "价格我们同意，合同下周签。"
add_in("raw_8bit_gbk_headers", message([("From", "冯先生 <feng@example.cn>".encode("gbk")), ("To", SALES),
       ("Subject", "回复: 合同".encode("gbk")), ("Date", DATE), ("Message-ID", "<raw8bit@example.cn>")],
       r, charset="gbk", cte="8bit"), r)

r = "你好，我们想订购五百件。"
add_in("unknown_charset_label", message(std(f"{word('陈先生')} <chen@example.cn>", word("订购"), "unknown-charset@example.cn"),
       r, charset="x-weird-charset", cte="base64"), r)
# The body above was encoded with GBK (ENCODE_AS fallback) under an unknown label.

r = "Thanks Sales team, we will confirm by Friday."
add_in("html_only_gmail", message(std("Grace Lee <grace@example.org>", "Re: Confirmation", "html-only-1@example.org"),
       "<html><body><div dir=\"ltr\">Thanks Sales team, we will confirm by <b>Friday</b>.<img src=\"cid:logo\"></div>"
       "<br><div class=\"gmail_quote\">On Mon, Nov 23, 2026 at 3:00 PM Sales Team &lt;<a href=\"mailto:sales@example.com\">"
       "sales@example.com</a>&gt; wrote:<br><blockquote>Hi Grace, can you confirm?<br>"
       "<a href=\"https://example.com/x\">Our site</a></blockquote></div></body></html>", subtype="html"), r)

r = "好的，样品我们收到了。"
add_in("html_only_qq_gb18030", message(std(f"{word('黄先生', 'gb18030')} <huang@qq.example.cn>", word("回复：样品", "gb18030"),
       "tencent_html@qq.com"),
       "<div>好的，样品我们收到了。</div><div><br></div><div style=\"font-size: 12px;\">------------------&nbsp;原始邮件&nbsp;"
       "------------------</div><div><b>发件人:</b>&nbsp;\"Sales Team\"&lt;sales@example.com&gt;;<br><b>发送时间:</b>&nbsp;"
       "2026年11月23日(星期一) 下午3:00<br><b>收件人:</b>&nbsp;\"黄先生\"&lt;huang@qq.example.cn&gt;;<br><b>主题:</b>&nbsp;样品"
       "</div><div>样品已寄出。</div>", charset="gb18030", subtype="html"), r)

r = "Hello,\n\nIs the blue model still available?\n\nThanks"
add_in("signature_dashdash_en", message(std("Henry Ford <henry@example.net>", "Blue model", "sig-en@example.net"),
       r + "\n-- \nHenry Ford\nPurchasing, Example Motors\n+1 555 0100\n", cte="7bit"), r)

r = "My answer: yes, 200 units."
add_in("bottom_post", message(std("ivy@example.org", "Re: Quantity", "bottom-post@example.org"),
       "On Mon, Nov 23, 2026 at 3:00 PM Sales Team <sales@example.com> wrote:\n> How many units do you need?\n\n" + r + "\n",
       cte="7bit"), r)

r = "Please call me tomorrow."
add_in("no_message_id", message([("From", "Jack <jack@example.net>"), ("To", SALES), ("Subject", "Call"), ("Date", DATE)],
       r, cte="7bit"), r)

r = "你好，我想退订上周的订单，麻烦帮我处理一下退款。订单号 20261117-008。"
add_in("order_cancel_tuiding", message(std(f"{word('马女士')} <ma@example.cn>", word("订单退订"), "order-cancel@example.cn"),
       r), r)

r = "我想退订上周的订单"
add_in("order_cancel_short", message(std(f"{word('马女士')} <ma@example.cn>", word("Re: 订单"), "order-cancel-2@example.cn"),
       r + QQ_QUOTE), r)

r = "Can you send the price list again?"
add_in("us_ascii_label_utf8_body", message(std("Kim <kim@example.org>", "Price list", "ascii-label@example.org"),
       r + "\n\n— Kim Müller", charset="us-ascii", cte="8bit"), r + "\n\n— Kim Müller")

r = "Noted, thanks. Will reply from the office."
add_in("outlook_mobile", message(std("Liam <liam@example.org>", "RE: Schedule", "outlook-ios@example.org"),
       r + "\n\nGet Outlook for iOS\n" + OUTLOOK_EN_QUOTE), r)

r = "We read your newsletter and would like a demo."
add_in("precedence_bulk_is_not_auto", message(std("Mia <mia@example.org>", "Re: November newsletter", "bulk-1@example.org",
       extra=(("Precedence", "bulk"), ("List-Id", "<customers.example.org>"))), r, cte="7bit"), r)

r = "Real answer from a person: we accept."
add_in("auto_submitted_no", message(std("Noah <noah@example.org>", "Re: Offer", "autosub-no@example.org",
       extra=(("Auto-Submitted", "no"),)), r, cte="7bit"), r)

# ---------------------------------------------------------------- unsubscribe

r = "TD"
add_in("td_qq", message(std(f"{word('客户')} <kehu1@qq.example.cn>", word("回复：双十二优惠"), "tencent_td@qq.com"),
       r + QQ_QUOTE), r, UNSUB)

r = "退订"
add_in("tuiding_gbk_163", message(std("user2 <user2@163.example.cn>", word("Re:双十二优惠", "gbk"),
       "unsub-163@163.example.cn"), r + "\n\n在 2026-11-23 15:00:00，\"Sales Team\" <sales@example.com> 写道：\n>优惠活动\n",
       charset="gbk"), r, UNSUB)

r = "退订，谢谢！"
add_in("tuiding_xiexie", message(std("user3 <user3@example.cn>", word("回复：活动"), "unsub-3@example.cn"),
       r + "\n\n发自我的iPhone" + QQ_QUOTE), r, UNSUB)

r = "取消订阅"
add_in("quxiao_dingyue", message(std("user4 <user4@126.example.cn>", word("回复:新品"), "unsub-4@126.example.cn"),
       r, charset="gb2312"), r, UNSUB)

r = "Please unsubscribe me."
add_in("please_unsubscribe_me", message(std("Olivia <olivia@example.org>", "RE: November offers", "unsub-5@example.org"),
       r + OUTLOOK_EN_QUOTE), r, UNSUB)

r = "unsubscribe"
add_in("unsubscribe_word", message(std("pat@example.net", "unsubscribe", "unsub-6@example.net"), r, cte="7bit"), r, UNSUB)

r = "T"
add_in("t_single_letter", message(std("user7 <user7@qq.example.cn>", word("回复：活动"), "unsub-7@qq.com"),
       r + QQ_QUOTE), r, UNSUB)

r = "Hello, I would like to stop receiving your marketing emails, and please also delete my data."
add_in("to_unsubscribe_address", message(std("Quinn <quinn@example.org>", "remove", "unsub-8@example.org",
       to="unsubscribe@example.com"), r, cte="7bit"), r, UNSUB)

add_in("empty_body_subject_unsubscribe", message(std("rose@example.org", "Unsubscribe", "unsub-9@example.org"),
       "", cte="7bit"), "", UNSUB)

# ---------------------------------------------------------------- auto_reply

AUTO["auto_submitted_ooo"] = message(std("Sam <sam@example.org>", "Out of Office: Re: Offer", "ooo-1@example.org",
    extra=(("Auto-Submitted", "auto-replied"),)), "I am out of the office until 1 December.", cte="7bit")
AUTO["exchange_automatic_reply"] = message(std("Tina <tina@example.org>", "Automatic reply: Your quote for 2027",
    "ooo-2@example.org", extra=(("X-Auto-Response-Suppress", "All"), ("X-MS-Exchange-Inbox-Rules-Loop", "tina@example.org"))),
    "Thank you for your email. I am on leave and will reply after my return." + OUTLOOK_EN_QUOTE, cte="quoted-printable")
AUTO["exchange_zh_zidong_dafu"] = message(std(f"{word('周经理', 'gb2312')} <zhou@corp.example.cn>",
    word("自动答复: 关于2027年度报价", "gb2312"), "ooo-3@corp.example.cn", extra=(("X-Auto-Response-Suppress", "All"),)),
    "您好，我正在出差，12月1日回来后回复您。", charset="gb2312")
AUTO["qq_holiday_body"] = message(std(f"{word('王先生', 'gb18030')} <wang@qq.example.cn>", word("Re:关于2027年度报价", "gb18030"),
    "tencent_holiday@qq.com"), "这是一封自动回复邮件。您好，我最近正在休假中，无法亲自回复您的邮件。我将在假期结束后，尽快给您回复。",
    charset="gb18030")
AUTO["qq_holiday_bracket_subject"] = message(std("user8 <user8@qq.example.cn>", word("【自动回复】Re: 报价"),
    "tencent_holiday2@qq.com"), "您好，邮件已收到，我会尽快回复。")
AUTO["x_autoreply_yes"] = message(std("Uma <uma@example.org>", "Re: Offer", "xauto-1@example.org",
    extra=(("X-Autoreply", "yes"),)), "Thanks for your message. I will be back soon.", cte="7bit")
AUTO["x_autorespond"] = message(std("Victor <victor@example.net>", "Re: Offer", "xauto-2@example.net",
    extra=(("X-Autorespond", "Re: Offer"),)), "Your message has been received.", cte="7bit")
AUTO["precedence_auto_reply"] = message(std("Wendy <wendy@example.net>", "Re: Offer", "prec-1@example.net",
    extra=(("Precedence", "auto_reply"),)), "I am travelling this week.", cte="7bit")
AUTO["subject_auto_colon_notes"] = message(std("Xavier <xavier@example.net>", "Auto: Your quote for 2027", "notes-1@example.net"),
    "I am out of the office until 30/11/2026.", cte="7bit")
AUTO["163_zidong_huifu_gbk"] = message(std("user9 <user9@163.example.cn>", word("自动回复：关于2027年度报价", "gbk"),
    "auto-163@163.example.cn"), "您好，您的邮件我已收到，会尽快处理。", charset="gbk")
AUTO["xiujia_subject"] = message(std("user10 <user10@example.cn>", word("休假中：Re: 报价"), "xiujia@example.cn"),
    "本人休假至12月5日。")
AUTO["auto_submitted_generated"] = message(std("system <noreply@example.org>", "Ticket #4411 received",
    "ticket-4411@example.org", extra=(("Auto-Submitted", "auto-generated"),)), "We received your request.", cte="7bit")

# Out-of-office replies WITHOUT auto-reply headers (issue #17): no Auto-Submitted, X-Autoreply,
# X-Auto-Response-Suppress or Precedence; only their subjects and words say what they are (a gateway
# stripped the headers, or a person's mail rule sent a plain message). Judged against reply/ (replies
# that merely mention a holiday, leave or the office), in tests/unit/test_out_of_office.py.

AUTO["ooo_outlook_automatic_reply_stripped"] = message(std("Tom Lane <tom.lane@example.org>",
    "Automatic reply: Your quote for 2027", "ooo-strip-1@example.org"),
    "Thank you for your email. I am currently out of the office until 5 January 2027 with limited access to "
    "email.\n\nFor urgent matters please contact Tom Deputy (tom.deputy@example.org).\n\nI will respond to your "
    "message upon my return.", cte="quoted-printable")
AUTO["ooo_qq_zidong_huifu_colon"] = message(std(f"{word('王先生', 'gb18030')} <wang2@qq.example.cn>",
    word("自动回复: Re: 关于2027年度报价", "gb18030"), "tencent_ooo_3@qq.com"),
    "您好，邮件已收到。我最近正在休假中，1月3日后回复您。", charset="gb18030")
AUTO["ooo_en_currently_out_of_office"] = message(std("Peter Hall <peter.hall@example.net>", "Re: Your quote for 2027",
    "ooo-body-1@example.net"),
    "Hello,\n\nI am currently out of office and will be back on Monday, 7 December. I will reply to your email "
    "as soon as I return.\n\nBest regards,\nPeter", cte="7bit")
AUTO["ooo_en_annual_leave"] = message(std("Grace Kim <grace.kim@example.org>", "Re: Samples", "ooo-body-2@example.org"),
    "Hi,\n\nI'm on annual leave from 21 December to 4 January with no access to email. For anything urgent, "
    "please contact sales-support@example.net.\n\nThanks,\nGrace", cte="7bit")
AUTO["ooo_en_out_of_the_office_until"] = message(std("Henry Ford <h.ford@example.com.au>", "RE: Offer",
    "ooo-body-3@example.com.au"),
    "I will be out of the office until 30 November. If your matter is urgent, please call +61 2 5550 0000.",
    cte="7bit")
AUTO["ooo_en_parental_leave"] = message(std("Ines Berg <ines@example.de>", "Re: Catalogue 2027", "ooo-body-4@example.de"),
    "Thank you for your message. I’m currently on parental leave and won’t be checking my email until March "
    "2027. Please contact my colleague Anna (anna@example.de) in the meantime.")
AUTO["ooo_en_company_closed_holidays"] = message(std("Example Trading <info@trading.example.co.uk>",
    "RE: Order 1042", "ooo-body-5@trading.example.co.uk"),
    "Thank you for contacting Example Trading.\n\nOur office is closed for the Christmas holidays from 24 December "
    "to 2 January. We will answer your email when we reopen on 3 January.\n\nSeason's greetings!", cte="7bit")
AUTO["ooo_en_travelling_limited_access"] = message(std("Jack Moss <jack@example.net>", "Re: Meeting",
    "ooo-body-6@example.net"),
    "I am travelling on business until 12 December with limited access to email. I will get back to you on my "
    "return.\n\nJack", cte="7bit")
AUTO["ooo_en_subject_out_of_office"] = message(std("Kate Price <kate@example.org>",
    "Out of Office: Re: Your quote for 2027", "ooo-subj-1@example.org"),
    "I am out of the office with no email access. I will return on Monday.", cte="7bit")
AUTO["ooo_en_html_only_outlook"] = message(std("Liam Hart <liam@example.com>", "RE: Catalogue", "ooo-html-1@example.com"),
    "<html><body><p>Hello,</p><p>I am currently out of office until 8 December and will have limited access to "
    "my emails.</p><p>Kind regards,<br>Liam</p></body></html>", subtype="html", cte="quoted-printable")
AUTO["ooo_en_this_is_an_automatic_reply"] = message(std("Mia Wong <mia@example.com.sg>", "Re: Offer",
    "ooo-self-1@example.com.sg"),
    "This is an automatic reply. Thank you for your email; it will be read when I am back on 2 December.",
    cte="7bit")
AUTO["ooo_zh_xiujia_qijian"] = message(std(f"{word('李经理', 'gbk')} <li.jl@corp.example.cn>", word("Re: 报价", "gbk"),
    "ooo-zh-1@corp.example.cn"),
    "您好！\n\n我于1月20日至2月5日春节休假，休假期间无法及时回复邮件，紧急事务请联系张经理（电话 138 0000 0000）。\n\n谢谢！",
    charset="gbk")
AUTO["ooo_zh_bu_zai_bangongshi"] = message(std(f"{word('孙总')} <sun.z@example.cn>", word("回复：样品"),
    "ooo-zh-2@example.cn"),
    "您好，本人目前不在办公室，将于12月10日返回。如有急事请致电 021-5555 0000。")
AUTO["ooo_zh_waichu"] = message(std(f"{word('周先生', 'gb18030')} <zhou.x@163.example.cn>", word("Re:合同", "gb18030"),
    "ooo-zh-3@163.example.cn"), "您好，我正在外出，无法及时查看邮件，回来后第一时间回复您。", charset="gb18030")
AUTO["ooo_zh_chuchai_guowai"] = message(std(f"{word('吴经理')} <wu@example.cn>", word("Re: 关于2027年度报价"),
    "ooo-zh-4@example.cn"),
    "您好，我目前在国外出差，邮件查看不及时，12月8日回国后尽快回复您。如有急事请打我手机。")
AUTO["ooo_zh_chunjie_fangjia"] = message(std(f"{word('示例贸易', 'gbk')} <service@trade.example.cn>",
    word("Re: 订单", "gbk"), "ooo-zh-5@trade.example.cn"),
    "春节放假通知：我司于2027年2月1日至2月10日放假，放假期间邮件将延迟处理，节后尽快回复，敬请谅解。", charset="gbk")
AUTO["ooo_zh_subject_waichu_tag"] = message(std(f"{word('郑女士')} <zheng@example.cn>", word("【外出】Re: 报价"),
    "ooo-zh-6@example.cn"), "您好，本人外出期间无法及时回复邮件，返回后将尽快处理。")
AUTO["ooo_zh_big5_xiujia"] = message(std(f"{word('陳小姐', 'big5')} <chen@example.com.tw>", word("回覆: 報價", "big5"),
    "ooo-tw-1@example.com.tw"), "您好，我目前休假中，將於12月7日返回辦公室，屆時會盡快回覆您。", charset="big5")

# ---------------------------------------------------------------- reply
#
# Replies that mention a holiday, leave, the office or an auto-reply, and are still replies (issue #17):
# the other half of the out-of-office judgement (tests/unit/test_out_of_office.py).

REPLY["after_spring_festival_order"] = message(std("Alice Brown <alice.b@example.org>", "Re: Your quote for 2027",
    "rep-hol-1@example.org"),
    "Hi,\n\nafter the 春节 holiday we would like to order 500 units. Please send the proforma invoice.\n\nAlice")
REPLY["was_out_of_office_last_week"] = message(std("Bob Stone <bob.s@example.net>", "RE: Quote", "rep-hol-2@example.net"),
    "I was out of office last week, sorry — yes, please send the quote.")
REPLY["sorry_late_was_on_annual_leave"] = message(std("Carl Webb <carl@example.org>", "Re: Offer", "rep-hol-3@example.org"),
    "Sorry for the late reply, I was on annual leave. The price is fine, please go ahead.", cte="7bit")
REPLY["out_of_office_next_week_send_by_friday"] = message(std("Dana Cole <dana@example.com>", "Re: Samples",
    "rep-hol-4@example.com"),
    "I'll be out of the office next week, so please send the samples by Friday.", cte="7bit")
REPLY["colleague_on_annual_leave_until"] = message(std("Eve Adams <eve@example.co.uk>", "RE: Order 1042",
    "rep-hol-5@example.co.uk"),
    "Our purchasing manager is on annual leave until 5 January, so I'm handling the order. Please send the PI to "
    "me.\n\nEve", cte="7bit")
REPLY["office_closed_ship_before"] = message(std("Fred Lin <fred@example.com.au>", "Re: Shipping", "rep-hol-6@example.com.au"),
    "Thanks! Our office will be closed from 24 December, so please ship before then. Happy holidays!", cte="7bit")
REPLY["my_auto_reply_was_still_on"] = message(std("Gina Holt <gina@example.org>", "Re: Offer", "rep-hol-7@example.org"),
    "Sorry, my auto-reply was still on yesterday. I'm back now: yes, we accept the offer.", cte="7bit")
REPLY["back_from_vacation_order_more"] = message(std("Hugo Reyes <hugo@example.net>", "Re: Samples", "rep-hol-8@example.net"),
    "Thanks, we just got back from vacation. The samples arrived and the quality is good. Please send 200 more.",
    cte="7bit")
REPLY["zh_shangzhou_xiujia"] = message(std(f"{word('冯先生', 'gbk')} <feng@example.cn>", word("Re: 报价", "gbk"),
    "rep-zh-1@example.cn"), "我上周在休假，刚看到邮件。报价没问题，请安排发货。", charset="gbk")
REPLY["zh_jiehou_queren"] = message(std(f"{word('陈女士')} <chen.ns@example.cn>", word("回复：订单"), "rep-zh-2@example.cn"),
    "春节假期后我们再确认订单数量，先谢谢您。")
REPLY["zh_xiazhou_waichu"] = message(std(f"{word('蒋总')} <jiang@example.cn>", word("Re: 合同"), "rep-zh-3@example.cn"),
    "我下周外出，请周五前把合同发给我。")
REPLY["zh_jingli_xiujia_wo_fuze"] = message(std(f"{word('韩女士', 'gb18030')} <han@corp.example.cn>",
    word("答复: 形式发票", "gb18030"), "rep-zh-4@corp.example.cn"),
    "我们采购经理休假到1月5日，这期间由我负责，请把形式发票发给我。", charset="gb18030")
REPLY["zh_guoqing_fahuo"] = message(std(f"{word('杨先生')} <yang@example.cn>", word("Re: 发货"), "rep-zh-5@example.cn"),
    "国庆放假前请把货发出，我们10月8日上班后验收。")
REPLY["zh_zai_bangongshi"] = message(std(f"{word('朱经理')} <zhu@example.cn>", word("Re: 合同细节"), "rep-zh-6@example.cn"),
    "我明天在办公室，随时可以打电话过来谈合同细节。")
REPLY["zh_zidong_huifu_wufa"] = message(std(f"{word('秦女士', 'gbk')} <qin@example.cn>", word("回复：合同", "gbk"),
    "rep-zh-7@example.cn"), "不好意思，昨天的自动回复是误发的，我没有休假。合同我已经签好了，今天寄出。", charset="gbk")
REPLY["zh_nianjia_jieshu_xiadan"] = message(std(f"{word('许先生')} <xu@example.cn>", word("Re: 样品"), "rep-zh-8@example.cn"),
    "年假结束了，今天回来上班。样品收到，质量很好，下周下单。")
REPLY["zh_big5_jiaqi_hou"] = message(std(f"{word('黃先生', 'big5')} <huang@example.com.tw>", word("回覆: 報價", "big5"),
    "rep-tw-1@example.com.tw"), "報價收到，假期後我們會下單，請先保留庫存。", charset="big5")

# ---------------------------------------------------------------- bounce
#
# Each file declares what it expects (see the module docstring): every failed recipient with its
# permanence, and the Message-ID of the bounced message when the report returns it. The formats
# follow RFC 3464 (DSN), RFC 3463 (enhanced status codes) and what each server really writes.

PERMANENCE = ("hard", "soft", "delayed")
QUOTE_DATE = "Mon, 23 Nov 2026 15:00:00 +0800"


def expect(failures: dict[str, str], original: str | None = None) -> list[tuple[str, str]]:
    """The expectation headers: ``X-Test-Expected-Failures`` and, if quoted, ``X-Test-Expected-Original``."""
    bad = {a: p for a, p in failures.items() if p not in PERMANENCE}
    if bad or not failures:
        msg = f"expected failures {failures!r}: each needs one of {PERMANENCE}"
        raise ValueError(msg)
    out = [("X-Test-Expected-Failures", ", ".join(f"{a.lower()}={p}" for a, p in failures.items()))]
    if original:
        out.append(("X-Test-Expected-Original", original))
    return out


def original_headers(to: str, mid: str = "c1.s1.k42@example.com", subject: str = "Your quote for 2027") -> str:
    """The headers of the message we sent (CRLF lines, no blank line)."""
    return (f"From: Sales Team <sales@example.com>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{mid}>\r\nDate: {QUOTE_DATE}")


def original(to: str, mid: str = "c1.s1.k42@example.com", subject: str = "Your quote for 2027") -> str:
    """The message we sent, as returned inside a bounce."""
    return original_headers(to, mid, subject) + "\r\n\r\nHello!\r\n"


def dsn(name: str, *, frm: str, subject: str, rcpt: str, action: str, status: str, notice: str, expected: str,
        diagnostic: str, extra: tuple = ()) -> None:
    b = "B0UND4RY.1764000000/mx.example.net"
    head = headers_bytes([("From", frm), ("To", "sales@example.com"), ("Subject", subject), ("Date", DATE),
                          ("Message-ID", f"<{name}@mx.example.net>"), ("Auto-Submitted", "auto-replied"), *extra,
                          *expect({rcpt: expected}, "<c1.s1.k42@example.com>"),
                          ("MIME-Version", "1.0"),
                          ("Content-Type", f'multipart/report; report-type=delivery-status; boundary="{b}"')])
    body = (f"This is a MIME-encapsulated message.\r\n\r\n--{b}\r\nContent-Description: Notification\r\n"
            f"Content-Type: text/plain; charset=us-ascii\r\n\r\n{notice}\r\n\r\n--{b}\r\n"
            "Content-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n"
            "Reporting-MTA: dns; mx.example.net\r\nArrival-Date: Mon, 23 Nov 2026 15:00:01 +0800\r\n\r\n"
            f"Final-Recipient: rfc822; {rcpt}\r\nOriginal-Recipient: rfc822;{rcpt}\r\nAction: {action}\r\n"
            f"Status: {status}\r\nDiagnostic-Code: smtp; {diagnostic}\r\n\r\n--{b}\r\n"
            "Content-Description: Undelivered Message Headers\r\nContent-Type: text/rfc822-headers\r\n\r\n"
            + original_headers(rcpt) + f"\r\n\r\n--{b}--\r\n")
    BOUNCE[name] = head + b"\r\n" + body.encode()


dsn("postfix_permanent", frm="MAILER-DAEMON@mx.example.net (Mail Delivery System)",
    subject="Undelivered Mail Returned to Sender", rcpt="bob.unknown@example.net", action="failed", status="5.1.1",
    expected="hard", diagnostic="550 5.1.1 <bob.unknown@example.net>: Recipient address rejected: User unknown",
    notice="This is the mail system at host mx.example.net.\r\n\r\nI'm sorry to have to inform you that your message could not\r\n"
           "be delivered to one or more recipients. It's attached below.\r\n\r\n                   The mail system\r\n\r\n"
           "<bob.unknown@example.net>: host mx2.example.net[192.0.2.10] said: 550 5.1.1\r\n    User unknown (in reply to RCPT TO command)")
dsn("postfix_delayed", frm="MAILER-DAEMON@mx.example.net (Mail Delivery System)",
    subject="Delayed Mail (still being retried)", rcpt="slow@example.org", action="delayed", status="4.4.1",
    expected="delayed", diagnostic="451 4.4.1 connection timed out",
    notice="This is the mail system at host mx.example.net.\r\n\r\n####################################################\r\n"
           "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\r\n"
           "####################################################\r\n\r\nYour message could not be delivered for more than 4 hour(s).\r\n"
           "It will be retried until it is 5 day(s) old.")
dsn("exchange_ndr", frm="postmaster@corp.example.com", subject="Undeliverable: Your quote for 2027",
    rcpt="Erin.Gone@Corp.Example.com", action="failed", status="5.1.10", expected="hard",
    diagnostic="smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
    notice="Your message to Erin.Gone@Corp.Example.com couldn't be delivered.\r\n\r\nErin.Gone wasn't found at corp.example.com.\r\n\r\n"
           "Remote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup'",
    extra=(("X-MS-Exchange-Message-Is-Ndr", ""),))
dsn("gmail_permanent", frm="Mail Delivery Subsystem <mailer-daemon@googlemail.example.com>",
    subject="Delivery Status Notification (Failure)", rcpt="nobody123@example.org", action="failed", status="5.1.1",
    expected="hard", diagnostic="smtp; 550-5.1.1 The email account that you tried to reach does not exist.",
    notice="** Address not found **\r\n\r\nYour message wasn't delivered to nobody123@example.org because the address couldn't be "
           "found, or is unable to receive mail.\r\n\r\nThe response from the remote server was:\r\n550 5.1.1 The email account that "
           "you tried to reach does not exist.")
dsn("gmail_delay", frm="Mail Delivery Subsystem <mailer-daemon@googlemail.example.com>",
    subject="Delivery Status Notification (Delay)", rcpt="busy@example.org", action="delayed", status="4.7.0",
    expected="delayed", diagnostic="smtp; 421 4.7.0 Try again later",
    notice="** Message not delivered yet **\r\n\r\nThere was a temporary problem delivering your message to busy@example.org. "
           "Gmail will retry for 46 more hours. You'll be notified if the delivery fails permanently.")


def plain_bounce(name: str, headers: list, text: str, failures: dict[str, str], *, charset: str = "us-ascii",
                 cte: str = "7bit", subtype: str = "plain", attach_original: bool = True,
                 original_to: str | None = None, original_id: str = "c1.s1.k42@example.com") -> None:
    """A notice without DSN structure: one text part, or text + the returned message (message/rfc822)."""
    hs = [*headers, ("To", "sales@example.com"), ("Date", DATE), ("Message-ID", f"<{name}@bounce.example.net>"),
          *expect(failures, f"<{original_id}>" if attach_original else None)]
    if not attach_original:
        BOUNCE[name] = message(hs, text, charset=charset, cte=cte, subtype=subtype)
        return
    b = "----=_NextPart_bounce_01"
    head = headers_bytes([*hs, ("MIME-Version", "1.0"), ("Content-Type", f'multipart/mixed; boundary="{b}"')])
    to = original_to or ", ".join(failures)
    body = (f"--{b}\r\nContent-Type: text/{subtype}; charset=\"{charset}\"\r\nContent-Transfer-Encoding: {cte}\r\n\r\n".encode()
            + body_bytes(text, charset, cte)
            + f"\r\n--{b}\r\nContent-Type: message/rfc822\r\n\r\n{original(to, original_id)}\r\n--{b}--\r\n".encode())
    BOUNCE[name] = head + b"\r\n" + body


plain_bounce("exim_permanent", [("From", "Mail Delivery System <Mailer-Daemon@mail.example.org>"),
             ("Subject", "Mail delivery failed: returning message to sender"), ("X-Failed-Recipients", "carol.x@example.org"),
             ("Auto-Submitted", "auto-replied")],
             "This message was created automatically by mail delivery software.\n\nA message that you sent could not be "
             "delivered to one or more of its\nrecipients. This is a permanent error. The following address(es) failed:\n\n"
             "  carol.x@example.org\n    SMTP error from remote mail server after RCPT TO:<carol.x@example.org>:\n"
             "    550 5.1.1 User unknown\n\n------ This is a copy of the message, including all the headers. ------\n",
             {"carol.x@example.org": "hard"}, attach_original=False)
plain_bounce("exim_delay_warning", [("From", "Mail Delivery System <Mailer-Daemon@mail.example.org>"),
             ("Subject", "Warning: message 1tAbCd-000123-4x delayed 24 hours"), ("Auto-Submitted", "auto-replied")],
             "This message was created automatically by mail delivery software.\nA message that you sent has not yet been "
             "delivered to one or more of its\nrecipients after more than 24 hours on the queue on mail.example.org.\n\n"
             "The message identifier is:     1tAbCd-000123-4x\nThe subject of the message is: Your quote for 2027\n\n"
             "The address to which the message has not yet been delivered is:\n\n  dave.slow@example.org\n"
             "    host mx.example.org [192.0.2.20]: 451 4.7.1 Greylisted, try again later\n\n"
             "No action is required on your part. Delivery attempts will continue for\nsome time, and this warning may be "
             "repeated at intervals if the message\nremains undelivered. Eventually the mail delivery software will give up,\n"
             "and when that happens, the message will be returned to you.\n", {"dave.slow@example.org": "delayed"},
             attach_original=False)
plain_bounce("exchange_legacy_text_ndr", [("From", "System Administrator <postmaster@corp.example.com>"),
             ("Subject", "Undeliverable: Your quote for 2027")],
             "Your message did not reach some or all of the intended recipients.\n\n      Subject:\tYour quote for 2027\n"
             "      Sent:\t11/23/2026 3:00 PM\n\nThe following recipient(s) cannot be reached:\n\n"
             "      'Old.Contact@corp.example.com' on 11/23/2026 3:00 PM\n"
             "            550 5.1.1 <Old.Contact@corp.example.com>... User unknown\n",
             {"old.contact@corp.example.com": "hard"})
plain_bounce("qq_bounce_html", [("From", f"{word('腾讯邮件系统', 'gb18030')} <PostMaster@qq.example.cn>"),
             ("Subject", word("退信：Your quote for 2027", "gb18030"))],
             "<div><b>很抱歉您发送的邮件被退回，以下是该邮件的相关信息：</b></div><table><tr><td>被退回的邮件：</td>"
             "<td>Your quote for 2027</td></tr><tr><td>时　　间：</td><td>2026年11月23日(星期一) 下午3:00</td></tr>"
             "<tr><td>收 件 人：</td><td>ghost88@qq.example.cn</td></tr></table><div><b>无法发送到 ghost88@qq.example.cn</b></div>"
             "<div>退信原因：收件人邮箱地址不存在 (550 Mailbox not found)</div>",
             {"ghost88@qq.example.cn": "hard"}, charset="gb18030", cte="base64", subtype="html")
plain_bounce("163_system_bounce", [("From", "Postmaster@163.example.cn"), ("Subject", word("系统退信", "gbk"))],
             "您好！\n\n您发送到 nosuch@163.example.cn 的邮件被退回。\n\n收件人：nosuch@163.example.cn\n"
             "退信原因：收件人不存在 (550 User not found: nosuch@163.example.cn)\n\n"
             "建议解决方案：请检查收件人地址是否正确。\n", {"nosuch@163.example.cn": "hard"}, charset="gbk", cte="base64")
# "系统将继续尝试投递": the server is still retrying, so a delay.
plain_bounce("163_temporary", [("From", "Postmaster@163.example.cn"), ("Subject", word("系统退信：投递延迟", "gbk"))],
             "您好！\n\n您的邮件暂时无法投递到 later@example.cn，系统将继续尝试投递。\n\n"
             "原因：对方服务器暂时不可用 (451 Temporary failure, please try again later)\n",
             {"later@example.cn": "delayed"}, charset="gbk", cte="base64", attach_original=False)

# -- issue #11: several recipients, Action failed + 4.x.x, notices without DSN structure

# Exim's classic text bounce (no DSN part): two addresses, the first refused at RCPT with 5.1.1,
# the second given up after its retry timeout (no status given: lost, taken as hard). Exim copies
# the message into the text, so no returned part and no expected original.
plain_bounce("exim_multi_recipient", [("From", "Mail Delivery System <Mailer-Daemon@mx1.hosting.example.net>"),
             ("Subject", "Mail delivery failed: returning message to sender"),
             ("X-Failed-Recipients", "henry.left@example.org, iris@oldhost.example.net"),
             ("Auto-Submitted", "auto-replied")],
             "This message was created automatically by mail delivery software.\n\n"
             "A message that you sent could not be delivered to one or more of its\n"
             "recipients. This is a permanent error. The following address(es) failed:\n\n"
             "  henry.left@example.org\n"
             "    host mx.example.org [192.0.2.25]\n"
             "    SMTP error from remote mail server after RCPT TO:<henry.left@example.org>:\n"
             "    550 5.1.1 <henry.left@example.org>: Recipient address rejected: User unknown in virtual mailbox table\n"
             "  iris@oldhost.example.net\n"
             "    retry timeout exceeded\n\n"
             "------ This is a copy of the message, including all the headers. ------\n\n"
             "Return-path: <sales@example.com>\n"
             "Received: from [198.51.100.7] (helo=client.example.com)\n"
             "\tby mx1.hosting.example.net with esmtpsa (Exim 4.96)\n"
             "\t(envelope-from <sales@example.com>)\n"
             "\tid 1tAbCe-0004Ab-7y;\n"
             "\tMon, 23 Nov 2026 15:00:00 +0800\n"
             "From: Sales Team <sales@example.com>\n"
             "To: henry.left@example.org, iris@oldhost.example.net\n"
             "Subject: Your quote for 2027\n"
             "Message-ID: <c1.s1.k43@example.com>\n"
             f"Date: {QUOTE_DATE}\n\n"
             "Hello!\n",
             {"henry.left@example.org": "hard", "iris@oldhost.example.net": "hard"}, attach_original=False)

# qmail-send's "failure notice": one paragraph per address, the copy after "--- Below this line".
plain_bounce("qmail_multi_recipient", [("From", "MAILER-DAEMON@smtp.hosting.example.net"), ("Subject", "failure notice")],
             "Hi. This is the qmail-send program at smtp.hosting.example.net.\n"
             "I'm afraid I wasn't able to deliver your message to the following addresses.\n"
             "This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
             "<jack.old@example.net>:\n"
             "192.0.2.30 does not like recipient.\n"
             "Remote host said: 550 5.1.1 <jack.old@example.net>: Recipient address rejected: User unknown in local recipient table\n"
             "Giving up on 192.0.2.30.\n\n"
             "<kate@nohost.example.org>:\n"
             "Sorry, I couldn't find any host named nohost.example.org. (#5.1.2)\n\n"
             "--- Below this line is a copy of the message.\n\n"
             "Return-Path: <sales@example.com>\n"
             "Received: (qmail 31337 invoked by uid 89); 23 Nov 2026 07:00:01 -0000\n"
             "Received: from unknown (HELO client.example.com) (198.51.100.7)\n"
             "  by smtp.hosting.example.net with SMTP; 23 Nov 2026 07:00:01 -0000\n"
             "From: Sales Team <sales@example.com>\n"
             "To: jack.old@example.net, kate@nohost.example.org\n"
             "Subject: Your quote for 2027\n"
             "Message-ID: <c1.s1.k44@example.com>\n"
             f"Date: {QUOTE_DATE}\n\n"
             "Hello!\n",
             {"jack.old@example.net": "hard", "kate@nohost.example.org": "hard"}, attach_original=False)


def report(name: str, headers: list, parts: list[str], failures: dict[str, str], original_id: str | None,
           *, boundary: str) -> None:
    """An RFC 3464 multipart/report written part by part (each part: its headers, a blank line, its body)."""
    head = headers_bytes([*headers, ("To", "sales@example.com"), *expect(failures, original_id and f"<{original_id}>"),
                          ("MIME-Version", "1.0"),
                          ("Content-Type", f'multipart/report; report-type=delivery-status; boundary="{boundary}"')])
    body = "This is a MIME-encapsulated message\r\n\r\n"
    for part in parts:
        body += f"--{boundary}\r\n" + part.replace("\r\n", "\n").replace("\n", "\r\n") + "\r\n"
    BOUNCE[name] = head + b"\r\n" + (body + f"--{boundary}--\r\n").encode()


# Exchange / Office 365: one NDR for two recipients. One refused (5.1.1), one whose copy expired in
# the queue: Action failed + Status 4.4.7 -- lost, so soft. Exchange writes "550 4.4.7
# QUEUE.Expired": the enhanced status (4.4.7), not the 550 reply code, is what counts (RFC 3463).
EXCHANGE_TEXT = (
    "Delivery has failed to these recipients or groups:\n\n"
    "liam.gone@corp.example.net<mailto:liam.gone@corp.example.net>\n"
    "The email address you entered couldn't be found. Please check the recipient's email address and try to "
    "resend the message. If the problem continues, please contact your helpdesk.\n\n"
    "Mia Chen (Mia.Chen@Partner.Example.org)<mailto:Mia.Chen@Partner.Example.org>\n"
    "The recipient's email system didn't accept the message in the time allowed. The message expired and "
    "was not delivered. Please try to resend the message later.\n\n\n\n\n\n"
    "Diagnostic information for administrators:\n\n"
    "Generating server: AM0PR01MB1234.eurprd01.prod.outlook.example.com\n\n"
    "liam.gone@corp.example.net\n"
    "Remote Server returned '550 5.1.1 <liam.gone@corp.example.net>: Recipient address rejected: User unknown'\n\n"
    "Mia.Chen@Partner.Example.org\n"
    "Remote Server returned '550 4.4.7 QUEUE.Expired; message expired'\n\n"
    "Original message headers:\n\n"
    "Received: from AM0PR01MB5678.eurprd01.prod.outlook.example.com (2001:db8::5678) by\n"
    " AM0PR01MB1234.eurprd01.prod.outlook.example.com with HTTPS; Mon, 23 Nov 2026 07:00:01 +0000\n"
    "From: Sales Team <sales@example.com>\n"
    "To: liam.gone@corp.example.net, Mia Chen <Mia.Chen@Partner.Example.org>\n"
    "Subject: Your quote for 2027\n"
    "Message-ID: <c2.s1.k77@example.com>\n"
)
report("exchange_multi_recipient_4_4_7",
       [("From", "Microsoft Outlook <postmaster@example.onmicrosoft.example.com>"),
        ("Subject", "Undeliverable: Your quote for 2027"), ("Date", "Sat, 28 Nov 2026 07:01:12 +0000"),
        ("Message-ID", "<4f1e2d3c-5b6a-4789-90ab-cdef01234567@AM0PR01MB1234.eurprd01.prod.outlook.example.com>"),
        ("Content-Language", "en-US"), ("X-MS-Exchange-Message-Is-Ndr", ""), ("Auto-Submitted", "auto-replied")],
       ['Content-Type: multipart/alternative; boundary="_001_ndr_alt_"\n\n'
        "--_001_ndr_alt_\nContent-Type: text/plain; charset=\"us-ascii\"\n\n" + EXCHANGE_TEXT + "\n"
        "--_001_ndr_alt_\nContent-Type: text/html; charset=\"us-ascii\"\n\n"
        "<html><body><p><b><font color=\"#000066\">Delivery has failed to these recipients or groups:</font></b></p>"
        "<p><a href=\"mailto:liam.gone@corp.example.net\">liam.gone@corp.example.net</a><br>The email address you "
        "entered couldn't be found.</p><p><a href=\"mailto:Mia.Chen@Partner.Example.org\">Mia Chen "
        "(Mia.Chen@Partner.Example.org)</a><br>The recipient's email system didn't accept the message in the time "
        "allowed. The message expired and was not delivered.</p></body></html>\n"
        "--_001_ndr_alt_--\n",
        "Content-Type: message/delivery-status\n\n"
        "Reporting-MTA: dns;AM0PR01MB1234.eurprd01.prod.outlook.example.com\n"
        "Received-From-MTA: dns;AM0PR01MB5678.eurprd01.prod.outlook.example.com\n"
        "Arrival-Date: Mon, 23 Nov 2026 07:00:01 +0000\n\n"
        "Original-Recipient: rfc822;liam.gone@corp.example.net\n"
        "Final-Recipient: rfc822;liam.gone@corp.example.net\n"
        "Action: failed\n"
        "Status: 5.1.1\n"
        "Diagnostic-Code: smtp;550 5.1.1 <liam.gone@corp.example.net>: Recipient address rejected: User unknown\n"
        "Remote-MTA: dns;mx.corp.example.net\n\n"
        "Original-Recipient: rfc822;Mia.Chen@Partner.Example.org\n"
        "Final-Recipient: rfc822;Mia.Chen@Partner.Example.org\n"
        "Action: failed\n"
        "Status: 4.4.7\n"
        "Diagnostic-Code: smtp;550 4.4.7 QUEUE.Expired; message expired\n"
        "X-Display-Name: Mia Chen\n",
        "Content-Type: message/rfc822\n\n"
        + original_headers("liam.gone@corp.example.net, Mia Chen <Mia.Chen@Partner.Example.org>",
                           "c2.s1.k77@example.com").replace("\r\n", "\n")
        + "\n\nHello!\n"],
       {"liam.gone@corp.example.net": "hard", "mia.chen@partner.example.org": "soft"}, "c2.s1.k77@example.com",
       boundary="_000_ndr_report_AM0PR01MB1234_")

# Office 365, one recipient: "Delivery has failed ... message expired" (Action failed, 4.4.7).
# The returned part is text/rfc822-headers, as Exchange sends for large originals.
report("exchange_expired_4_4_7",
       [("From", "Microsoft Outlook <postmaster@example.onmicrosoft.example.com>"),
        ("Subject", "Undeliverable: Your quote for 2027"), ("Date", "Sat, 28 Nov 2026 07:05:40 +0000"),
        ("Message-ID", "<8a7b6c5d-4e3f-4a1b-9c8d-7e6f5a4b3c2d@DB9PR01MB4321.eurprd01.prod.outlook.example.com>"),
        ("Content-Language", "en-US"), ("X-MS-Exchange-Message-Is-Ndr", ""), ("Auto-Submitted", "auto-replied")],
       ["Content-Type: text/plain; charset=\"us-ascii\"\n\n"
        "Delivery has failed to these recipients or groups:\n\n"
        "nina@far.example.org<mailto:nina@far.example.org>\n"
        "The destination server for this recipient didn't respond in time, and the message expired. "
        "It was not delivered.\n\n\n\n\n\n"
        "Diagnostic information for administrators:\n\n"
        "Generating server: DB9PR01MB4321.eurprd01.prod.outlook.example.com\n\n"
        "nina@far.example.org\n"
        "Remote Server returned '550 4.4.7 QUEUE.Expired; message expired'\n",
        "Content-Type: message/delivery-status\n\n"
        "Reporting-MTA: dns;DB9PR01MB4321.eurprd01.prod.outlook.example.com\n"
        "Received-From-MTA: dns;DB9PR01MB8765.eurprd01.prod.outlook.example.com\n"
        "Arrival-Date: Mon, 23 Nov 2026 07:00:03 +0000\n\n"
        "Original-Recipient: rfc822;nina@far.example.org\n"
        "Final-Recipient: rfc822;nina@far.example.org\n"
        "Action: failed\n"
        "Status: 4.4.7\n"
        "Diagnostic-Code: smtp;550 4.4.7 QUEUE.Expired; message expired\n",
        "Content-Type: text/rfc822-headers\n\n"
        "Received: from DB9PR01MB8765.eurprd01.prod.outlook.example.com (2001:db8::8765) by\n"
        " DB9PR01MB4321.eurprd01.prod.outlook.example.com with HTTPS; Mon, 23 Nov 2026 07:00:03 +0000\n"
        + original_headers("Nina <nina@far.example.org>", "c3.s1.k10@example.com").replace("\r\n", "\n")
        + "\nMIME-Version: 1.0\nContent-Type: text/plain; charset=\"utf-8\"\n"],
       {"nina@far.example.org": "soft"}, "c3.s1.k10@example.com", boundary="_000_ndr_report_DB9PR01MB4321_")

# Sendmail gives up after its queue lifetime: Action failed + Status 4.4.1 (no answer from the
# host) -- lost, so soft, though its text says "permanent fatal errors" and "Deferred".
# Sendmail writes the first part without headers (text/plain by default).
report("sendmail_expired_4_4_1",
       [("From", "Mail Delivery Subsystem <MAILER-DAEMON@mail.example.com>"),
        ("Subject", "Returned mail: Cannot send message for 5 days"), ("Date", "Sat, 28 Nov 2026 15:05:13 +0800"),
        ("Message-ID", "<202611280705.4AS75D1x012345@mail.example.com>"),
        ("Auto-Submitted", "auto-generated (failure)")],
       ["\nThe original message was received at Mon, 23 Nov 2026 15:00:01 +0800\n"
        "from client.example.com [198.51.100.7]\n\n"
        "   ----- The following addresses had permanent fatal errors -----\n"
        "<noah@down.example.org>\n"
        "    (reason: Connection timed out)\n\n"
        "   ----- Transcript of session follows -----\n"
        "<noah@down.example.org>... Deferred: Connection timed out with mx.down.example.org.\n"
        "Message could not be delivered for 5 days\n"
        "Message will be deleted from queue\n",
        "Content-Type: message/delivery-status\n\n"
        "Reporting-MTA: dns; mail.example.com\n"
        "Received-From-MTA: DNS; client.example.com\n"
        "Arrival-Date: Mon, 23 Nov 2026 15:00:01 +0800\n\n"
        "Final-Recipient: RFC822; noah@down.example.org\n"
        "Action: failed\n"
        "Status: 4.4.1\n"
        "Remote-MTA: DNS; mx.down.example.org\n"
        "Last-Attempt-Date: Sat, 28 Nov 2026 15:05:12 +0800\n",
        "Content-Type: text/rfc822-headers\n\n"
        "Return-Path: <sales@example.com>\n"
        "Received: from client.example.com (client.example.com [198.51.100.7])\n"
        "\tby mail.example.com (8.17.1/8.17.1) with ESMTP id 4AN7011x012345\n"
        "\tfor <noah@down.example.org>; Mon, 23 Nov 2026 15:00:01 +0800\n"
        + original_headers("noah@down.example.org", "c1.s2.k42@example.com",
                           "Follow-up: your quote for 2027").replace("\r\n", "\n") + "\n"],
       {"noah@down.example.org": "soft"}, "c1.s2.k42@example.com",
       boundary="4AS75D1x012345.1764313513/mail.example.com")

# Free-text notices without DSN structure (issue #11, rule 5): a postmaster-like sender or a
# failure subject, and a text that names our recipient next to a failure phrase.
plain_bounce("free_text_could_not_be_delivered",
             [("From", "postmaster@mail.partner.example.org"), ("Subject", "Mail could not be delivered")],
             "This message was created automatically by the mail system at mail.partner.example.org.\n\n"
             "Your message could not be delivered to the following recipient:\n\n"
             "    olivia.b@partner.example.org\n\n"
             "Reason: the mailbox has been disabled and no longer accepts mail.\n\n"
             "Your original message is attached.\n",
             {"olivia.b@partner.example.org": "hard"}, original_id="c1.s1.k45@example.com")
plain_bounce("free_text_delivery_warning",
             [("From", "Mail Delivery System <mailsystem@relay.example.net>"), ("Subject", "Mail Delivery Warning"),
              ("Auto-Submitted", "auto-generated")],
             "This is an automatically generated message from relay.example.net.\n\n"
             "THIS IS A WARNING MESSAGE ONLY.\nYOU DO NOT NEED TO RESEND YOUR MESSAGE.\n\n"
             "Delivery to the following recipient has been delayed:\n\n"
             "    victor.p@slow.example.net\n\n"
             "Reason: 421 4.4.2 mx.slow.example.net: Connection timed out\n\n"
             "The server will keep trying to deliver your message for another 4 days.\n",
             {"victor.p@slow.example.net": "delayed"}, attach_original=False)
# "Automatically rejected mail" carries Auto-Submitted: auto-replied, yet it is a refusal: a bounce.
plain_bounce("automatically_rejected_mail",
             [("From", "Postmaster <postmaster-noreply@mx.partner.example.net>"), ("Subject", "Automatically rejected mail"),
              ("Auto-Submitted", "auto-replied")],
             "This is an automatically generated message from mx.partner.example.net.\n\n"
             "Your message to uma.k@partner.example.net has been rejected:\n\n"
             "    550 5.7.1 <uma.k@partner.example.net>: Recipient address rejected: "
             "mail from external senders is not accepted\n\n"
             f"    Subject: Your quote for 2027\n    Date: {QUOTE_DATE}\n\n"
             "The message has not been delivered. Please contact the recipient by other means.\n",
             {"uma.k@partner.example.net": "hard"}, attach_original=False)
# sina.com-style Chinese notice (GBK): 系统退信, the recipient on its own line, reason 用户不存在, no code.
plain_bounce("sina_system_bounce",
             [("From", f"{word('系统退信', 'gbk')} <MAILER-DAEMON@sina.example.cn>"), ("Subject", word("系统退信", "gbk"))],
             "您好！\n\n"
             "您于 2026年11月23日 15:00 发送的邮件《Your quote for 2027》未能成功投递到以下收件人：\n\n"
             "<sam.w@sina.example.cn>\n"
             "退信原因：用户不存在 (User unknown)\n\n"
             "请核实收件人地址后重新发送。\n\n"
             "------------------------------\n"
             "此邮件由新浪邮件系统发出，请勿直接回复。\n",
             {"sam.w@sina.example.cn": "hard"}, charset="gbk", cte="base64", original_id="c1.s1.k46@example.com")
# Yahoo's "Failure Notice": plain text, the copy after "--- Below this line".
plain_bounce("yahoo_failure_notice",
             [("From", "MAILER-DAEMON@yahoo.example.com"), ("Subject", "Failure Notice")],
             "Sorry, we were unable to deliver your message to the following address.\n\n"
             "<quinn.x@yahoo.example.com>:\n"
             "554: delivery error: dd This user doesn't have a yahoo.com account (quinn.x@yahoo.example.com) [0] - "
             "mta1042.mail.ne1.yahoo.example.com\n\n"
             "--- Below this line is a copy of the message.\n\n"
             "Received: from [198.51.100.7] by mta1042.mail.ne1.yahoo.example.com with NNFMP; 23 Nov 2026 07:00:02 -0000\n"
             "From: Sales Team <sales@example.com>\n"
             "To: quinn.x@yahoo.example.com\n"
             "Subject: Your quote for 2027\n"
             "Message-ID: <c1.s1.k47@example.com>\n"
             f"Date: {QUOTE_DATE}\n\n"
             "Hello!\n",
             {"quinn.x@yahoo.example.com": "hard"}, attach_original=False)
# An old SMTP32 (Ipswitch IMail) / Netscape-era "Undeliverable mail" notice.
plain_bounce("smtp32_undeliverable_mail",
             [("From", "postmaster@mail.widgets.example.net"), ("Subject", "Undeliverable mail"),
              ("X-Mailer", "<SMTP32 v8.22>")],
             "Unknown user: rachel@widgets.example.net\n\n"
             "RCPT TO generated following response:\n"
             "550 5.1.1 Unknown user rachel@widgets.example.net\n\n"
             "Original message follows.\n\n"
             "Received: from client.example.com [198.51.100.7] by mail.widgets.example.net\n"
             "  (SMTPD32-8.22) id A1B2C3D400E4; Mon, 23 Nov 2026 15:00:03 +0800\n"
             "From: Sales Team <sales@example.com>\n"
             "To: rachel@widgets.example.net\n"
             "Subject: Your quote for 2027\n"
             "Message-ID: <c1.s1.k48@example.com>\n"
             f"Date: {QUOTE_DATE}\n\n"
             "Hello!\n",
             {"rachel@widgets.example.net": "hard"}, attach_original=False)

# -- negatives next to the bounce rules

# A customer writing that a parcel was returned (退回): a failure subject and a failure phrase next
# to an address, but a person's reply, not a bounce. warehouse@ is a contact in our sheet too.
r = ("您好，\n\n我们寄给贵司的样品包裹因收件地址不详被快递退回了（运单号 SF1234567890）。\n"
     "请把正确的收货地址发到 warehouse@shop.example.cn，我们收到后马上重新寄出。\n\n谢谢！\n何小姐")
add_in("parcel_returned_tuihui", message(std(f"{word('何小姐')} <he.xiaojie@shop.example.cn>",
       word("Re: 样品包裹退回 / Your parcel was returned"), "parcel-returned@shop.example.cn"), r), r)

# A "left the company" auto-reply: Auto-Submitted, "not forwarded", another address -- an auto-reply.
AUTO["left_company_not_forwarded"] = message(std("Tom Baker <tom.baker@example.org>", "Automatic reply: Your quote for 2027",
    "ooo-left@example.org", extra=(("Auto-Submitted", "auto-replied"), ("X-Auto-Response-Suppress", "All"))),
    "I have left Example Org. This mailbox is no longer monitored and your message has not been forwarded.\n\n"
    "Please contact my colleague tom.deputy@example.org instead.", cte="7bit")

# A successful-delivery DSN (Postfix "Successful Mail Delivery Report", Action relayed, 2.0.0): no failure.
AUTO["dsn_relayed_success"] = (
    headers_bytes([("From", "MAILER-DAEMON@mx.example.net (Mail Delivery System)"), ("To", "sales@example.com"),
                   ("Subject", "Successful Mail Delivery Report"), ("Date", DATE),
                   ("Message-ID", "<dsn-relayed@mx.example.net>"), ("Auto-Submitted", "auto-replied"),
                   ("MIME-Version", "1.0"),
                   ("Content-Type", 'multipart/report; report-type=delivery-status; boundary="R3LAY.1764000000/mx.example.net"')])
    + b"\r\n" + (
        "This is a MIME-encapsulated message.\r\n\r\n--R3LAY.1764000000/mx.example.net\r\n"
        "Content-Description: Notification\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        "This is the mail system at host mx.example.net.\r\n\r\nYour message was successfully delivered to the destination(s)\r\n"
        "listed below. If the message was delivered to mailbox you will\r\nreceive no further notifications. Otherwise you may "
        "still receive\r\nnotifications of mail delivery errors from other systems.\r\n\r\n                   The mail system\r\n\r\n"
        "<wendy@example.org>: delivery via mx.example.org[192.0.2.40]:25: 250 2.0.0 Ok:\r\n    queued as 4ABC1234DE\r\n\r\n"
        "--R3LAY.1764000000/mx.example.net\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.net\r\nArrival-Date: Mon, 23 Nov 2026 15:00:01 +0800\r\n\r\n"
        "Final-Recipient: rfc822; wendy@example.org\r\nOriginal-Recipient: rfc822;wendy@example.org\r\nAction: relayed\r\n"
        "Status: 2.0.0\r\nRemote-MTA: dns; mx.example.org\r\nDiagnostic-Code: smtp; 250 2.0.0 Ok: queued as 4ABC1234DE\r\n\r\n"
        "--R3LAY.1764000000/mx.example.net\r\nContent-Description: Message Headers\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        + original_headers("wendy@example.org") + "\r\n\r\n--R3LAY.1764000000/mx.example.net--\r\n").encode())

# ---------------------------------------------------------------- quarantine


def nested(depth: int) -> bytes:
    head = "From: deep@example.net\r\nTo: sales@example.com\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"
    out = head
    for i in range(depth):
        out += f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'
    out += "Content-Type: text/plain\r\n\r\nhi\r\n"
    for i in reversed(range(depth)):
        out += f"--b{i}--\r\n"
    return out.encode()


def many_parts(n: int) -> bytes:
    out = ("From: parts@example.net\r\nTo: sales@example.com\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
           'Content-Type: multipart/mixed; boundary="p"\r\n\r\n')
    for i in range(n):
        out += f"--p\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n"
    return (out + "--p--\r\n").encode()


QUARANTINE["deep_nesting"] = nested(40)
QUARANTINE["too_many_parts"] = many_parts(260)
QUARANTINE["not_an_email_binary"] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10" + bytes(range(256)) * 4
QUARANTINE["not_an_email_text"] = "这不是一封邮件，只是一段文字。\nJust some text.\n".encode()
QUARANTINE["no_from_no_body"] = b"Subject: nothing\r\nDate: Tue, 24 Nov 2026 10:15:00 +0800\r\n\r\n"
QUARANTINE["empty"] = b""


def generated() -> dict[Path, bytes]:
    """Every file this script writes, path -> bytes."""
    out: dict[Path, bytes] = {}
    for kind, table in (("email_in", EMAIL_IN), ("unsubscribe", UNSUB)):
        for name, (raw, expected) in table.items():
            out[HERE / kind / f"{name}.eml"] = raw
            out[HERE / kind / f"{name}.expected.txt"] = (expected + "\n").encode("utf-8")
    for kind, table2 in (("auto_reply", AUTO), ("bounce", BOUNCE), ("quarantine", QUARANTINE), ("reply", REPLY)):
        for name, raw in table2.items():
            out[HERE / kind / f"{name}.eml"] = raw
    return out


def main() -> int:
    """Write the generated files, and only those.

    Other files in these folders are not ours to delete: the real-Postfix
    corpus (``bounce/postfix_*.eml``, ``bounce/postfix_expected.json``,
    written by make_postfix_bounces.py) lives there too. Files left from a
    renamed or removed case are listed, for the author to delete by hand.
    """
    files = generated()
    for path, raw in files.items():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(raw)
    kinds = ("email_in", "unsubscribe", "auto_reply", "bounce", "quarantine", "reply")
    others = sorted(p for kind in kinds for p in (HERE / kind).iterdir() if p not in files and not p.name.startswith("postfix_"))
    for path in others:
        sys.stdout.write(f"not generated here, left alone: {path.relative_to(HERE)}\n")
    total = sum(map(len, (EMAIL_IN, UNSUB, AUTO, BOUNCE, QUARANTINE, REPLY)))
    sys.stdout.write(f"wrote {total} messages\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
