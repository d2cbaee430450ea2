"""Shared test fixtures. Helpers append their own fixtures below, each clearly named."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Tests never touch the user's real workspaces; keep CPU thread use modest on the 2-core CI machine.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _isolated_workspaces(tmp_path_factory, monkeypatch):
    root = tmp_path_factory.mktemp("workspaces")
    monkeypatch.setenv("UMTCDS_WORKSPACES", str(root))
    return root


@pytest.fixture
def workspace(tmp_path):
    """A fresh workspace in a temp folder."""
    from umtcds_core.workspace import Workspace

    return Workspace.create("test-ws", root=tmp_path / "workspaces")


@pytest.fixture(scope="session")
def embedded_model():
    """(tokenizer, model) of the embedded smollm2-135m, loaded once per session."""
    from umtcds_core.models import load

    return load("smollm2-135m", device="cpu")


# ---- chat / evaluate / serve (issue 7) ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def fact_adapter(tmp_path_factory):
    """A LoRA run folder (tiny llama) that has memorised tests.chat_helpers.FACTS; trained once per session."""
    from tests.chat_helpers import train_fact_adapter

    return train_fact_adapter(tmp_path_factory.mktemp("fact_adapter"))


@pytest.fixture(scope="session")
def fact_chat_model(fact_adapter):
    """The fact adapter loaded once on CPU as a umtcds_core.chat.ChatModel (shared; do not unload it)."""
    from umtcds_core.chat import load_chat_model

    return load_chat_model(None, fact_adapter, device="cpu")


# ---- retrieval (issue 15) -----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def demo_index(tmp_path_factory):
    """``(pages_dir, index_dir)``: the demo site (English and Chinese pages) crawled over HTTP and indexed, once per
    session. Shared: tests that change pages or the index copy them first."""
    from tests.index_helpers import crawl_and_index_demo

    return crawl_and_index_demo(tmp_path_factory.mktemp("demo_index"))
