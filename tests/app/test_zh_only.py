"""Issue 21 §6: every page rendered in Chinese shows no English words outside names, numbers, URLs, code and the
site's own content.

The project is filled by real background jobs in Chinese (``UMTCDS_LANG=zh``, as the dashboard starts them): a crawl
of the local fixture site (with robots-blocked, missing and off-site links, so the failure table has reasons), a
generation against a local OpenAI-compatible server, a split, a short training run of a tiny model, and an
evaluation. Then Home and every step page are rendered in Chinese and scanned (``zh_check``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from crawl_helpers import FixtureSite  # noqa: E402
from fake_llm_server import FakeLLMServer  # noqa: E402
from zh_check import english_words, leaks  # noqa: E402

from tests.train_helpers import make_tiny_model, tiny_config  # noqa: E402
from umtcds_core import cli  # noqa: E402
from umtcds_core.jobs import cli_argv, start_job  # noqa: E402
from umtcds_core.workspace import Workspace  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["Home.py", *sorted(p.name for p in (ROOT / "pages").glob("*.py"))]
KEY = "sk-zh-test-0123456789abcdef"
ZH = {"UMTCDS_LANG": "zh"}
pytestmark = pytest.mark.slow


def _done(job, timeout: float = 600) -> None:
    status = job.wait(timeout=timeout)
    assert status == "done", f"{job.step} ended {status}: {job.log_tail()[-3000:]}"


@pytest.fixture(scope="module")
def full_ws(tmp_path_factory):
    ws = Workspace.create("校园助手", root=tmp_path_factory.mktemp("zh"))
    with FixtureSite() as site:
        argv = cli_argv("crawl", site.url("/"), "--out", str(ws.pages_dir), "--depth", "1", "--max-pages", "10")
        _done(start_job(ws, "crawl", argv, env=ZH))
    with FakeLLMServer(api_key=KEY) as srv:
        argv = cli_argv("generate", str(ws.pages_dir), "--out", str(ws.qa_dir), "--backend", "openai")
        argv += ["--base-url", srv.openai_base, "--api-key-env", "ZH_TEST_KEY", "--pairs-per-page", "2", "--no-clean"]
        _done(start_job(ws, "generate", argv, env={**ZH, "ZH_TEST_KEY": KEY}))
    assert cli.main(["dataset", str(ws.qa_file), "--out", str(ws.dataset_dir)]) == 0
    model = make_tiny_model(ws.root.parent / "tiny-llama")
    config = tiny_config(ws.root / "tiny", steps=4, model=str(model), eval_steps=2, save_steps=2)
    config.replace(ws.config_file)
    config_text = ws.config_file.read_text(encoding="utf-8").replace("data_dir: dataset", "data_dir: tiny/dataset")
    ws.config_file.write_text(config_text, encoding="utf-8")
    run = ws.runs_dir / "run-a"
    _done(start_job(ws, "train", cli_argv("train", str(ws.config_file), "--output-dir", str(run)), env=ZH))
    argv = cli_argv(
        "evaluate", "--model", str(model), "--adapter", str(run), "--data", str(ws.dataset_dir / "test.jsonl")
    )
    argv += ["--out", str(run / "eval" / "metrics.json"), "--max-new-tokens", "6"]
    _done(start_job(ws, "evaluate", argv, env=ZH))
    return ws


@pytest.fixture(scope="module")
def failed_ws(tmp_path_factory):
    """Jobs that fail the way users' do: a site that refuses connections, a cloud backend without a key."""
    import socket

    ws = Workspace.create("失败的项目", root=tmp_path_factory.mktemp("zh-failed"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: connections are refused
    argv = cli_argv("crawl", f"http://127.0.0.1:{port}/", "--out", str(ws.pages_dir), "--max-pages", "3")
    start_job(ws, "crawl", argv, env=ZH).wait(timeout=300)
    ws.pages_dir.mkdir(parents=True, exist_ok=True)
    (ws.pages_dir / "a.txt").write_text("青山大学图书馆每天 8:00 开放。", encoding="utf-8")
    argv = cli_argv("generate", str(ws.pages_dir), "--out", str(ws.qa_dir), "--backend", "zhipuai")
    job = start_job(ws, "generate", argv, env={**ZH, "ZHIPUAI_API_KEY": ""})
    assert job.wait(timeout=300) == "failed", job.log_tail()
    return ws


def _render(ws, page: str, monkeypatch) -> AppTest:
    monkeypatch.setenv("UMTCDS_NO_GPU_DETECT", "1")
    at = AppTest.from_file(str(ROOT / ("" if page == "Home.py" else "pages") / page), default_timeout=120)
    at.session_state["workspace"] = str(ws.root)
    at.session_state["lang"] = "zh"
    at.run()
    assert not at.exception, at.exception[0].value
    return at


def _no_leaks(at, ws) -> None:
    found = leaks(at, ws.root)
    assert not found, "English on the Chinese page:\n" + "\n".join(f"  {s!r}: {w}" for s, w in found.items())


def test_the_scanner_finds_english_and_spares_names_numbers_urls_and_code():
    assert english_words("开始爬取 · pages 3/10 · ETA 0:01") == ["pages"]
    assert (
        english_words("已保存 `config.yaml`，见 https://example.edu/a?b=1；用 GLM-4-9B-chat 或 Qwen2.5-7B-Instruct")
        == []
    )
    assert english_words("学习率 learning_rate = 5e-4；--max-steps 30；LoRA 与 QLoRA") == []
    assert english_words("blocked by robots.txt") == ["blocked", "by"]
    assert english_words("标题：North Canteen", data=["North Canteen"]) == []


@pytest.mark.parametrize("page", PAGES)
def test_page_in_chinese_has_no_english(full_ws, page, monkeypatch):
    _no_leaks(_render(full_ws, page, monkeypatch), full_ws)


@pytest.mark.parametrize("page", ["1_crawl.py", "2_generate.py"])
def test_failed_jobs_are_explained_in_chinese_only(failed_ws, page, monkeypatch):
    """A failed job's reasons (connection refused, no API key) are shown once, in Chinese — not both languages."""
    at = _render(failed_ws, page, monkeypatch)
    _no_leaks(at, failed_ws)
    shown = " ".join(e.value for e in at.error) + " ".join(w.value for w in at.warning)
    assert "任务失败" in shown and "Error:" not in shown and "错误：错误" not in shown
