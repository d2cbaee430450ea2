"""The Crawl page's search-index section offers the optional embedding-model folder (from the index schema): it shows
the model the index remembers, and a wrong folder is said on the page before any job starts."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from tests.app.zh_check import leaks
from tests.dense_helpers import write_pages, write_tiny_embed_model
from umtcds_core.index import build_index, index_dir_of
from umtcds_core.jobs import latest_job

ROOT = Path(__file__).resolve().parents[2]


def _page(ws, lang: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / "1_crawl.py"), default_timeout=120)
    at.session_state["workspace"] = str(ws.root)
    at.session_state["lang"] = lang
    return at.run()


def test_crawl_page_embedding_folder_field(workspace, tmp_path):
    ws = workspace
    write_pages(ws.pages_dir)
    model_dir = write_tiny_embed_model(tmp_path / "tiny-embed")
    build_index(ws.pages_dir, index_dir_of(ws), {"embed_model": str(model_dir)})

    zh = _page(ws, "zh")
    assert not zh.exception and any("向量模型" in c.value for c in zh.caption)
    found = leaks(zh, ws.root)
    assert not found, found

    at = _page(ws, "en")
    assert at.text_input(key="ix_embed_model").value == str(model_dir.resolve())  # the remembered model
    assert any(f"Embeddings: {model_dir.resolve()}" in c.value for c in at.caption)
    assert at.number_input(key="ix_embed_batch_size").value == 32

    at.text_input(key="ix_embed_model").set_value(str(tmp_path / "missing")).run()
    at.button(key="crawl_index").click().run()
    assert any("does not exist" in e.value and "umtcds models pull" in e.value for e in at.error)
    assert latest_job(ws, "index") is None  # said on the page: no job was started
