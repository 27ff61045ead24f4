"""CsvSource reads what Excel and other tools save, and writes back in the same form."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from crm_automation.config import load_config
from crm_automation.errors import ConfigError, ServiceError
from crm_automation.sheets.csv import CsvSource

ROWS = [["邮箱", "客户名称", "备注"], ["a@x.com", "张三", "老客户, VIP"], ["b@x.com", "李四", "新\"客户\""]]


def _encode(rows: list[list[str]], delim: str, newline: str = "\r\n") -> str:
    def q(v: str) -> str:
        return '"' + v.replace('"', '""') + '"' if any(c in v for c in (delim, '"', "\n")) else v

    return "".join(delim.join(q(v) for v in r) + newline for r in rows)


CASES = [
    ("utf-8", ",", b""),
    ("utf-8", ";", codecs.BOM_UTF8),
    ("gbk", ",", b""),
    ("gb18030", "\t", b""),
    ("utf-16-le", "\t", codecs.BOM_UTF16_LE),
]


@pytest.mark.parametrize(("enc", "delim", "bom"), CASES, ids=["utf8", "utf8-bom-semicolon", "gbk", "gb18030-tab",
                                                              "utf16-tab"])
def test_detects_encoding_and_delimiter_and_round_trips(tmp_path, enc, delim, bom):
    path = tmp_path / "c.csv"
    path.write_bytes(bom + _encode(ROWS, delim).encode(enc))
    src = CsvSource(path)
    data = src.read()
    assert data.headers == ("邮箱", "客户名称", "备注")
    assert data.rows[0].values == {"邮箱": "a@x.com", "客户名称": "张三", "备注": "老客户, VIP"}
    assert data.rows[1].values["备注"] == '新"客户"'

    res = src.write_back("邮箱", {"b@x.com": {"邮件状态": "已退订"}}, version=data.version)
    assert res.cells == 1
    raw = path.read_bytes()
    assert raw.startswith(bom)
    text = raw[len(bom):].decode(enc)
    lines = text.split("\r\n")
    assert lines[0] == delim.join(["邮箱", "客户名称", "备注", "邮件状态"])
    assert lines[2].endswith(delim + "已退订")
    assert "老客户, VIP" in lines[1]
    assert src.read().rows[1].values["邮件状态"] == "已退订"


def test_gbk_file_gets_characters_gbk_lacks_via_gb18030(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(_encode(ROWS, ",").encode("gbk"))
    src = CsvSource(path)
    src.write_back("邮箱", {"a@x.com": {"备注2": "😀 €"}}, version=src.read().version)
    assert path.read_bytes().decode("gb18030").splitlines()[1].endswith(",😀 €")


def test_newline_kept_and_quoted_newlines_count_as_one_row(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('邮箱,备注\na@x.com,"two\nlines"\n\nb@x.com,x\n', encoding="utf-8")
    src = CsvSource(path)
    data = src.read()
    assert [r.row for r in data.rows] == [2, 4]  # records, as Excel numbers them; the blank record is skipped
    assert data.rows[0].values["备注"] == "two\nlines"
    src.write_back("邮箱", {"b@x.com": {"状态": "ok"}}, version=data.version)
    assert "\r\n" not in path.read_text(encoding="utf-8")


def test_formula_like_values_are_quoted(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("邮箱\na@x.com\n", encoding="utf-8")
    src = CsvSource(path)
    src.write_back("邮箱", {"a@x.com": {"回复": "=HYPERLINK(\"x\")"}}, version=src.read().version)
    assert path.read_text(encoding="utf-8").splitlines()[1] == 'a@x.com,"\'=HYPERLINK(""x"")"'


def test_configured_encoding_and_delimiter_win(tmp_path):
    cfg_path = tmp_path / "config.toml"
    (tmp_path / "c.csv").write_bytes("邮箱|姓名\r\na@x.com|王五\r\n".encode("gbk"))
    cfg_path.write_text('[sheet]\nsource = "csv"\npath = "c.csv"\nencoding = "gbk"\ndelimiter = "|"\n'
                        '[mailbox]\nsource = "maildir"\npath = "inbox"\n[outbound]\nfrom = "s@x.com"\n',
                        encoding="utf-8")
    src = CsvSource.from_config(load_config(cfg_path))
    assert src.read().rows[0].values == {"邮箱": "a@x.com", "姓名": "王五"}


def test_wrong_configured_encoding_is_reported(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes("邮箱\n张三@x.com\n".encode("gbk"))
    with pytest.raises(ServiceError, match="cannot decode the file as utf-8") as e:
        CsvSource(path, encoding="utf-8").read()
    assert str(path) in str(e.value)


def test_unknown_configured_encoding_is_a_config_error(tmp_path):
    cfg_path = tmp_path / "config.toml"
    cfg_path.write_text('[sheet]\nsource = "csv"\npath = "c.csv"\nencoding = "klingon"\n'
                        '[mailbox]\nsource = "maildir"\npath = "inbox"\n[outbound]\nfrom = "s@x.com"\n',
                        encoding="utf-8")
    with pytest.raises(ConfigError, match="klingon"):
        CsvSource.from_config(load_config(cfg_path))


def test_binary_garbage_is_reported(tmp_path: Path):
    path = tmp_path / "c.csv"
    path.write_bytes(b"\x81\x20\xff\xfe\x00" * 10)
    with pytest.raises(ServiceError, match="neither UTF-8 nor GBK"):
        CsvSource(path).read()


def test_empty_file_reads_as_no_rows(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(b"")
    data = CsvSource(path).read()
    assert data.headers == ()
    assert data.rows == ()


# ------------------------------------------------------------------ issue #9: files mixing encodings

HEADER = "邮箱,客户名称,备注\r\n"
ROW2 = "a@x.com,张三,老客户\r\n"
ROW3 = "b@x.com,李四,新客户\r\n"


def _read_error(path: Path, **kw) -> ServiceError:
    with pytest.raises(ServiceError) as e:
        CsvSource(path, **kw).read()
    return e.value


def test_utf8_header_then_gbk_rows_names_the_line_and_how_it_reads(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(HEADER.encode() + (ROW2 + ROW3).encode("gbk"))
    e = _read_error(path)
    assert str(e).startswith(f"{path} line 2: the encoding changes here")
    assert 'line 2 reads as GBK/GB18030 ("a@x.com,张三,老客户")' in str(e)
    assert 'line 1 before it reads as UTF-8 ("邮箱,客户名称,备注")' in str(e)
    assert "expected one encoding for the whole file" in str(e)
    assert e.hint is not None and '"CSV UTF-8"' in e.hint and '[sheet] encoding = "gb18030"' in e.hint
    assert "config.toml" in e.hint


def test_gbk_header_then_utf8_rows_names_the_line(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes((HEADER + ROW2).encode("gbk") + b"c@x.com,ascii only\r\n" + ROW3.encode())
    e = _read_error(path)
    assert str(e).startswith(f"{path} line 4: the encoding changes here")
    assert 'line 4 reads as UTF-8 ("b@x.com,李四,新客户")' in str(e)
    assert 'line 1 before it reads as GBK/GB18030 ("邮箱,客户名称,备注")' in str(e)


def test_one_gbk_line_pasted_into_a_utf8_file_is_found(tmp_path):
    path = tmp_path / "c.csv"
    rows = "".join(f"u{i}@x.com,客户{i},备注\r\n" for i in range(200))
    path.write_bytes((HEADER + rows).encode() + ROW2.encode("gbk") + ROW3.encode())
    e = _read_error(path)
    assert str(e).startswith(f"{path} line 202: the encoding changes here")


def test_utf8_bom_file_with_gbk_rows_is_a_mixed_file_not_a_wrong_setting(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(codecs.BOM_UTF8 + HEADER.encode() + ROW2.encode("gbk"))
    e = _read_error(path)
    assert "line 2: the encoding changes here" in str(e)
    assert "[sheet] encoding" not in str(e)  # nobody set it: the hint must not blame the setting


def test_configured_gbk_on_a_mixed_file_is_refused_instead_of_garbling_the_header(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(HEADER.encode() + (ROW2 + ROW3).encode("gbk"))
    e = _read_error(path, encoding="gbk")
    assert "line 2: the encoding changes here" in str(e)


def test_wrong_configured_encoding_names_the_line_and_the_likely_encoding(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(b"email,name\r\na@x.com,A\r\n" + ROW2.encode("gbk"))
    e = _read_error(path, encoding="utf-8")
    assert str(e).startswith(f"{path} line 3: cannot decode the file as utf-8 ([sheet] encoding)")
    assert e.hint is not None and '[sheet] encoding = "gb18030"' in e.hint and "config.toml" in e.hint


def test_wrong_configured_encoding_on_an_undetectable_file_suggests_utf8(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(b"email,name\r\na@x.com,Ren\xe9\r\n")  # Latin-1, and not GBK either
    e = _read_error(path, encoding="utf-8")
    assert "line 2" in str(e)
    assert e.hint is not None and "CSV UTF-8" in e.hint


def test_plain_gbk_files_are_not_taken_for_mixed_ones(tmp_path):
    # Short GBK names are often valid UTF-8 by accident (about one in ten): that must not look like a switch.
    import random

    rnd = random.Random(9)
    common = [bytes([hi, lo]).decode("gb2312") for hi in range(0xB0, 0xD8) for lo in range(0xA1, 0xFF)
              if (hi, lo) != (0xD7, 0xFA) and not (hi == 0xD7 and lo > 0xF9)]
    for n in range(30):
        lines = ["邮箱,姓名,备注"] + [f"c{i}@x.com,{''.join(rnd.choices(common, k=rnd.choice([2, 3])))},"
                                   f"{''.join(rnd.choices(common, k=rnd.randint(0, 2)))}" for i in range(300)]
        if n % 3 == 0:
            lines[0] = "email,name,note"
        if n % 3 == 1:
            lines += [f"z{i}@x.com,ascii,1" for i in range(50)]
        path = tmp_path / f"g{n}.csv"
        path.write_bytes("\r\n".join(lines).encode("gbk"))
        data = CsvSource(path).read()
        assert len(data) == len(lines) - 1
