"""Regenerate the sample workspace's data: examples/customers.xlsx and examples/inbox/.

The files are committed; run this only to change them:
    python examples/make_sample.py
"""

from __future__ import annotations

import base64
import datetime as dt
from email.header import Header
from email.utils import format_datetime
from pathlib import Path

import openpyxl

HERE = Path(__file__).parent

HEADERS = ["客户名称", "邮箱", "公司", "阶段", "负责人邮箱", "电话", "签约日期", "备注"]
ROWS = [
    ["张伟", "zhang.wei@example.cn", "上海启明贸易有限公司", "潜在客户", "li.na@example.com", "13800138000", None, "展会名片"],
    ["王芳", "Wang.Fang@Example.cn", "杭州云帆科技", "意向", "li.na@example.com", "+86 138 0013 8001", None, ""],
    ["李强", "li.qiang@example.cn", "深圳华南电子", "报价", "chen.jie@example.com", "0755-86001234", None, "已发报价单"],
    ["刘洋", "liu.yang@example.cn", "北京远景咨询", "成交", "chen.jie@example.com", "13911112222", dt.date(2026, 3, 18), ""],
    ["陈静", "chen.jing@example.cn", "广州南方食品", "潜在客户", "li.na@example.com", "", None, "官网询盘"],
    ["杨磊", "yang.lei@example.cn", "成都天府物流", "意向", "zhou.min@example.com", "13688886666", None, ""],
    ["赵敏", "zhao.min@example.cn", "南京金陵制药", "成交", "zhou.min@example.com", "13577778888", "2026/05/20", "年框客户"],
    ["黄丽", "huang.li@example.cn", "武汉长江机械", "流失", "chen.jie@example.com", "", None, ""],
    ["周杰", "zhou.jie@example.cn", "西安古城文旅", "潜在客户", "zhou.min@example.com", "18600001111", None, ""],
    ["吴婷", "wu.ting@example.cn", "厦门海峡茶业", "意向", "li.na@example.com", "15900002222", None, ""],
    ["Emily Carter", "emily.carter@example.com", "Carter Logistics Ltd", "潜在客户", "li.na@example.com", "+44 20 7946 0018", None, "UK lead"],
    ["James Wilson", "j.wilson@example.com", "Wilson & Sons", "成交", "chen.jie@example.com", "+1 415 555 0134", "2026年6月1日", ""],
    ["Sophie Martin", "sophie.martin@example.com", "Martin Design SARL", "意向", "zhou.min@example.com", "", None, ""],
    ["Michael Brown", "m.brown@example.com", "Brown Trading Co.", "报价", "li.na@example.com", "+1 212 555 0199", None, ""],
    ["孙悦", "sun.yue@example.cn", "苏州园林建设", "潜在客户", "chen.jie@example.com", "13122223333", None, ""],
    ["郭峰", "guo.feng@example.cn", "青岛海洋渔业", "成交", "zhou.min@example.com", "13233334444", dt.date(2026, 9, 9), ""],
    ["何琳", "he.lin@example.cn", "长沙湘江传媒", "意向", "li.na@example.com", "", None, ""],
    ["Daniel Lee", "daniel.lee@example.com", "Lee Imports", "潜在客户", "chen.jie@example.com", "", None, ""],
    # Two rows that fail validation on purpose: an address without a domain, and a stage not in the list.
    ["王小明", "wang.xm@", "无锡小明五金", "潜在客户", "li.na@example.com", "", None, "邮箱写错了"],
    ["钱多多", "qian.dd@example.cn", "宁波多多外贸", "大客户", "zhou.min@example.com", "", None, "阶段不在列表中"],
    [None, None, None, None, None, None, None, None],
    ["马超", "ma.chao@example.cn", "合肥科大讯达", "潜在客户", "zhou.min@example.com", "13344445555", None, "空行之后"],
]


def make_sheet() -> None:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "客户"
    ws.append(HEADERS)
    for r in ROWS:
        ws.append(r)
    ws["I1"] = "跟进天数"
    ws["I2"] = "=TODAY()-DATE(2026,11,1)"
    notes = wb.create_sheet("说明")
    notes["A1"] = "此工作簿由 crm-automation 示例生成；“客户”表是客户主数据。"
    wb.save(HERE / "customers.xlsx")


def _msg(name: str, headers: list[tuple[str, str]], body: bytes, charset: str, when: dt.datetime,
         cte: str = "base64") -> None:
    lines = [f"{k}: {v}" for k, v in headers]
    lines += [f"Date: {format_datetime(when)}", "MIME-Version: 1.0",
              f"Content-Type: text/plain; charset={charset}", f"Content-Transfer-Encoding: {cte}"]
    payload = base64.encodebytes(body) if cte == "base64" else body
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + payload
    (HERE / "inbox" / "new" / name).write_bytes(data)


def h(text: str, charset: str = "utf-8") -> str:
    return Header(text, charset).encode()


def make_inbox() -> None:
    tz = dt.timezone(dt.timedelta(hours=8))
    (HERE / "inbox" / "new").mkdir(parents=True, exist_ok=True)
    _msg("1764200000.M1P1.sample", [
        ("From", f"{h('张伟')} <zhang.wei@example.cn>"), ("To", "sales@example.com"),
        ("Subject", h("回复：关于贵司产品报价")), ("Message-ID", "<sample-1@qq.example.cn>")],
        "您好，价格我们可以接受，请下周安排样品寄送。\n\n张伟\n\n"
        "------------------ 原始邮件 ------------------\n发件人: \"销售部\"<sales@example.com>;\n"
        "发送时间: 2026年11月20日(星期五) 上午10:00\n收件人: \"张伟\"<zhang.wei@example.cn>;\n"
        "主题: 关于贵司产品报价\n\n张总您好，附件是最新报价。\n".encode("gbk"), "gbk",
        dt.datetime(2026, 11, 21, 9, 30, tzinfo=tz))
    _msg("1764200100.M2P1.sample", [
        ("From", "Emily Carter <emily.carter@example.com>"), ("To", "sales@example.com"),
        ("Subject", "Re: Catalogue request"), ("Message-ID", "<sample-2@mail.example.com>"),
        ("In-Reply-To", "<older@example.com>")],
        b"Thanks, the catalogue arrived. Could you send prices for 500 units?\n\nBest,\nEmily\n\n"
        b"On Fri, Nov 20, 2026 at 10:00 AM Sales <sales@example.com> wrote:\n> Dear Emily,\n"
        b"> please find our catalogue attached.\n", "utf-8", dt.datetime(2026, 11, 22, 16, 5, tzinfo=tz),
        cte="7bit")
    _msg("1764200200.M3P1.sample", [
        ("From", f"{h('杨磊')} <yang.lei@example.cn>"), ("To", "sales@example.com"),
        ("Subject", h("自动回复：关于贵司产品报价")), ("Message-ID", "<sample-3@163.example.cn>"),
        ("Auto-Submitted", "auto-replied")],
        "您好，我正在休假，11月30日返回，急事请联系同事。\n".encode(), "utf-8",
        dt.datetime(2026, 11, 22, 8, 0, tzinfo=tz))
    _msg("1764200300.M4P1.sample", [
        ("From", f"{h('黄丽')} <huang.li@example.cn>"), ("To", "sales@example.com"),
        ("Subject", h("回复：年终优惠")), ("Message-ID", "<sample-4@126.example.cn>")],
        "退订\n\n发自我的iPhone\n".encode(), "utf-8", dt.datetime(2026, 11, 23, 12, 0, tzinfo=tz))
    _msg("1764200400.M5P1.sample", [
        ("From", f"{h('新客户 刘先生')} <mr.liu@newlead.example.cn>"), ("To", "sales@example.com"),
        ("Subject", h("咨询：批量采购办公家具")), ("Message-ID", "<sample-5@newlead.example.cn>")],
        "你好，我们公司想采购 200 套办公桌椅，请发一份报价和交货期。谢谢！\n刘先生 138-0000-9999\n".encode("gb18030"),
        "gb2312", dt.datetime(2026, 11, 24, 14, 20, tzinfo=tz))
    _msg("1764200500.M6P1.sample", [
        ("From", "Michael Brown <m.brown@example.com>"), ("To", "sales@example.com"),
        ("Subject", "RE: Quotation Q-2026-118"), ("Message-ID", "<sample-6@outlook.example.com>")],
        b"Hi,\r\n\r\nWe accept the quotation. PO to follow this week.\r\n\r\nRegards,\r\nMichael\r\n\r\n"
        b"-----Original Message-----\r\nFrom: Sales <sales@example.com>\r\nSent: Monday, November 23, 2026 9:00 AM\r\n"
        b"To: Michael Brown <m.brown@example.com>\r\nSubject: Quotation Q-2026-118\r\n\r\nDear Michael, ...\r\n",
        "us-ascii", dt.datetime(2026, 11, 25, 1, 15, tzinfo=dt.UTC), cte="7bit")


if __name__ == "__main__":
    make_sheet()
    make_inbox()
