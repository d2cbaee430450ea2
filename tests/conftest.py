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
