"""Errors shown to the user carry a Chinese sentence: every raise of the UserError family passes ``zh=``, and the
dashboard's :func:`umtcds_core.i18n.error_text` picks the sentence for the current language."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import umtcds_core
from umtcds_core import i18n
from umtcds_core.config import METHODS, preset_name
from umtcds_core.crawl import CrawlConfig
from umtcds_core.dataset import dataset_info, input_files
from umtcds_core.errors import UserError
from umtcds_core.qa import GenSettings, read_pages
from umtcds_core.train import TrainError, resume_point

CORE = Path(__file__).resolve().parents[2] / "umtcds_core"


def _user_error_names() -> set[str]:
    """Names of UserError and all its subclasses (recursively), after importing every umtcds_core module."""
    for mod in pkgutil.iter_modules(umtcds_core.__path__):
        importlib.import_module(f"umtcds_core.{mod.name}")
    names, todo = {UserError.__name__}, [UserError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.startswith("umtcds_core") and sub.__name__ not in names:
                names.add(sub.__name__)
                todo.append(sub)
    return names


def _raises_without_zh(path: Path, family: set[str]) -> list[str]:
    missing = []

    def visit(node: ast.AST, func: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            func = node.name
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            call = node.exc
            fn = call.func
            name = fn.id if isinstance(fn, ast.Name) else getattr(fn, "attr", None)
            if name in family and not any(k.arg == "zh" for k in call.keywords):
                missing.append(f"{path.name}:{node.lineno} {name} (in {func})")
        for child in ast.iter_child_nodes(node):
            visit(child, func)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), "<module>")
    return missing


def test_every_user_error_raise_has_a_chinese_sentence():
    family = _user_error_names()
    assert {"UserError", "TrainError", "ConfigError", "DatasetError"} <= family, f"subclasses not found: {family}"
    files = sorted(CORE.glob("*.py"))
    assert files, f"no modules found in {CORE}"
    missing = [m for f in files for m in _raises_without_zh(f, family)]
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


def test_dataset_and_config_errors_in_both_languages(tmp_path, monkeypatch):
    notes = tmp_path / "notes.txt"
    notes.write_text("Q: hi\nA: hello\n", encoding="utf-8")
    with pytest.raises(UserError) as info:
        input_files(notes)
    _check_both_languages(
        info.value,
        f"{notes} is not a .jsonl, .json or .csv file; convert it to one of those.",
        f"{notes} 不是 .jsonl、.json 或 .csv 文件；请把它转换成其中一种格式。",
        monkeypatch,
    )

    with pytest.raises(UserError) as info:
        dataset_info("glm4")
    _check_both_languages(
        info.value,
        "LLaMA-Factory reads sharegpt or alpaca, not 'glm4'.",
        "LLaMA-Factory 只读取 sharegpt 或 alpaca 格式，不支持“glm4”。",
        monkeypatch,
    )

    with pytest.raises(UserError) as info:
        preset_name("sft")
    _check_both_languages(
        info.value,
        f"method: 'sft' is not one of {', '.join(METHODS)}; pick one.",
        f"method：“sft”不是 {', '.join(METHODS)} 之一；请从中选择一个。",
        monkeypatch,
    )
