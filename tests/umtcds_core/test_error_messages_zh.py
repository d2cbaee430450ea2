"""Errors shown to the user carry a Chinese sentence: every raise of the UserError family passes ``zh=``, and the
dashboard's :func:`umtcds_core.i18n.error_text` picks the sentence for the current language."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from umtcds_core import i18n
from umtcds_core.crawl import CrawlConfig
from umtcds_core.errors import UserError
from umtcds_core.qa import GenSettings, read_pages
from umtcds_core.train import TrainError, resume_point

CORE = Path(__file__).resolve().parents[2] / "umtcds_core"
FAMILY = {"UserError", "TrainError", "LLMError", "BackendConfigError", "AuthError"}


def _raises_without_zh(path: Path) -> list[str]:
    missing = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            fn = node.exc.func
            name = fn.id if isinstance(fn, ast.Name) else getattr(fn, "attr", None)
            if name in FAMILY and not any(k.arg == "zh" for k in node.exc.keywords):
                missing.append(f"{path.name}:{node.lineno} {name}")
    return missing


def test_every_user_error_raise_has_a_chinese_sentence():
    files = sorted(CORE.glob("*.py"))
    assert files, f"no modules found in {CORE}"
    missing = [m for f in files for m in _raises_without_zh(f)]
    assert not missing, "raise sites without zh= (add the Chinese sentence):\n" + "\n".join(missing)


def _check_both_languages(exc: UserError, en: str, zh: str, monkeypatch) -> None:
    assert str(exc) == en
    assert exc.zh == zh
    monkeypatch.setenv("UMTCDS_LANG", "zh")
    assert i18n.error_text(exc) == zh
    monkeypatch.setenv("UMTCDS_LANG", "en")
    assert i18n.error_text(exc) == en


def test_crawl_depth_error_in_both_languages(tmp_path, monkeypatch):
    with pytest.raises(UserError) as info:
        CrawlConfig(start_url="https://www.example.edu.cn/", out_dir=tmp_path / "pages", depth=-1)
    _check_both_languages(
        info.value,
        "--depth must be 0 or more (0 = only the start page).",
        "--depth 必须大于或等于 0（0 表示只爬起始页）。",
        monkeypatch,
    )


def test_generate_settings_and_input_errors_in_both_languages(tmp_path, monkeypatch):
    with pytest.raises(UserError) as info:
        GenSettings(lang="fr")
    _check_both_languages(
        info.value,
        "--lang must be auto, zh or en, not 'fr'.",
        "--lang 必须是 auto、zh 或 en，不能是“fr”。",
        monkeypatch,
    )

    missing = tmp_path / "no-such-pages"
    with pytest.raises(UserError) as info:
        read_pages(missing)
    _check_both_languages(
        info.value,
        f"The input folder {missing} does not exist; run the crawl step first or give a folder of .txt files.",
        f"输入文件夹 {missing} 不存在；请先运行爬取步骤，或指定一个包含 .txt 文件的文件夹。",
        monkeypatch,
    )


def test_train_resume_error_in_both_languages(tmp_path, monkeypatch):
    ckpt = (tmp_path / "run" / "checkpoint-7").resolve()
    with pytest.raises(TrainError) as info:
        resume_point(tmp_path / "run", str(ckpt))
    _check_both_languages(
        info.value,
        f"The checkpoint {ckpt} does not exist; pass --resume auto or an existing checkpoint-N folder.",
        f"检查点 {ckpt} 不存在；请使用 --resume auto，或指定一个已有的 checkpoint-N 文件夹。",
        monkeypatch,
    )
