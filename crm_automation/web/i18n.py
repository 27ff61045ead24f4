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
    "dashboard_placeholder": "The dashboard is on its way.",
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
    "dashboard_placeholder": "概览页面即将推出。",
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
