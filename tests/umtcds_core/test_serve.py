"""Serve: the OpenAI-compatible API answered through the real ``openai`` client, streaming and not, on 127.0.0.1;
requests that arrive together answered in one batch; a full queue (503), a rate limit (429), a client that leaves
mid-stream; the students' page endpoints and feedback file. The page in a real browser: tests/browser."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from tests.chat_helpers import FACTS
from umtcds_core import grounding as g
from umtcds_core import serve

Q, A = FACTS[0]


ORIGIN = "https://www.zorvale.example"


def _start(chat_model, ready: bool = True, **settings):
    """A server on a free port, serving in a thread; ``ready``: after its warm-up answered (so the tests that count
    requests or hold the model's lock see only their own requests)."""
    srv = serve.make_server(chat_model, "127.0.0.1", 0, **settings)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    if ready:
        _wait(srv.api.ready.is_set, "the warm-up answer")
    return srv, thread


def _stop(srv, thread):
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(fact_chat_model, tmp_path_factory):
    srv, thread = _start(
        fact_chat_model,
        api_key="s3cret-key",
        feedback_dir=str(tmp_path_factory.mktemp("feedback")),
        allow_origin=[ORIGIN],
        examples=["When does the library close?"],
    )
    yield srv
    _stop(srv, thread)


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


# ---- many students at once -------------------------------------------------------------------------------------
def _stats(server, key="s3cret-key") -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.server_port}/v1/stats", headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def _wait(check, what: str, timeout_s: float = 60.0):
    import time

    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(0.05)
    return value


def test_sixteen_concurrent_clients_are_answered_in_batches(server):
    """16 openai clients in threads at once: every answer right, and the server decoded them in batches (> 1)."""
    from concurrent.futures import ThreadPoolExecutor

    before = _stats(server)

    def ask(i):
        q, a = FACTS[i % len(FACTS)]
        resp = _client(server).chat.completions.create(
            model="run", messages=[{"role": "user", "content": q}], temperature=0, max_tokens=20
        )
        return resp.choices[0].message.content, a

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(ask, range(16)))
    assert all(got == want for got, want in results), results
    after = _stats(server)
    assert after["answered"] - before["answered"] == 16
    assert after["max_batch_seen"] > 1 and after["batches"] - before["batches"] < 16, after


def test_full_queue_is_503_with_retry_after_and_the_server_goes_on(fact_chat_model):
    """One request running, one waiting (queue_size=1): the third is refused at once, not queued or crashed.

    The test holds the model's lock, so the worker is stuck on the first request until the refusal was seen."""
    import openai

    srv, thread = _start(fact_chat_model, queue_size=1, max_batch=1, batch_wait_ms=0)
    client = _client(srv, key="x")
    answers: list[str] = []

    def ask():
        resp = client.chat.completions.create(model="run", messages=[{"role": "user", "content": Q}],
                                              temperature=0, max_tokens=20)  # fmt: skip
        answers.append(resp.choices[0].message.content)

    workers = [threading.Thread(target=ask) for _ in range(2)]
    try:
        with fact_chat_model.lock:
            workers[0].start()
            _wait(lambda: _stats(srv)["running"] == 1, "the first request to reach the model")
            workers[1].start()
            _wait(lambda: _stats(srv)["queued"] == 1, "the second request to wait in the queue")
            url = f"http://127.0.0.1:{srv.server_port}/v1/chat/completions"
            body = json.dumps({"model": "run", "messages": [{"role": "user", "content": Q}]}).encode()
            req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=10)
            assert err.value.code == 503 and int(err.value.headers["Retry-After"]) >= 1
            assert "busy" in json.load(err.value)["error"]["message"]
            with pytest.raises(openai.InternalServerError):  # the openai client sees it as a server-side refusal
                client.chat.completions.create(model="run", messages=[{"role": "user", "content": Q}])
        for w in workers:
            w.join(timeout=60)
        assert answers == [A, A]
        assert _stats(srv)["rejected_full"] == 2
    finally:
        _stop(srv, thread)


def _health(srv) -> tuple[int, dict, str | None]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.server_port}/health", timeout=10) as r:
            return r.status, json.load(r), None
    except urllib.error.HTTPError as err:
        return err.code, json.load(err), err.headers.get("Retry-After")


def test_health_says_warming_until_the_warm_up_answered(fact_chat_model):
    """The warm-up is one short answer through the queue: while it cannot reach the model (the test holds the
    model's lock), /health is 503 "warming" with Retry-After and a question waits; then "ok" and both answered."""
    srv, thread = _start(fact_chat_model, ready=False)
    answers: list[str] = []

    def ask():
        resp = _client(srv, key="x").chat.completions.create(
            model="run", messages=[{"role": "user", "content": Q}], temperature=0, max_tokens=20
        )
        answers.append(resp.choices[0].message.content)

    asker = threading.Thread(target=ask)
    try:
        with fact_chat_model.lock:
            _wait(lambda: _stats(srv)["running"] == 1, "the warm-up to reach the model")
            status, body, retry = _health(srv)
            assert (status, body) == (503, {"status": "warming"}) and int(retry) >= 1
            asker.start()
            _wait(lambda: _stats(srv)["queued"] == 1, "a question to wait behind the warm-up")
            assert not srv.api.ready.is_set() and srv.api.warmup_s is None
        _wait(lambda: _health(srv)[:2] == (200, {"status": "ok"}), "/health to say ok after the warm-up")
        asker.join(timeout=60)
        assert answers == [A]
        stats = _stats(srv)
        assert stats["ready"] and stats["warmup_s"] > 0 and stats["answered"] == 2 and not srv.api.warmup_error
    finally:
        _stop(srv, thread)
    off = serve.make_server(fact_chat_model, "127.0.0.1", 0, warmup=False)  # --no-warmup: ready at once
    try:
        assert off.api.ready.is_set() and off.api.warmup_s is None
    finally:
        off.server_close()


def test_rate_limit_is_429(fact_chat_model):
    import openai

    srv, thread = _start(fact_chat_model, rate_limit="2/min")
    try:
        client = _client(srv, key="x")
        for _ in range(2):
            client.chat.completions.create(model="run", messages=[{"role": "user", "content": Q}], max_tokens=2)
        with pytest.raises(openai.RateLimitError) as err:
            client.chat.completions.create(model="run", messages=[{"role": "user", "content": Q}], max_tokens=2)
        assert "Too many requests" in str(err.value) and int(err.value.response.headers["Retry-After"]) >= 1
        assert json.load(urllib.request.urlopen(f"http://127.0.0.1:{srv.server_port}/health", timeout=10))
    finally:
        _stop(srv, thread)


def test_bad_requests_and_a_client_leaving_mid_stream(server):
    """Oversized max_tokens, an unknown route, a client that hangs up mid-answer: a status + one sentence each, and
    the server still answers the next request."""
    import httpx
    import openai

    with pytest.raises(openai.BadRequestError) as err:
        _client(server).chat.completions.create(
            model="run", messages=[{"role": "user", "content": Q}], max_tokens=100_000
        )
    assert "ask for at most 512" in str(err.value)
    url = f"http://127.0.0.1:{server.server_port}"
    r = httpx.get(url + "/v1/nothing", headers={"Authorization": "Bearer s3cret-key"})
    assert r.status_code == 404 and r.json()["error"]["message"].startswith("No route /v1/nothing")
    cancelled = _stats(server)["cancelled"]
    body = {"model": server.api.base_id, "messages": [{"role": "user", "content": Q}], "stream": True,
            "max_tokens": 500, "temperature": 1.0}  # fmt: skip  # the untuned base rambles on: still going when we leave
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": "Bearer s3cret-key"}) as resp:  # fmt: skip
        for line in resp.iter_lines():  # leave right after the first piece of the answer
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                break
        else:
            raise AssertionError("the answer ended before the client could leave")
    _wait(lambda: _stats(server)["cancelled"] > cancelled, "the server to stop the abandoned answer")
    resp = _client(server).chat.completions.create(
        model="run", messages=[{"role": "user", "content": Q}], temperature=0, max_tokens=20, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(resp)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip() == A
    assert chunks[-1].usage.completion_tokens > 0


# ---- the students' page ------------------------------------------------------------------------------------------
def _page_events(server, messages) -> list[dict]:
    import httpx

    url = f"http://127.0.0.1:{server.server_port}/page/chat"
    with httpx.stream("POST", url, json={"messages": messages}, timeout=60) as resp:
        assert resp.status_code == 200
        return [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: ")]


def test_page_chat_and_feedback_file_without_ip(server):
    """The page's own endpoints need no key: a streamed answer with an id, then 👎 + a correction in feedback.jsonl."""
    import httpx

    url = f"http://127.0.0.1:{server.server_port}"
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "assets/chat.js" in page.text
    assert f"frame-ancestors 'self' {ORIGIN}" == page.headers["content-security-policy"]
    assert (
        httpx.get(url + "/assets/chat.js").status_code == 200 and "umtcds-bubble" in httpx.get(url + "/widget.js").text
    )
    assert httpx.get(url + "/page.json").json()["examples"] == ["When does the library close?"]
    events = _page_events(server, [{"role": "user", "content": Q}])
    assert [e["type"] for e in events][-1] == "done" and len(events) > 2
    done = events[-1]
    assert "".join(e["text"] for e in events if e["type"] == "delta").strip() == done["text"] == A
    assert done["no_answer"] is False and done["sources"] == []
    r = httpx.post(url + "/v1/feedback", json={"answer_id": done["answer_id"], "rating": "down",
                                               "correction": "It is ZV-Air-9000 since May."})  # fmt: skip
    assert r.status_code == 200
    bad = httpx.post(url + "/v1/feedback", json={"answer_id": done["answer_id"], "rating": "meh"})
    assert bad.status_code == 400 and "rating" in bad.json()["error"]["message"]
    empty = httpx.post(url + "/page/chat", json={"messages": [{"role": "user", "content": "  "}]})
    assert empty.status_code == 400 and empty.json()["error"]["message"] == "The question is empty; type a question."
    rows = [json.loads(x) for x in server.api.feedback_file.read_text(encoding="utf-8").splitlines()]
    assert server.api.feedback_file.parent.name == "serve" and server.api.feedback_file.name == "feedback.jsonl"
    last = rows[-1]
    assert (last["question"], last["answer"], last["rating"]) == (Q, A, "down") and last["verified"] is True
    assert last["correction"] == "It is ZV-Air-9000 since May."
    assert "127.0.0.1" not in json.dumps(rows)  # no client address stored


def test_question_log_is_opt_in_and_holds_no_ip(server, fact_chat_model, tmp_path):
    """--log-questions: each answered question (page or API) → serve/questions.jsonl with its refusal flag; off by
    default (the module's server wrote none)."""
    assert server.api.questions_file is None
    assert not (server.api.feedback_file.parent / "questions.jsonl").exists()
    srv, thread = _start(fact_chat_model, feedback_dir=str(tmp_path), log_questions=True, answer_tokens=24)
    try:
        done = _page_events(srv, [{"role": "user", "content": Q}])[-1]
        _client(srv, key="x").chat.completions.create(
            model="run", messages=[{"role": "user", "content": FACTS[1][0]}], temperature=0, max_tokens=24
        )
    finally:
        _stop(srv, thread)
    rows = [json.loads(x) for x in (tmp_path / "serve" / "questions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["via"], r["question"], r["answer"], r["refused"]) for r in rows] == [
        ("page", Q, A, False), ("api", FACTS[1][0], FACTS[1][1], False)
    ]  # fmt: skip
    assert rows[0]["answer_id"] == done["answer_id"] and rows[0]["sources"] == []
    assert "127.0.0.1" not in json.dumps(rows)


def test_cors_only_for_allowed_origins(server):
    import httpx

    url = f"http://127.0.0.1:{server.server_port}/v1/chat/completions"
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    ok = httpx.options(url, headers={"Origin": ORIGIN, **pre})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.options(url, headers={"Origin": "https://evil.example", **pre})
    assert "access-control-allow-origin" not in other.headers


def test_serve_settings_refuse_bad_values(fact_chat_model):
    with pytest.raises(serve.S.SettingsError, match="rate_limit: 'often' is not a rate; write it like 10/min"):
        serve.make_server(fact_chat_model, "127.0.0.1", 0, rate_limit="often")
    with pytest.raises(serve.S.SettingsError, match="must look like https://www.example.edu"):
        serve.make_server(fact_chat_model, "127.0.0.1", 0, allow_origin=["www.example.edu/path"])


def test_rag_returns_sources_on_the_reply_and_in_the_last_stream_chunk(fact_chat_model, demo_index):
    """Issue 15 §2: `serve --rag INDEX` answers from the index and returns `sources` (url, title) through the openai
    client, plain and streamed; a missing index is one sentence before serving."""
    from openai import OpenAI

    _pages, index_dir = demo_index
    srv, thread = _start(fact_chat_model, rag=str(index_dir), rag_k=3)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{srv.server_port}/v1", api_key="x", max_retries=0, timeout=120)
        question = "When does the library open on weekdays?"
        resp = client.chat.completions.create(
            model="run", messages=[{"role": "user", "content": question}], temperature=0, max_tokens=8
        )
        sources = resp.choices[0].message.model_extra["sources"]
        assert sources and all(s["url"].startswith("http") and s["title"] for s in sources)
        assert sources[0]["n"] == 1 and "librar" in (sources[0]["title"] + sources[0]["url"]).lower()
        # marked for this answer (grounding.mark_sources); the passages' text stays on the server
        assert all(set(s) == {"n", "url", "title", "cited", "matched"} for s in sources)
        answer = resp.choices[0].message.content
        assert [s["n"] for s in sources if s["cited"]] == sorted(n for n in set(g.cited(answer)) if n <= len(sources))
        assert sum(s["matched"] for s in sources) <= (0 if g.cited(answer) else 1)  # one page, only when none cited
        chunks = list(
            client.chat.completions.create(
                model="run", messages=[{"role": "user", "content": question}], temperature=0, max_tokens=8, stream=True
            )
        )
        assert chunks[-1].choices[0].delta.model_extra["sources"] == sources
    finally:
        _stop(srv, thread)
    from umtcds_core.errors import UserError

    with pytest.raises(UserError, match="index"):
        serve.make_server(fact_chat_model, "127.0.0.1", 0, rag=str(index_dir.parent / "no-index"))


# ---- the step engine: requests join the running batch between decoding steps (issue 16 §1) -------------------------
def _engine_job(engine, content: str, max_new_tokens: int = 24, temperature: float = 0.0, use_adapter: bool = True):
    import queue
    import time

    from umtcds_core.chat import GenOptions

    options = GenOptions(max_new_tokens=max_new_tokens, temperature=temperature, top_p=0.9)
    job = serve.Job([{"role": "user", "content": content}], options, use_adapter,
                    deadline=time.monotonic() + 120, out=queue.Queue())  # fmt: skip
    engine.submit(job)
    return job


def _answered(job):
    while True:
        kind, value = job.out.get(timeout=120)
        if kind == "error":
            raise value
        if kind == "end":
            return job


def _generate_greedy(cm, content: str, max_new_tokens: int, use_adapter: bool) -> tuple[str, int]:
    """One plain ``model.generate`` for the request: greedy, the same loop check and clean-up; (text, tokens)."""
    import torch
    from transformers import StoppingCriteriaList

    from umtcds_core.chat import GenOptions, _StopOnRepetition, final_text

    enc = cm.encode([[{"role": "user", "content": content}]])
    n = enc["input_ids"].shape[1]
    stop = StoppingCriteriaList([_StopOnRepetition(cm.tokenizer, n)])
    kwargs = cm._gen_kwargs(GenOptions(max_new_tokens=max_new_tokens, temperature=0.0))
    with cm.lock, cm._mode(use_adapter) as m, torch.inference_mode():
        new = m.generate(**enc, **kwargs, stopping_criteria=stop)[0, n:].tolist()
    ends = [i for i, t in enumerate(new) if t in serve._eos_ids(cm)]
    new = new[: ends[0]] if ends else new
    return final_text(cm.tokenizer.decode(new, skip_special_tokens=True)), len(new)


def test_step_engine_greedy_equals_generate(fact_chat_model, tmp_path):
    """fp32 CPU: one request through the step engine's own decoding loop gives exactly the tokens of one greedy
    ``generate`` — tuned (LoRA through peft's forward), base (adapter disabled), and a tiny random GLM (the shape the
    GPU serves: partial rotary, attention bias)."""
    from tests.train_helpers import make_tiny_model
    from umtcds_core.chat import load_chat_model

    glm = load_chat_model(str(make_tiny_model(tmp_path / "glm", arch="glm")), device="cpu")
    cases = [(fact_chat_model, Q, True, 24), (fact_chat_model, "Tell me about the gym.", False, 24),
             (glm, "Tell me about the gym.", False, 16)]  # fmt: skip
    for cm, content, use_adapter, n in cases:
        engine = serve.BatchEngine(cm, max_batch=4, wait_s=0.0)
        try:
            assert engine.snapshot()["engine"] == "step" and engine.engine_note is None
            job = _answered(_engine_job(engine, content, n, use_adapter=use_adapter))
        finally:
            engine.close()
        want = _generate_greedy(cm, content, n, use_adapter)
        assert (job.text, job.completion_tokens) == want and want[1] >= 4, (content, use_adapter)


def test_a_request_joining_a_running_batch_gets_its_solo_answer(fact_chat_model):
    """Held at the model's lock, the worker has taken the first request; two more (one greedy, one sampled) arrive
    and join it between decoding steps — their prompts have another length, so the caches are left-padded and
    merged. The greedy late-comer's answer is the one it gets alone (fp32, exact), every row ends on its own."""
    (q1, a1), (q2, a2) = FACTS[0], FACTS[2]
    engine = serve.BatchEngine(fact_chat_model, max_batch=4, wait_s=0.0)
    try:
        solo = _answered(_engine_job(engine, q2)).text
        with fact_chat_model.lock:
            first = _engine_job(engine, q1)
            _wait(lambda: engine.snapshot()["running"] == 1, "the worker to take the first request")
            late, sampled = _engine_job(engine, q2), _engine_job(engine, q2, temperature=0.8)
            _wait(lambda: engine.snapshot()["queued"] == 2, "two requests to wait")
        for job in (first, late, sampled):
            _answered(job)
        assert first.text == a1 and late.text == solo == a2 and first.finish == late.finish == "stop"
        assert sampled.finish in ("stop", "length") and sampled.completion_tokens > 0
        stats = _wait(lambda: (s := engine.snapshot())["batches"] == 2 and s, "the worker to count the batch")
        assert stats["joined"] == 2 and stats["max_batch_seen"] == 3 and stats["batch_sizes"] == {1: 1, 3: 1}
        assert stats["answered"] == 4 and stats["running"] == 0 and stats["queued"] == 0
    finally:
        engine.close()


def test_prefix_adapter_is_served_by_the_batch_engine(fact_chat_model, tmp_path):
    """P-tuning v2 (prefix) keeps its own past keys per row: the step engine says so and the batch engine (one
    generate per batch) answers instead; an unknown engine name is refused."""
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from umtcds_core.chat import ChatModel

    tok = fact_chat_model.tokenizer
    base = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, pad_token_id=tok.pad_token_id))  # fmt: skip
    model = get_peft_model(base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)).eval()
    cm = ChatModel(tokenizer=tok, model=model, base_ref="tiny", adapter_dir=tmp_path, adapter_kind="PREFIX_TUNING")
    assert "prompt-learning" in serve.step_engine_blocker(cm)
    engine = serve.BatchEngine(cm, wait_s=0.0, engine="step")
    try:
        assert engine.snapshot()["engine"] == "batch" and "P-tuning v2" in engine.engine_note
        job = _answered(_engine_job(engine, Q, 4))
        assert job.finish in ("stop", "length") and job.prompt_tokens > 0
    finally:
        engine.close()
    with pytest.raises(serve.S.SettingsError, match="engine"):
        serve.make_server(fact_chat_model, "127.0.0.1", 0, engine="fast")
