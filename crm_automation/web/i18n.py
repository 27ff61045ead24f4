"""The web app's two languages, zh-CN and en (issue #19 item 10): which one a request gets, and the UI strings.

The choice, first match wins: ``?lang=zh-CN`` / ``?lang=en`` (the switch in
the page header), then the ``lang`` cookie that switch leaves on team pages,
then the browser's ``Accept-Language`` (RFC 9110 §12.5.4: the tags by their
``q`` weight; ``zh``, ``zh-CN``, ``zh-Hans``, ``zh-TW`` all count as Chinese,
since the team reads simplified Chinese and a zh-TW browser reads it too),
then English. Public pages (the unsubscribe confirmation) honour ``?lang=``
for that request only: they set no cookie.

One catalog per language, keyed by a short English name. A key missing from
the Chinese catalog falls back to English, and a key missing from both shows
as itself, so a forgotten string is visible in the page rather than an error.
Strings are plain text; the templates escape them like any other value.
"""

from __future__ import annotations

from collections.abc import Mapping

LANGUAGES = ("zh-CN", "en")
DEFAULT = "en"
COOKIE = "lang"

EN: dict[str, str] = {
    "app_name": "crm-automation",
    "nav_dashboard": "Dashboard",
    "nav_attention": "Needs attention",
    "nav_customers": "Customers",
    "nav_health": "Health",
    "logout": "Log out",
    "login_title": "Log in",
    "login_user": "User name",
    "login_password": "Password",
    "login_submit": "Log in",
    "login_failed": "Wrong user name or password.",
    "login_throttled": "Too many failed logins from your address. Wait a minute and try again.",
    "login_none_configured": ("No login is configured: set [serve] users or admin_password_env in config.toml "
                              "(see the README)."),
    "dashboard_title": "Dashboard",
    "unsub_title": "Unsubscribe",
    "unsub_question": "Stop receiving these emails?",
    "unsub_explain": "Press the button to unsubscribe. You will not receive our marketing emails any more.",
    "unsub_button": "Unsubscribe",
    "unsub_done": "You are unsubscribed.",
    "unsub_done_explain": "We will not send you our marketing emails any more.",
    "unsub_already": "You were already unsubscribed.",
    "unsub_undo": "I did not mean to: subscribe me again",
    "unsub_resubscribed": "You are subscribed again.",
    "unsub_not_this_link": ("This address was unsubscribed another way, so it cannot be undone here. Reply to our "
                            "email if you want our emails again."),
    "unsub_failed": "We could not unsubscribe this address here. Reply to our email with \"unsubscribe\" instead.",
    "not_found": "Not found.",
    "too_many": "Too many requests. Wait a minute and try again.",
    "forbidden": "This form has expired. Go back, reload the page and try again.",
    "lang_switch": "中文",
    # the team pages (web/pages.py)
    "funnel_title": "Campaigns: sends and what came after",
    "funnel_explain": ("The same numbers as `crm-automation report`. Bounced, replied and unsubscribed count customers "
                       "who did so after the send; reply rate = replied / sent."),
    "funnel_empty": "Nothing sent or queued yet.",
    "col_campaign": "Campaign",
    "col_step": "Step",
    "col_queued": "Queued",
    "col_sending": "Sending",
    "col_sent": "Sent",
    "col_failed": "Failed",
    "col_uncertain": "Uncertain",
    "col_skipped": "Skipped",
    "col_bounced": "Bounced",
    "col_replied": "Replied",
    "col_unsubscribed": "Unsubscribed",
    "col_clicked": "Clicked",
    "col_reply_rate": "Reply rate",
    "charts_title": "The last 30 days",
    "charts_explain": "Per day, every campaign; days in the time zone",
    "chart_sent_per_day": "Sent per day",
    "chart_responses_per_day": "Replies, bounces, unsubscribes and clicks per day",
    "attention_sends": "Sends to decide on",
    "attention_sends_explain": ("Uncertain: the worker cannot tell whether the message reached the server (check the "
                                "Sent folder first). Failed: the server refused it. Requeue sends it again at the "
                                "next send pass."),
    "attention_sends_none": "No uncertain or failed sends.",
    "attention_quarantine": "Quarantined messages",
    "attention_quarantine_explain": ("Incoming messages the worker could not understand, kept whole. Download one to "
                                     "open it in your mail program."),
    "attention_quarantine_none": "No quarantined messages.",
    "attention_more": "Only the newest are shown.",
    "attention_replies": "Recent replies",
    "attention_replies_since": "Replies logged since",
    "attention_replies_none": "No replies in this period.",
    "customer": "Customer",
    "status": "Status",
    "problem": "Problem",
    "received": "Received",
    "from": "From",
    "source": "Source",
    "size": "Bytes",
    "download_eml": "Download .eml",
    "requeue": "Requeue",
    "status_queued": "queued",
    "status_sending": "sending",
    "status_sent": "sent",
    "status_failed": "failed",
    "status_uncertain": "uncertain",
    "status_skipped": "skipped",
    "search": "Search",
    "search_placeholder": "Name, company or email address",
    "search_none": "No customer matches.",
    "search_more": "More customers match: refine the search.",
    "name": "Name",
    "company": "Company",
    "key": "Key",
    "email_status": "Email status",
    "email_status_ok": "ok",
    "email_status_bounced": "bounced",
    "email_status_unsubscribed": "unsubscribed",
    "not_in_sheet": "(no longer in the sheet)",
    "suppression": "Suppression",
    "suppressed_because": "Suppressed:",
    "not_suppressed": "Not suppressed",
    "reason_manual": "by hand",
    "reason_unsubscribed": "unsubscribed",
    "reason_bounced": "bounced",
    "reason_soft_bounces": "repeated soft bounces",
    "suppress": "Suppress this address",
    "unsuppress": "Take off the suppression list",
    "timeline": "Timeline",
    "timeline_empty": "Nothing logged yet.",
    "kind_email_in": "reply",
    "kind_email_out": "sent",
    "kind_auto_reply": "auto-reply",
    "kind_bounce": "bounce",
    "kind_unsubscribe": "unsubscribe",
    "kind_customer_added": "added",
    "kind_field_changed": "changed",
    "kind_send_failed": "send failed",
    "kind_customer_removed": "removed",
    "kind_click": "click",
    "kind_open": "open",
    "kind_resubscribe": "subscribed again",
    "kind_reply_out": "our reply",
    "customer_unknown": "No such customer",
    "health_stages": "Stages: last run",
    "health_no_runs": "No stage has run yet.",
    "health_queue": "Queue",
    "health_at": "As of",
    "stage": "Stage",
    "started": "Started",
    "finished": "Finished",
    "result": "Result",
    "last_ok": "Last good run",
    "problems": "Problems and counts",
    "stage_sync": "Sync (sheet)",
    "stage_fetch": "Fetch (mailbox)",
    "stage_send": "Send",
    "stage_writeback": "Write-back (sheet)",
    "stage_rekey": "Re-key",
    "stage_recover": "Recovery (sends left after a crash)",
    "run_ok": "ok",
    "run_failed": "failed",
    "run_unfinished": "running or interrupted",
    "queue_due": "Queued, due now",
    "queue_waiting": "Queued, waiting for a retry",
    "flash_requeued": "Queued again; it goes out at the next send pass",
    "flash_requeue_nothing": "Nothing was queued again",
    "flash_requeue_bad_id": "Not a send number",
    "flash_write_failed": "Not saved",
    "flash_suppressed": "Suppressed",
    "flash_suppress_nothing": "Nothing changed",
    "flash_unsuppressed": "Taken off the suppression list",
    "flash_unsuppress_nothing": "It was not on the list",
    # the pipeline page (issue #21): the same numbers as `report pipeline --json`
    "nav_pipeline": "Pipeline",
    "pipeline_explain": ("The same numbers as `crm-automation report pipeline`. Stale: quiet longer than "
                         "[stale_after_days] allows for the stage. Days in stage: since the customer entered their "
                         "current stage. Replies: replies and enquiries of the last 30 days."),
    "pipeline_empty": "No customers in the log yet.",
    "pipeline_owners": "Owners, last 30 days",
    "pipeline_owners_explain": ("First response: from a customer's mail to our first answer (a reply from the Sent "
                                "folder naming it, or any later email of ours), in working hours; the median."),
    "pipeline_since": "Moves since",
    "pipeline_show": "Show",
    "pipeline_bad_since": "Not a date in the past (expected e.g. 2026-11-01).",
    "pipeline_funnel": "Customers who entered each stage",
    "pipeline_moves": "Moves between stages",
    "pipeline_no_moves": "No stage changes in this period.",
    "col_owner": "Owner",
    "col_customers": "Customers",
    "col_stale": "Stale",
    "col_median_days": "Median days in stage",
    "col_replies_30d": "Replies (30 days)",
    "col_answered": "Answered",
    "col_unanswered": "Not answered yet",
    "col_first_response": "Median first response (working hours)",
    "col_entered": "Entered",
    "col_added": "Of them new",
    "col_from": "From",
    "col_to": "To",
    "col_moves": "Moves",
    "value_none": "(none)",
}

ZH: dict[str, str] = {
    "nav_dashboard": "概览",
    "nav_attention": "待处理",
    "nav_customers": "客户",
    "nav_health": "运行状态",
    "logout": "退出登录",
    "login_title": "登录",
    "login_user": "用户名",
    "login_password": "密码",
    "login_submit": "登录",
    "login_failed": "用户名或密码错误。",
    "login_throttled": "您的地址登录失败次数过多，请一分钟后再试。",
    "login_none_configured": ("尚未配置登录账号：请在 config.toml 中设置 [serve] users 或 admin_password_env"
                              "（见 README）。"),
    "dashboard_title": "概览",
    "unsub_title": "退订",
    "unsub_question": "不再接收这些邮件？",
    "unsub_explain": "点击下面的按钮即可退订，之后您将不再收到我们的营销邮件。",
    "unsub_button": "退订",
    "unsub_done": "您已成功退订。",
    "unsub_done_explain": "我们不会再给您发送营销邮件。",
    "unsub_already": "您之前已经退订。",
    "unsub_undo": "我点错了：重新订阅",
    "unsub_resubscribed": "您已重新订阅。",
    "unsub_not_this_link": "该地址是通过其他方式退订的，无法在此撤销。如需重新接收我们的邮件，请回复我们的邮件。",
    "unsub_failed": "无法在此退订该地址。请回复我们的邮件，内容写“退订”。",
    "not_found": "页面不存在。",
    "too_many": "请求过于频繁，请一分钟后再试。",
    "forbidden": "表单已过期。请返回、刷新页面后重试。",
    "lang_switch": "English",
    # the team pages (web/pages.py)
    "funnel_title": "营销活动：发送情况与后续反馈",
    "funnel_explain": ("与 `crm-automation report` 的数字相同。退信、回复、退订统计的是发送之后出现这些情况的客户数；回"
                       "复率 = 回复 / 已发送。"),
    "funnel_empty": "还没有已发送或排队的邮件。",
    "col_campaign": "活动",
    "col_step": "步骤",
    "col_queued": "排队中",
    "col_sending": "发送中",
    "col_sent": "已发送",
    "col_failed": "失败",
    "col_uncertain": "不确定",
    "col_skipped": "已跳过",
    "col_bounced": "退信",
    "col_replied": "回复",
    "col_unsubscribed": "退订",
    "col_clicked": "点击",
    "col_reply_rate": "回复率",
    "charts_title": "最近 30 天",
    "charts_explain": "按天统计，包括所有营销活动；日期按时区",
    "chart_sent_per_day": "每日发送量",
    "chart_responses_per_day": "每日回复、退信、退订与点击",
    "attention_sends": "需要决定的发送",
    "attention_sends_explain": ("不确定：无法确认邮件是否已送达服务器（请先查看“已发送”文件夹）。失败：服务器拒收。点击"
                                "“重新排队”后，将在下一轮发送时重发。"),
    "attention_sends_none": "没有不确定或失败的发送。",
    "attention_quarantine": "隔离的邮件",
    "attention_quarantine_explain": "系统无法解析的来信，已完整保存。下载后可用邮件客户端打开查看。",
    "attention_quarantine_none": "没有被隔离的邮件。",
    "attention_more": "仅显示最新的几封。",
    "attention_replies": "最近的回复",
    "attention_replies_since": "统计起始时间：",
    "attention_replies_none": "这段时间内没有回复。",
    "customer": "客户",
    "status": "状态",
    "problem": "问题",
    "received": "收到时间",
    "from": "发件人",
    "source": "来源",
    "size": "字节",
    "download_eml": "下载 .eml",
    "requeue": "重新排队",
    "status_queued": "排队中",
    "status_sending": "发送中",
    "status_sent": "已发送",
    "status_failed": "失败",
    "status_uncertain": "不确定",
    "status_skipped": "已跳过",
    "search": "搜索",
    "search_placeholder": "客户名称、公司或邮箱地址",
    "search_none": "没有匹配的客户。",
    "search_more": "匹配的客户较多，请缩小搜索范围。",
    "name": "名称",
    "company": "公司",
    "key": "标识",
    "email_status": "邮件状态",
    "email_status_ok": "正常",
    "email_status_bounced": "退信",
    "email_status_unsubscribed": "已退订",
    "not_in_sheet": "（已不在表格中）",
    "suppression": "禁发名单",
    "suppressed_because": "已禁发：",
    "not_suppressed": "未禁发",
    "reason_manual": "手动添加",
    "reason_unsubscribed": "已退订",
    "reason_bounced": "退信",
    "reason_soft_bounces": "多次临时退信",
    "suppress": "禁止向此地址发信",
    "unsuppress": "移出禁发名单",
    "timeline": "时间线",
    "timeline_empty": "暂无记录。",
    "kind_email_in": "回复",
    "kind_email_out": "已发送",
    "kind_auto_reply": "自动回复",
    "kind_bounce": "退信",
    "kind_unsubscribe": "退订",
    "kind_customer_added": "新增",
    "kind_field_changed": "变更",
    "kind_send_failed": "发送失败",
    "kind_customer_removed": "移除",
    "kind_click": "点击",
    "kind_open": "打开",
    "kind_resubscribe": "重新订阅",
    "kind_reply_out": "我方回复",
    "customer_unknown": "没有这个客户",
    "health_stages": "各阶段最近一次运行",
    "health_no_runs": "还没有运行过任何阶段。",
    "health_queue": "发送队列",
    "health_at": "统计时间：",
    "stage": "阶段",
    "started": "开始",
    "finished": "结束",
    "result": "结果",
    "last_ok": "最近一次成功",
    "problems": "问题与统计",
    "stage_sync": "同步（表格）",
    "stage_fetch": "收信（邮箱）",
    "stage_send": "发送",
    "stage_writeback": "回写（表格）",
    "stage_rekey": "更换标识",
    "stage_recover": "恢复（崩溃后遗留的发送）",
    "run_ok": "正常",
    "run_failed": "失败",
    "run_unfinished": "运行中或被中断",
    "queue_due": "排队中，现在可发",
    "queue_waiting": "排队中，等待重试",
    "flash_requeued": "已重新排队，将在下一轮发送时发出",
    "flash_requeue_nothing": "没有重新排队任何邮件",
    "flash_requeue_bad_id": "不是有效的发送编号",
    "flash_write_failed": "未保存",
    "flash_suppressed": "已加入禁发名单",
    "flash_suppress_nothing": "没有变化",
    "flash_unsuppressed": "已移出禁发名单",
    "flash_unsuppress_nothing": "该地址不在禁发名单中",
    # 销售漏斗页面（issue #21）：与 `report pipeline --json` 相同的数字
    "nav_pipeline": "销售漏斗",
    "pipeline_explain": ("与 `crm-automation report pipeline` 相同的数字。久未联系：超过 [stale_after_days] "
                         "为该阶段设定的天数没有邮件往来。阶段天数：自客户进入当前阶段起。"
                         "回复：最近 30 天的回信和询盘。"),
    "pipeline_empty": "日志里还没有客户。",
    "pipeline_owners": "负责人（最近 30 天）",
    "pipeline_owners_explain": ("首次响应：从客户来信到我们第一次回复（“已发送”里指向它的回信，"
                                "或之后我们发出的任何邮件），按工作时间计，取中位数。"),
    "pipeline_since": "阶段变化起始日期",
    "pipeline_show": "显示",
    "pipeline_bad_since": "不是一个过去的日期（例如 2026-11-01）。",
    "pipeline_funnel": "进入各阶段的客户",
    "pipeline_moves": "阶段变化",
    "pipeline_no_moves": "这段时间没有阶段变化。",
    "col_owner": "负责人",
    "col_customers": "客户数",
    "col_stale": "久未联系",
    "col_median_days": "阶段天数（中位数）",
    "col_replies_30d": "回复（30 天）",
    "col_answered": "已回复",
    "col_unanswered": "尚未回复",
    "col_first_response": "首次响应（工作小时，中位数）",
    "col_entered": "进入",
    "col_added": "其中新客户",
    "col_from": "从",
    "col_to": "到",
    "col_moves": "次数",
    "value_none": "（无）",
}

CATALOGS: dict[str, Mapping[str, str]] = {"en": EN, "zh-CN": ZH}


def normalise(tag: str | None) -> str | None:
    """One of :data:`LANGUAGES` for a language tag (``zh``, ``zh-Hans-CN``, ``en-GB``…), or None."""
    if not tag:
        return None
    primary = tag.strip().lower().split("-")[0].split("_")[0]
    if primary == "zh":
        return "zh-CN"
    if primary == "en":
        return "en"
    return None


def from_accept_language(header: str | None) -> str | None:
    """The best of our languages by ``Accept-Language`` weights (RFC 9110 §12.5.4), or None when none fits."""
    if not header:
        return None
    best: tuple[float, int, str] | None = None
    for i, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        for p in params.split(";"):
            name, _, value = p.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        lang = normalise(tag)
        if lang is None or q <= 0:
            continue
        if best is None or (q, -i) > (best[0], best[1]):
            best = (q, -i, lang)
    return best[2] if best is not None else None


def choose(query: str | None, cookie: str | None, accept_language: str | None) -> str:
    """The request's language: the switch, then its cookie, then ``Accept-Language``, then English."""
    return normalise(query) or normalise(cookie) or from_accept_language(accept_language) or DEFAULT


class Translator:
    """``t("key")`` in templates: the string in the request's language, English when it has none."""

    def __init__(self, lang: str) -> None:
        self.lang = lang
        self._catalog = CATALOGS.get(lang, EN)

    def __call__(self, key: str) -> str:
        """The UI string for ``key``."""
        return self._catalog.get(key) or EN.get(key) or key

    @property
    def other(self) -> str:
        """The language the switch offers."""
        return "en" if self.lang == "zh-CN" else "zh-CN"
