"""pii.py on Chinese campus text: what is masked (IDs with a valid check digit, mobiles, personal e-mails, optionally
names) and what a campus assistant must keep (office landlines, the site's own and role addresses)."""

from __future__ import annotations

import pytest

from umtcds_core import cli
from umtcds_core.errors import UserError
from umtcds_core.pii import describe_counts, id_number_valid, mask
from umtcds_core.qa import GenSettings

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def with_check_digit(first17: str) -> str:
    """A resident ID number with its GB 11643 check digit, computed independently of pii.py's table."""
    r = sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True)) % 11
    return first17 + str((12 - r) % 11).replace("10", "X")


ID = with_check_digit("11010519491231002")  # ends in X
ID2 = with_check_digit("33010620010315123")
SITE = "https://www.pku.edu.cn/xwzx/2024/0901.htm"


def test_resident_ids_need_a_valid_check_digit_and_birth_date():
    assert ID.endswith("X") and id_number_valid(ID) and id_number_valid(ID.lower())
    assert id_number_valid(ID2)
    wrong = ID2[:-1] + str((int(ID2[-1]) + 1) % 10)
    assert not id_number_valid(wrong)
    assert not id_number_valid(with_check_digit("11010519491331002"))  # month 13
    text = f"获奖学生身份证号：{ID}，另一名 {ID2}；订单编号 {wrong} 不是身份证号。"
    m = mask(text, SITE)
    assert ID not in m.text and ID2 not in m.text and wrong in m.text
    assert m.text.count("[身份证号]") == 2 and m.counts == {"id_card": 2}


def test_mobiles_are_masked_and_office_landlines_kept():
    text = (
        "学生处办公电话：010-62751234，0571-88206000（传真 0571-88206001），服务热线 400-810-5000。\n"
        "联系人王同学，手机 13812345678，或 139 1234 5678、+86 150-1234-5678。学号 2021151234567890 不是手机号。"
    )
    m = mask(text, SITE)
    for kept in ("010-62751234", "0571-88206000", "0571-88206001", "400-810-5000", "2021151234567890"):
        assert kept in m.text
    for gone in ("13812345678", "139 1234 5678", "150-1234-5678"):
        assert gone not in m.text
    assert m.counts == {"mobile": 3} and m.text.count("[手机号]") == 3


def test_personal_emails_masked_institutional_ones_kept():
    text = (
        "招生办邮箱 zsb@pku.edu.cn，教务部 jwb@dean.pku.edu.cn，合作单位 office@example.com、info@partner.org.cn。"
        "如有疑问请联系李明（liming1999@163.com）或 zhang.wei@gmail.com、12345678@qq.com。"
    )
    m = mask(text, SITE)
    for kept in ("zsb@pku.edu.cn", "jwb@dean.pku.edu.cn", "office@example.com", "info@partner.org.cn"):
        assert kept in m.text
    for gone in ("liming1999@163.com", "zhang.wei@gmail.com", "12345678@qq.com"):
        assert gone not in m.text
    assert m.counts == {"email": 3}
    # without a site URL only role addresses are institutional
    assert "zsb@pku.edu.cn" not in mask("邮箱 zsb1@pku.edu.cn", None).text


def test_names_only_on_request_and_english_placeholders_for_english_pages():
    text = "2024年国家奖学金获奖名单：计算机学院张伟、物理学院李娜。颁奖仪式在北京大学百周年纪念讲堂举行。"
    assert mask(text, SITE).text == text  # names are kept unless asked
    m = mask(text, SITE, names=True)
    assert "张伟" not in m.text and "李娜" not in m.text and "[姓名]" in m.text and m.counts["name"] >= 2
    assert "北京大学" in m.text and "计算机学院" in m.text
    en = mask("Call 13812345678 or write to tom@gmail.com.", SITE, lang="en")
    assert en.text == "Call [mobile number] or write to [e-mail]."
    assert describe_counts(en.counts) == "1 mobile number, 1 personal e-mail"


def test_bad_pii_setting_is_one_sentence(tmp_path, capsys):
    with pytest.raises(UserError) as exc:
        GenSettings(pii="hide")
    assert "--pii" in str(exc.value) and "\n" not in str(exc.value)
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "a.txt").write_text("图书馆\n图书馆每天七点半开馆。\n", encoding="utf-8")
    cfg = tmp_path / "gen.yaml"
    cfg.write_text(f"in_dir: {tmp_path / 'pages'}\nout_dir: {tmp_path / 'qa'}\npii: hide\n", encoding="utf-8")
    assert cli.main(["generate", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "pii" in err and "Traceback" not in err and err.count("\n") == 1
