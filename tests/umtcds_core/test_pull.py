"""``umtcds models pull`` against a local fake of the Hugging Face Hub's file API (tests/fake_hub_server.py): a full
pull and a re-run that fetches nothing, a line dropped mid-file and resumed with a Range request, a damaged file
caught by its sha256 and fetched anew on the next run, an unknown repo, no server at all, and the CLI's exit codes.

The same fake answers ModelScope's two download calls (``/api/v1/models/{id}/repo/files`` and
``/api/v1/models/{id}/repo?FilePath=…``), so the modelscope path runs for real too, including its cross-run resume
of a ``*.incomplete`` file. Not covered for ModelScope: its region/CDN redirects and acceleration probe (the fake
answers 404 to ``/api/v1/repos/internalAccelerationInfo`` and serves files directly)."""

from __future__ import annotations

import errno
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from umtcds_core import pull as P
from umtcds_core.errors import UserError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fake_hub_server import FakeHub  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
REPO = "org/tiny-chat"


def _tiny_repo() -> dict[str, bytes]:
    rng = random.Random(7)
    return {
        "config.json": json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}).encode(),
        "tokenizer_config.json": b'{"chat_template": "{{ messages }}"}',
        "tokenizer.json": json.dumps({"model": {"vocab": {f"t{i}": i for i in range(200)}}}).encode(),  # LFS-sized
        "model-00001-of-00002.safetensors": rng.randbytes(300_000),
        "model-00002-of-00002.safetensors": rng.randbytes(120_000),
        "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
    }


@pytest.fixture(scope="module")
def hub():
    with FakeHub({REPO: _tiny_repo(), "org/weights-only": {"config.json": b"{}", "w.bin": b"x" * 2000}}) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _online(monkeypatch):
    """conftest sets HF_HUB_OFFLINE=1 for the whole suite; a pull from the local fake hub needs it off."""
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)


def _pull(hub_url: str, dest: Path, name: str = REPO, **more) -> P.PullResult:
    return P.pull({"name": name, "to": str(dest), "endpoint": hub_url, **more}, log=lambda _m: None)


def test_full_pull_then_rerun_fetches_nothing(hub, tmp_path):
    dest = tmp_path / "m"
    hub.requests.clear()
    res = _pull(hub.url, dest)
    for path, data in hub.repos[REPO].items():
        assert (dest / path).read_bytes() == data
    assert res.files == 6 and res.downloaded == res.bytes == sum(map(len, hub.repos[REPO].values()))
    assert res.verified and res.revision == hub.commit
    assert f"--model {dest}" in res.hint()

    hub.requests.clear()
    again = _pull(hub.url, dest)
    assert again.downloaded == 0
    assert not [r for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1]]  # finished files are kept


def test_dropped_line_is_resumed_with_a_range_request(hub, tmp_path, monkeypatch):
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "DOWNLOAD_CHUNK_SIZE", 50_000)  # it resumes after the last whole chunk it wrote (10 MiB)
    shard = "model-00001-of-00002.safetensors"
    hub.requests.clear()
    hub.drop_after[shard] = 100_000
    _pull(hub.url, tmp_path / "m")
    assert (tmp_path / "m" / shard).read_bytes() == hub.repos[REPO][shard]
    assert hub.gets(shard) == [None, "bytes=100000-"]  # the second GET asked only for the rest


def test_damaged_file_is_caught_removed_and_fetched_anew(hub, tmp_path):
    shard = "model-00002-of-00002.safetensors"
    dest = tmp_path / "m"
    hub.corrupt[shard] = bytes(len(hub.repos[REPO][shard]))  # same size, other bytes
    try:
        with pytest.raises(P.PullError, match=rf"{shard} has sha256 .* run the same command again"):
            _pull(hub.url, dest)
    finally:
        hub.corrupt.clear()
    assert not (dest / shard).exists()
    _pull(hub.url, dest)  # the same command again
    assert (dest / shard).read_bytes() == hub.repos[REPO][shard]


def test_unknown_repo_and_revision_say_so(hub, tmp_path):
    with pytest.raises(P.PullError, match=r"No model called org/nope on 127\.0\.0\.1:\d+; check the spelling"):
        _pull(hub.url, tmp_path / "m", name="org/nope")
    with pytest.raises(P.PullError, match="has no such revision; check --revision"):
        _pull(hub.url, tmp_path / "m", revision="v9")
    assert not (tmp_path / "m").exists()  # nothing written before the hub said yes


def test_no_server_is_one_sentence(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(P.PullError, match=r"Cannot reach 127\.0\.0\.1:\d+: check the network.*hf-mirror\.com"):
        _pull(f"http://127.0.0.1:{port}", tmp_path / "m")


def test_folder_must_be_a_model_and_disk_errors_are_sentences(hub, tmp_path):
    with pytest.raises(P.PullError, match="has no tokenizer"):
        _pull(hub.url, tmp_path / "w", name="org/weights-only")
    full = P._os_error(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    assert "is full; free space" in str(full) and full.zh
    denied = P._os_error(PermissionError(errno.EACCES, "Permission denied"), tmp_path)
    assert "No permission to write in" in str(denied)
    (tmp_path / "f").write_text("x")
    with pytest.raises(P.PullError, match="is a file, not a folder"):
        _pull(hub.url, tmp_path / "f")


def test_bad_settings_are_one_sentence():
    with pytest.raises(UserError, match="is not a hub model id; write it as owner/name"):
        P.pull({"name": "glm4", "to": "x"})
    with pytest.raises(UserError, match="give --to DIR"):
        P.pull({"name": REPO})
    with pytest.raises(UserError, match="is not an address"):
        P.pull({"name": REPO, "to": "x", "endpoint": "hf-mirror.com"})


def test_modelscope_pull_resumes_a_half_file_left_by_a_killed_run(hub, tmp_path):
    pytest.importorskip("modelscope_hub")
    shard = "model-00001-of-00002.safetensors"
    dest = tmp_path / "m"
    dest.mkdir()
    (dest / f"{shard}.incomplete").write_bytes(hub.repos[REPO][shard][:100_000])  # what a killed run leaves
    hub.requests.clear()
    res = _pull(hub.url, dest, source="modelscope")
    for path, data in hub.repos[REPO].items():
        assert (dest / path).read_bytes() == data
    assert res.verified and res.source == "modelscope"
    ranges = [r for m, p, r in hub.requests if m == "GET" and p.endswith("/repo") and r]
    assert ranges == ["bytes=100000-"]  # only the rest of the half file was asked for
    with pytest.raises(P.PullError, match="No model called org/nope"):
        _pull(hub.url, tmp_path / "n", name="org/nope", source="modelscope")


def test_cli_honours_hf_endpoint_and_exits_non_zero_without_traceback(hub, tmp_path):
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}
    cmd = [sys.executable, "-m", "umtcds_core.cli", "models", "pull"]
    ok = subprocess.run([*cmd, REPO, "--to", str(tmp_path / "m")], env=env, capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert f"--model {tmp_path / 'm'}" in ok.stdout and "sizes and checksums checked" in ok.stdout
    assert "pull: " in ok.stderr  # the plain progress line a job's log shows
    bad = subprocess.run([*cmd, "org/nope", "--to", str(tmp_path / "n")], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "Error: No model called org/nope" in bad.stderr
    assert "Traceback" not in bad.stderr
