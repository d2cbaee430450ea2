"""Serve: the OpenAI-compatible API answered through the real ``openai`` client, streaming and not, on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from tests.chat_helpers import FACTS
from umtcds_core import serve

Q, A = FACTS[0]


@pytest.fixture(scope="module")
def server(fact_chat_model):
    srv = serve.make_server(fact_chat_model, "127.0.0.1", 0, api_key="s3cret-key")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=10)


def _client(server, key="s3cret-key"):
    from openai import OpenAI

    return OpenAI(base_url=f"http://127.0.0.1:{server.server_port}/v1", api_key=key, max_retries=0, timeout=60)


def test_models_lists_tuned_and_base(server):
    ids = [m.id for m in _client(server).models.list()]
    assert ids == [server.api.tuned_id, server.api.base_id] and ids[0] == "run"


def test_completion_non_streaming(server):
    resp = _client(server).chat.completions.create(
        model="run", messages=[{"role": "user", "content": Q}], temperature=0, max_tokens=20
    )
    assert resp.choices[0].message.content == A and resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    base = _client(server).chat.completions.create(
        model=server.api.base_id, messages=[{"role": "user", "content": Q}], temperature=0, max_tokens=20
    )
    assert A not in base.choices[0].message.content  # same weights, adapter disabled


def test_completion_streaming(server):
    stream = _client(server).chat.completions.create(
        model="run", messages=[{"role": "user", "content": Q}], temperature=0, max_tokens=20, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.strip() == A
    assert sum(1 for c in chunks if c.choices[0].delta.content) > 1  # really streamed in pieces
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_auth_and_bad_requests(server):
    import openai

    with pytest.raises(openai.AuthenticationError):
        _client(server, key="wrong").models.list()
    with pytest.raises(openai.NotFoundError):
        _client(server).chat.completions.create(model="nope", messages=[{"role": "user", "content": Q}])
    with pytest.raises(openai.BadRequestError):
        _client(server).chat.completions.create(model="run", messages=[])
    url = f"http://127.0.0.1:{server.server_port}"
    with urllib.request.urlopen(url + "/health", timeout=10) as r:  # no key needed
        assert json.load(r) == {"status": "ok"}
    req = urllib.request.Request(url + "/v1/chat/completions", data=b"{not json", method="POST",
                                 headers={"Authorization": "Bearer s3cret-key", "Content-Type": "application/json"})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 400 and "not valid JSON" in json.load(err.value)["error"]["message"]


def test_exposure_warning():
    assert serve.is_loopback("127.0.0.1") and serve.is_loopback("::1") and serve.is_loopback("localhost")
    assert not serve.is_loopback("0.0.0.0") and not serve.is_loopback("192.168.1.5")
    assert serve.exposure_warning("127.0.0.1", None) is None
    assert serve.exposure_warning("0.0.0.0", "key") is None
    assert "without an API key" in serve.exposure_warning("0.0.0.0", None, "MY_KEY_ENV")
    assert "MY_KEY_ENV" in serve.exposure_warning("0.0.0.0", None, "MY_KEY_ENV")


def test_cli_serve_subprocess_with_key_from_env(fact_adapter):
    """The real `umtcds serve` command: key from the environment (never argv), any free port, SIGINT stops it."""
    import os
    import signal
    import subprocess
    import sys

    env = {**os.environ, "CAMPUS_KEY": "k-123"}
    argv = [sys.executable, "-m", "umtcds_core.cli", "serve", "--adapter", str(fact_adapter), "--port", "0"]
    proc = subprocess.Popen(
        [*argv, "--device", "cpu", "--api-key-env", "CAMPUS_KEY"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("Serving run, tiny-llama at http://127.0.0.1:") and "key required" in line
        port = int(line.split("127.0.0.1:")[1].split("/")[0])
        from openai import OpenAI

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k-123", max_retries=0, timeout=60)
        resp = client.chat.completions.create(
            model="run", messages=[{"role": "user", "content": Q}], temperature=0, max_tokens=20
        )
        assert resp.choices[0].message.content == A
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


def test_cli_serve_settings_file_with_a_flag_that_wins(fact_adapter, tmp_path):
    """`umtcds serve --config` on a YAML written from the schema; ``--port 0`` on the command line wins over its 8000."""
    import os
    import signal
    import subprocess
    import sys

    settings = tmp_path / "serve.yaml"
    serve.SERVE.save_yaml({"adapter": str(fact_adapter), "device": "cpu", "api_key_env": "CAMPUS_KEY"}, settings)
    assert serve.SERVE.load_yaml(settings)["port"] == 8000  # the declared default, written into the file
    env = {**os.environ, "CAMPUS_KEY": "k-123"}
    argv = [sys.executable, "-m", "umtcds_core.cli", "serve", "--config", str(settings), "--port", "0"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("Serving run, tiny-llama at http://127.0.0.1:") and "key required" in line
        assert not line.startswith("Serving run, tiny-llama at http://127.0.0.1:8000/")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


def test_cli_serve_bad_value_is_one_sentence_and_exit_1(tmp_path, capsys):
    from umtcds_core.cli import main

    assert main(["serve", "--model", "smollm2-135m", "--port", "70000"]) == 1
    err = capsys.readouterr().err
    assert (
        err.strip() == "Error: The settings has a problem — port: 70000 is not a port; use 0–65535 (0 = any free port)"
    )
    settings = tmp_path / "serve.yaml"
    settings.write_text("model: smollm2-135m\nhost: ''\n", encoding="utf-8")
    assert main(["serve", "--config", str(settings)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"Error: {settings} has a problem — host: must be non-empty text") and "Traceback" not in err
    assert main(["serve"]) == 1 and capsys.readouterr().err.startswith("Error: Give --model")
