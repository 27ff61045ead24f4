"""The English and Chinese documentation stay in step (issue #12).

- Both READMEs document the same config keys (their configuration reference
  tables and TOML blocks), the same CLI verbs (taken from the CLI's own click
  command list) and the same exit statuses (every code the product uses).
- Both guide sets (docs/*.md and docs/zh-CN/*.md) name the same mail
  providers and mail servers.
- Every error message the Chinese troubleshooting page quotes is one the
  product can print.

Extraction is by structure, not by wording: a configuration row is a table
row whose first cell names a ``section.key`` in backticks; a verb is a table
row whose first cell starts with a CLI command name; exit statuses are the
backticked numbers of the paragraph or table under the exit-status label.
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from crm_automation import errors
from crm_automation.cli import cli
from crm_automation.config import _ConfigModel

REPO = Path(__file__).resolve().parents[2]
README_EN = REPO / "README.md"
README_ZH = REPO / "README.zh-CN.md"
GUIDES_EN = REPO / "docs"
GUIDES_ZH = REPO / "docs" / "zh-CN"
TROUBLESHOOTING_ZH = GUIDES_ZH / "troubleshooting.md"

# Documented in README.zh-CN.md but not yet in README.md, which this change could not edit beyond its
# link line (other sections were being rewritten at the same time). Add each to README.md, then delete
# it here; an entry that README.md already documents is harmless.
PENDING_IN_README_EN: dict[str, str] = {}

EXIT_LABELS = {README_EN: re.compile(r"\*\*exit status\*\*", re.I), README_ZH: re.compile(r"\*\*退出状态\*\*")}

# Every provider either guide set may name, with its names in both languages.
PROVIDERS = {
    "QQ Mail": r"QQ Mail|QQ ?邮箱",
    "Tencent Exmail": r"Exmail|腾讯企业邮",
    "163.com": r"163\.com|(?<![\w.])163(?![\w.])",
    "126.com": r"126\.com|(?<![\w.])126(?![\w.])",
    "Alibaba Mail": r"Alibaba Mail|阿里企业邮|阿里邮箱",
    "Gmail": r"Gmail",
    "Google Workspace": r"Google Workspace",
    "Microsoft 365": r"Microsoft 365|Exchange Online",
    "Outlook.com": r"Outlook\.com|Hotmail",
    "Yahoo": r"Yahoo",
    "21Vianet": r"21Vianet|世纪互联",
}
PROVIDER_TABLE_HEADERS = {"provider", "服务商"}
_SECTIONS = tuple(_ConfigModel.model_fields)
_CONFIG_KEY = re.compile(rf"^`((?:{'|'.join(_SECTIONS)})\.[a-z0-9_]+)`")
_HOST = re.compile(r"`((?:imap|smtp|smtp-mail|hwimap|hwsmtp|outlook)\.[a-z0-9.-]+\.[a-z]+)`|host\s*=\s*\"([^\"]+)\"")


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _first_cells(text: str) -> Iterator[str]:
    """The first cell of every Markdown table row (separator rows excluded)."""
    for line in text.splitlines():
        if line.startswith("|") and not re.match(r"^\|\s*-", line):
            yield line.split("|")[1].strip()


def _tables(text: str) -> Iterator[list[str]]:
    """Each Markdown table as its rows' first cells, header first."""
    rows: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            if not re.match(r"^\|\s*-", line):
                rows.append(line.split("|")[1].strip())
        elif rows:
            yield rows
            rows = []


# -------------------------------------------------------------------- config keys
def _toml_keys(data: dict[str, object], prefix: str = "") -> Iterator[str]:
    for k, v in data.items():
        if prefix == "fields." and isinstance(v, dict):  # [fields]: the attributes, not the sample's field names
            yield from (f"fields.*.{a}" for a in v)
        elif isinstance(v, dict):
            yield from _toml_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def config_keys(text: str) -> set[str]:
    """config.toml keys of the configuration reference table, plus the keys of the README's TOML blocks.

    A first cell like ``` `outbound.host`, `port` ``` documents outbound.host and outbound.port.
    """
    keys: set[str] = set()
    for cell in _first_cells(text):
        m = _CONFIG_KEY.match(cell)
        if not m:
            continue
        section = m.group(1).split(".")[0]
        keys |= {t if "." in t else f"{section}.{t}" for t in re.findall(r"`([a-z0-9_.]+)`", cell)}
    for block in re.findall(r"^```toml\n(.*?)^```", text, re.S | re.M):
        try:
            data = tomllib.loads(block)
        except tomllib.TOMLDecodeError as e:  # pragma: no cover - a broken example is itself a doc bug
            pytest.fail(f"a ```toml block of the README is not valid TOML ({e}):\n{block}")
        keys |= {f"customers.toml:{k}" for k in _toml_keys(data)}
    return keys


# -------------------------------------------------------------------- CLI verbs
def cli_verbs() -> set[str]:
    """Every command of the CLI, group subcommands as "suppress add"."""
    out: set[str] = set()
    for name, cmd in cli.commands.items():
        out.add(name)
        if isinstance(cmd, click.Group):
            out |= {f"{name} {sub}" for sub in cmd.commands}
    return out


def documented_verbs(text: str) -> set[str]:
    """CLI commands named at the start of a table row: `check [--connect]`, `suppress add/remove/list`."""
    out: set[str] = set()
    verbs = cli_verbs()
    for cell in _first_cells(text):
        m = re.match(r"^`([a-z][a-z-]*)(?=[ `\[])([^`]*)`", cell)
        if not m or m.group(1) not in verbs:
            continue
        out.add(m.group(1))
        rest = set(re.split(r"[\s/]+", m.group(2)))
        out |= {v for v in verbs if v.startswith(f"{m.group(1)} ") and v.split(" ", 1)[1] in rest}
    return out


# -------------------------------------------------------------------- exit statuses
def product_exit_codes() -> set[int]:
    """0, and the exit code of every error class (ConfigError 2, ServiceError 3, ...)."""
    codes = {0}
    todo: list[type[errors.CrmError]] = [errors.CrmError]
    while todo:
        cls = todo.pop()
        codes.add(cls.exit_code)
        todo += cls.__subclasses__()
    return codes


def documented_exit_codes(path: Path) -> set[int]:
    """The backticked numbers under the exit-status label: its paragraph, and a table right below it."""
    lines = _read(path).splitlines()
    start = next((i for i, line in enumerate(lines) if EXIT_LABELS[path].search(line)), None)
    assert start is not None, f"{path.name}: no exit-status label ({EXIT_LABELS[path].pattern})"
    block, i = [], start
    while i < len(lines) and (lines[i].strip() or i == start):
        block.append(lines[i])
        i += 1
    while i < len(lines) and not lines[i].strip():
        i += 1
    while i < len(lines) and lines[i].startswith("|"):
        block.append(lines[i])
        i += 1
    return {int(n) for n in re.findall(r"`(\d{1,3})`", "\n".join(block))}


# -------------------------------------------------------------------- providers
def _guides(folder: Path) -> str:
    return "\n".join(_read(p) for p in sorted(folder.glob("*.md")))


def providers_named(text: str) -> set[str]:
    return {name for name, pattern in PROVIDERS.items() if re.search(pattern, text)}


def mail_hosts(text: str) -> set[str]:
    hosts = {a or b for a, b in _HOST.findall(text)}
    return {h for h in hosts if not h.endswith(("example.com", "example.org")) and "." in h}


def unknown_provider_rows(text: str) -> list[str]:
    """Rows of provider tables that name no provider of PROVIDERS (add its names there)."""
    out = []
    for table in _tables(text):
        if table[0].lower() in PROVIDER_TABLE_HEADERS:
            out += [row for row in table[1:] if not providers_named(row)]
    return out


# -------------------------------------------------------------------- the tests
def _in_step(en: set[str], zh: set[str], what: str) -> list[str]:
    problems = [f"{what} {k!r} is in README.md but missing from README.zh-CN.md" for k in sorted(en - zh)]
    problems += [f"{what} {k!r} is in README.zh-CN.md but missing from README.md"
                 for k in sorted(zh - en - set(PENDING_IN_README_EN))]
    return problems


def test_both_readmes_document_the_same_config_keys():
    en, zh = config_keys(_read(README_EN)), config_keys(_read(README_ZH))
    assert len(en) > 40, f"the configuration reference of README.md was not found (keys: {sorted(en)})"
    problems = _in_step(en, zh, "config key")
    assert not problems, "\n".join(problems)


def test_documented_config_keys_exist():
    """A key in either README is a real config.toml key (catches a typo or a removed key)."""
    real = set()
    for section, field in _ConfigModel.model_fields.items():
        model = field.annotation
        assert isinstance(model, type)
        real |= {f"{section}.{f.alias or name}" for name, f in model.model_fields.items()}
    for path in (README_EN, README_ZH):
        documented = {k for k in config_keys(_read(path)) if not k.startswith("customers.toml:")}
        assert documented - real == set(), f"{path.name} documents keys config.toml does not have"


def test_both_readmes_document_the_same_cli_verbs():
    en, zh = documented_verbs(_read(README_EN)), documented_verbs(_read(README_ZH))
    assert {"check", "sync", "fetch", "send", "run", "report"} <= en, f"README.md's command table not found: {en}"
    problems = _in_step(en, zh, "CLI verb")
    assert not problems, "\n".join(problems)


def test_both_readmes_document_every_exit_status():
    product = product_exit_codes()
    en, zh = documented_exit_codes(README_EN), documented_exit_codes(README_ZH)
    assert product <= en, f"README.md does not document exit status(es) {sorted(product - en)}"
    assert product <= zh, f"README.zh-CN.md does not document exit status(es) {sorted(product - zh)}"
    problems = _in_step({str(c) for c in en}, {str(c) for c in zh}, "exit status")
    assert not problems, "\n".join(problems)


def test_both_guide_sets_name_the_same_providers_and_servers():
    en, zh = _guides(GUIDES_EN), _guides(GUIDES_ZH)
    assert len(providers_named(en)) >= 8, "docs/*.md were not found"
    assert sorted(providers_named(en) ^ providers_named(zh)) == [], (
        f"only in docs/: {sorted(providers_named(en) - providers_named(zh))}; "
        f"only in docs/zh-CN/: {sorted(providers_named(zh) - providers_named(en))}")
    assert sorted(mail_hosts(en) ^ mail_hosts(zh)) == [], (
        f"servers only in docs/: {sorted(mail_hosts(en) - mail_hosts(zh))}; "
        f"only in docs/zh-CN/: {sorted(mail_hosts(zh) - mail_hosts(en))}")


def test_a_row_deleted_from_one_readme_is_noticed():
    """The extractors see a deleted key, verb or exit status (so the tests above can fail)."""
    zh = _read(README_ZH)
    without_key = "\n".join(line for line in zh.splitlines() if not line.startswith("| `outbound.send_window`"))
    assert _in_step(config_keys(_read(README_EN)), config_keys(without_key), "config key") == [
        "config key 'outbound.send_window' is in README.md but missing from README.zh-CN.md"]
    without_verb = "\n".join(line for line in zh.splitlines() if not line.startswith("| `timeline KEY`"))
    assert "timeline" in documented_verbs(zh) and "timeline" not in documented_verbs(without_verb)
    assert "oauth2_token_command" in " ".join(config_keys(zh))


@pytest.mark.parametrize("folder", [GUIDES_EN, GUIDES_ZH], ids=["docs", "docs/zh-CN"])
def test_every_provider_table_row_is_a_known_provider(folder):
    """A provider added to a table must be added to PROVIDERS, so the comparison above sees it."""
    rows = unknown_provider_rows(_guides(folder))
    assert not rows, f"provider table rows naming no provider of PROVIDERS: {rows}"


# -------------------------------------------------------------------- troubleshooting quotes
_STAR = "\x00"
_MOST_VARYING = 0.5  # at most this share of a quote's fixed text may fall in a message's {placeholders}
_QUOTED_VALUE = re.compile(r"""(?<!\w)'[^'\s][^']*'(?!\w)|(?<!\w)"[^"]+"(?!\w)""")


def _message_templates() -> list[tuple[str, str]]:
    """Every message the package can build: (text with \\x00 for each {placeholder}, its literal text).

    Docstrings are left out: they are not printed.
    """
    out = []
    for path in sorted((REPO / "crm_automation").rglob("*.py")):
        tree = ast.parse(_read(path))
        docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                parts = [v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else _STAR
                         for v in node.values]
                out.append(("".join(parts), "".join(p for p in parts if p != _STAR)))
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) > 3
                  and id(node) not in docstrings):
                out.append((node.value, node.value))
    return out


def _unmatched(quote: str, template: str) -> int:
    """How many of the quote's fixed characters a message built from ``template`` cannot show literally.

    Both are patterns (\\x00 = any text), the quote may be any part of the message: the least number of
    the quote's characters that must come from the template's placeholders (dynamic programming).
    """
    p, q = _STAR + quote + _STAR, _STAR + template + _STAR
    n, m = len(p), len(q)
    inf = n + 1
    nxt = [inf] * (m + 1)  # row i + 1
    nxt[m] = 0
    for i in range(n, -1, -1):
        cur = [inf] * (m + 1)
        if i == n:
            cur[m] = 0
        for j in range(m, -1, -1):
            if i == n and j == m:
                continue
            best = inf
            if i < n and p[i] == _STAR:  # the quote's "...": any of the message's text, for free
                best = nxt[j] if j == m else min(nxt[j], cur[j + 1])
            elif j < m and q[j] == _STAR:  # a placeholder: empty, or it shows the quote's next character
                best = cur[j + 1]
                if i < n:
                    best = min(best, nxt[j] + 1)
            elif i < n and j < m and p[i] == q[j]:
                best = nxt[j + 1]
            cur[j] = best
        nxt = cur
    return nxt[0]


def _printed(quote: str, templates: list[tuple[str, str]]) -> bool:
    """A quote (``...`` for the varying parts, maybe part of the whole line) is a message the code builds.

    Messages built in steps ("where: what: detail") are checked part by part.
    """
    def fits(text: str) -> bool | None:
        if not re.search(r"[A-Za-z]{4,}", text):
            return None  # nothing fixed to look for ("535 ...")
        words = set(re.findall(r"[A-Za-z]{5,}", text)) or set(re.findall(r"[A-Za-z]{4,}", text))
        pattern = _QUOTED_VALUE.sub(_STAR, text.replace("...", _STAR))  # 'xls', "zh-CN": values, like ...
        fixed = len(pattern.replace(_STAR, ""))
        return any(_unmatched(pattern, t) <= _MOST_VARYING * fixed
                   for t, literal in templates if any(w in literal for w in words))

    if fits(quote):
        return True
    parts = [fits(part) for part in quote.split(": ")]
    return len(parts) > 1 and all(p is not False for p in parts) and any(parts)


def troubleshooting_quotes() -> list[str]:
    return [q for cell in _first_cells(_read(TROUBLESHOOTING_ZH)) for q in re.findall(r"`([^`]+)`", cell)
            if cell != "报错原文"]


def test_troubleshooting_quotes_messages_the_product_prints():
    quotes = troubleshooting_quotes()
    assert len(quotes) > 60
    templates = _message_templates()
    unknown = [q for q in quotes if not _printed(q, templates)]
    assert not unknown, "troubleshooting.md quotes messages the code does not print (reworded?):\n" + "\n".join(unknown)


def test_quote_check_catches_a_reworded_message():
    templates = _message_templates()
    assert _printed("login refused (password): ...", templates)
    assert _printed("login refused: 535 ...", templates)
    assert not _printed("login was refused (password): ...", templates)
    assert not _printed("worksheet \"X\" is missing; worksheets found: ...", templates)
    assert not _printed("the sheet file was not found", templates)
