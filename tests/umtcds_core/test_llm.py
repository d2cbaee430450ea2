"""The remote backends through the real zhipuai/openai SDKs against a local chat-completions server; the retry helper."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fake_llm_server import FakeLLMServer  # noqa: E402

from umtcds_core.llm import (  # noqa: E402
    AuthError,
    BackendConfigError,
    LLMError,
    OpenAIBackend,
    RetryPolicy,
    ZhipuBackend,
    make_backend,
    parse_retry_after,
    ping,
)

KEY = "sk-test-0123456789abcdef"


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def server():
    with FakeLLMServer(api_key=KEY) as srv:
        yield srv


def _openai(srv, sleeps=None, **policy) -> OpenAIBackend:
    return OpenAIBackend(
        "fake-model",
        KEY,
        srv.openai_base,
        timeout=5,
        retry=RetryPolicy(**policy),
        sleep=Sleeps() if sleeps is None else sleeps,
    )


def _zhipu(srv, sleeps=None, key=KEY, **policy) -> ZhipuBackend:
    return ZhipuBackend(
        "glm-4-flash",
        key,
        srv.zhipu_base,
        timeout=5,
        retry=RetryPolicy(**policy),
        sleep=Sleeps() if sleeps is None else sleeps,
    )


def test_zhipu_sdk_calls_the_paas_path_with_bearer_key_and_our_body(server):
    server.push_reply("你好")
    backend = _zhipu(server)
    assert backend.chat([{"role": "user", "content": "hi"}], max_tokens=7, temperature=0.0) == "你好"
    req = server.chat_requests()[0]
    assert req["path"] == "/api/paas/v4/chat/completions"
    assert req["headers"]["authorization"] == f"Bearer {KEY}"
    assert req["body"]["model"] == "glm-4-flash"
    assert req["body"]["max_tokens"] == 7
    assert req["body"]["messages"] == [{"role": "user", "content": "hi"}]
    assert backend.tokens_out >= 1
    assert KEY not in repr(backend)


def test_openai_429_retry_after_then_500_then_success_uses_one_retry_policy(server):
    server.push(429, headers={"Retry-After": "0.25"})
    server.push(500)
    server.push_reply("OK")
    sleeps = Sleeps()
    backend = _openai(server, sleeps, base_delay=0.5, max_attempts=4)
    assert backend.chat([{"role": "user", "content": "ping"}], max_tokens=4) == "OK"
    assert [r["path"] for r in server.chat_requests()] == ["/v1/chat/completions"] * 3
    assert sleeps[0] == pytest.approx(0.25)  # Retry-After honoured
    assert 0.5 <= sleeps[1] <= 1.0  # exponential (0.5 * 2**1) with jitter in [0.5, 1]
    assert backend.retries == 2


@pytest.mark.parametrize("make", [_openai, _zhipu])
def test_sdk_retries_are_off_so_one_500_is_one_request(server, make):
    server.push(500)
    with pytest.raises(LLMError, match="500"):
        make(server, max_attempts=1).chat([{"role": "user", "content": "x"}])
    assert len(server.chat_requests()) == 1


@pytest.mark.parametrize("make", [_openai, _zhipu])
def test_bad_key_raises_auth_error_at_once_without_the_key_in_the_message(server, make):
    bad = "sk-wrong-key-987654321"
    backend = make(server, key=bad) if make is _zhipu else OpenAIBackend("m", bad, server.openai_base, sleep=Sleeps())
    with pytest.raises(AuthError) as info:
        backend.chat([{"role": "user", "content": "x"}])
    assert "401" in str(info.value) and bad not in str(info.value)
    assert len(server.chat_requests()) == 1  # no retry on 401


def test_403_is_an_auth_error_and_404_a_config_error(server):
    server.push(403)
    with pytest.raises(AuthError):
        _openai(server).chat([{"role": "user", "content": "x"}])
    server.push(404)
    with pytest.raises(BackendConfigError, match="--base-url"):
        _openai(server).chat([{"role": "user", "content": "x"}])


def test_zhipu_no_balance_429_stops_instead_of_waiting(server):
    server.push(429, {"error": {"code": "1113", "message": "余额不足或无可用资源包"}})
    sleeps = Sleeps()
    with pytest.raises(AuthError):
        _zhipu(server, sleeps).chat([{"role": "user", "content": "x"}])
    assert sleeps == []


def test_timeouts_are_retried(server):
    calls = []

    def slow_once(body):
        calls.append(time.time())
        if len(calls) == 1:
            time.sleep(1.5)
        return "late but fine"

    server.responder = slow_once
    sleeps = Sleeps()
    backend = OpenAIBackend("m", KEY, server.openai_base, timeout=0.5, retry=RetryPolicy(base_delay=0.01), sleep=sleeps)
    assert backend.chat([{"role": "user", "content": "x"}]) == "late but fine"
    assert len(calls) == 2 and len(sleeps) == 1


def test_bad_request_is_permanent_and_not_retried(server):
    server.push(400, {"error": {"code": "1301", "message": "sensitive content"}})
    sleeps = Sleeps()
    with pytest.raises(LLMError, match="1301"):
        _zhipu(server, sleeps).chat([{"role": "user", "content": "x"}])
    assert sleeps == []


def test_chat_batch_keeps_order_under_concurrency(server):
    server.responder = lambda body: body["messages"][-1]["content"].upper()
    backend = _openai(server)
    convs = [[{"role": "user", "content": f"page {i}"}] for i in range(6)]
    assert backend.chat_batch(convs) == [f"PAGE {i}" for i in range(6)]


def test_make_backend_reads_the_key_from_the_named_env_var_and_secrets_toml(server, monkeypatch, tmp_path):
    monkeypatch.delenv("ZHIPUAI_API_KEY", raising=False)
    monkeypatch.setenv("UMTCDS_SECRETS_FILE", str(tmp_path / "none.toml"))
    with pytest.raises(AuthError, match="ZHIPUAI_API_KEY"):
        make_backend("zhipuai", base_url=server.zhipu_base)
    monkeypatch.setenv("MY_GLM_KEY", KEY)
    backend = make_backend("zhipuai", base_url=server.zhipu_base, api_key_env="MY_GLM_KEY")
    assert backend.model == "glm-4-flash"
    reply, seconds = ping(backend)
    assert reply and seconds >= 0
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(f'OPENAI_API_KEY = "{KEY}"\n')
    monkeypatch.setenv("UMTCDS_SECRETS_FILE", str(secrets))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    backend = make_backend("openai", base_url=server.openai_base)  # no --model: the first served model
    assert backend.model == "fake-model"
    assert any(r["path"] == "/v1/models" for r in server.requests)


def test_openai_without_key_or_url_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("UMTCDS_SECRETS_FILE", str(tmp_path / "none.toml"))
    with pytest.raises(AuthError, match="OPENAI_API_KEY"):
        make_backend("openai", "m")


def test_parse_retry_after_forms():
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    assert parse_retry_after({}) is None
    when = parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412470.0)
    assert when == pytest.approx(10.0)


def test_backoff_grows_exponentially_with_jitter_and_caps():
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0)
    for attempt, cap in [(0, 1), (1, 2), (2, 4), (5, 8)]:
        d = policy.delay(attempt, None)
        assert cap / 2 <= d <= cap
    assert policy.delay(3, 500.0) == policy.max_retry_after


def test_local_batched_generation_equals_one_prompt_at_a_time():
    """Left padding must not change what a prompt generates: a tiny random model from a config, greedy, batch 3 vs 1."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from umtcds_core.llm import LocalBackend
    from umtcds_core.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(cfg).eval()
    convs = [[{"role": "user", "content": "hello " * (7 * i + 1)}] for i in range(4)]  # different lengths
    batched = LocalBackend.from_loaded(tok, model, batch_size=3, gen_kwargs={"min_new_tokens": 6})
    single = LocalBackend.from_loaded(tok, model, batch_size=1, gen_kwargs={"min_new_tokens": 6})
    assert batched.chat_batch(convs, max_tokens=6) == [single.chat(c, max_tokens=6) for c in convs]
    assert batched.tokens_out == single.tokens_out == 24


def test_step_engine_gives_generates_replies_and_refills_finished_rows():
    """The CPU default (a running batch whose ended rows are replaced by the next prompt, the prompts' shared first
    tokens read once) against one static ``generate`` per batch: the same greedy replies, token count and ``done``
    stops, on prompts of five lengths in batches of 3 (so rows join a running batch)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from umtcds_core.llm import LocalBackend
    from umtcds_core.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    torch.manual_seed(1)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(cfg).eval()
    convs = [[{"role": "user", "content": "hello " * (5 * i + 1)}] for i in range(5)]
    reports: list[int] = []
    for done in (None, lambda text: len(text) > 12):
        plain = LocalBackend.from_loaded(tok, model, batch_size=3)
        plain.engine = "generate"
        step = LocalBackend.from_loaded(tok, model, batch_size=3)
        step.on_tokens = reports.append
        assert step.engine_for(model, {"max_new_tokens": 9, "do_sample": False}) == "step"  # the default on a CPU
        want = plain.chat_batch(convs, max_tokens=9, done=done)
        assert step.chat_batch(convs, max_tokens=9, done=done) == want and any(want)
        assert step.tokens_out == plain.tokens_out == sum(reports) > 0
        assert step.stats.get("early_stops", 0) == plain.stats.get("early_stops", 0)
        assert step.stats["shared_prompt_tokens"] >= 16  # the chat template's system prompt was read once
        reports.clear()
    # min_new_tokens (the benchmarks' fixed length), applied per row by the step engine: with the end token always
    # the model's first choice, every reply is exactly the floor's length of second choices, as generate gives
    hook = model.lm_head.register_forward_hook(lambda _m, _i, out: out.index_add(
        -1, torch.tensor([tok.eos_token_id]), torch.full((*out.shape[:-1], 1), 1e4)))  # fmt: skip
    try:
        replies = {}
        for engine in ("generate", "step"):
            b = LocalBackend.from_loaded(tok, model, batch_size=3, gen_kwargs={"min_new_tokens": 4})
            b.engine = engine
            assert b.engine_for(model, {"max_new_tokens": 9, "do_sample": False, "min_new_tokens": 4}) == engine
            replies[engine] = b.chat_batch(convs, max_tokens=9)
            assert b.tokens_out == 4 * len(convs)
        assert replies["step"] == replies["generate"] and all(replies["step"])
        assert LocalBackend.from_loaded(tok, model, batch_size=3).chat_batch(convs, max_tokens=9) == [""] * len(convs)
    finally:
        hook.remove()


# ---- the offline CPU path (issue 19 goal 5) -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smol_tokenizer():
    """The embedded model's tokenizer, read once (parsing its GGUF file takes seconds on a busy CPU)."""
    from umtcds_core.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


def _scripted_model(tok, scripts: dict[str, str]):
    """A tiny random llama whose greedy output is forced to a script per row (chosen by a word in the row's prompt),
    so early stopping can be checked on real ``generate`` calls with replies shaped like a rambling model's."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LogitsProcessor

    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    ids = {
        word: tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for word, text in scripts.items()
    }

    class Force(LogitsProcessor):
        def __init__(self):
            self.rows: list[list[int]] | None = None
            self.start = 0

        def __call__(self, input_ids, scores):
            if self.rows is None:  # first step of a generate() call: find each row's script from its prompt
                self.start = input_ids.shape[1]
                prompts = tok.batch_decode(input_ids)
                self.rows = [next(ids[w] for w in ids if w in p) for p in prompts]
            step = input_ids.shape[1] - self.start
            forced = torch.full_like(scores, -1e9)
            for r, script in enumerate(self.rows):
                forced[r, script[min(step, len(script) - 1)]] = 0.0
            return forced

    return model, Force


def test_early_stop_keeps_the_same_parsed_pairs_as_running_to_max_tokens(smol_tokenizer):
    """A reply stops once it holds the N pairs asked for, per row; the pairs qa.py keeps are those of the full run."""
    from transformers import LogitsProcessorList

    from umtcds_core.llm import LocalBackend
    from umtcds_core.qa import pairs_done, parse_pairs

    tok = smol_tokenizer
    rambling_json = "[" + ", ".join(f'{{"question": "Q{i}?", "answer": "Answer {i}."}}' for i in range(6)) + "]"
    lines = "Q: When does it open?\nA: At 8:30.\nQ: Where is it?\nA: Room 101,\nnext to the hall.\nQ: Phone?\nA: 0571."
    model, Force = _scripted_model(tok, {"alpha": rambling_json, "beta": lines, "gamma": "I cannot help with that."})
    convs = [[{"role": "user", "content": f"{w} page"}] for w in ("alpha", "beta", "gamma")]

    def run(done):
        backend = LocalBackend.from_loaded(tok, model, batch_size=3)
        backend.gen_kwargs["logits_processor"] = LogitsProcessorList([Force()])
        return backend.chat_batch(convs, max_tokens=200, done=done), backend

    full, b_full = run(None)
    early, b_early = run(pairs_done(2))
    assert [parse_pairs(r)[:2] for r in early] == [parse_pairs(r)[:2] for r in full]
    assert len(parse_pairs(full[0])) == 6 and len(parse_pairs(early[0])) == 2  # the rambling row stopped early
    assert parse_pairs(early[1])[1]["answer"] == "Room 101,\nnext to the hall."  # not cut while it still grew
    assert early[2] == full[2] == "I cannot help with that."  # no pairs: it runs to its own end
    assert all(f.startswith(e) for e, f in zip(early, full, strict=True))
    assert b_early.stats["early_stops"] == 2 and b_early.tokens_out < b_full.tokens_out


def test_cpu_threads_share_the_cores_with_other_running_jobs(tmp_path, monkeypatch):
    import json
    import os

    from umtcds_core.jobs import _proc_start_time
    from umtcds_core.llm import cpu_threads, other_compute_jobs

    monkeypatch.delenv("UMTCDS_CPU_THREADS", raising=False)
    assert cpu_threads(cores=2, others=0) == 2
    assert cpu_threads(cores=2, others=1) == 1
    assert cpu_threads(cores=8, others=2) == 2
    assert cpu_threads(cores=1, others=3) == 1
    monkeypatch.setenv("UMTCDS_CPU_THREADS", "3")
    assert cpu_threads(cores=2, others=1) == 3
    monkeypatch.delenv("UMTCDS_CPU_THREADS")

    jobs = tmp_path / "jobs"
    alive = {"pid": os.getpid(), "pid_start": _proc_start_time(os.getpid())}
    for name, step, meta, ended in [
        ("generate-me", "generate", alive, False),  # this process's own job
        ("train-1", "train", alive, False),  # running: counts
        ("serve-1", "serve", alive, False),  # mostly idle: does not count
        ("train-0", "train", alive, True),  # finished
    ]:
        (jobs / name).mkdir(parents=True)
        (jobs / name / "job.json").write_text(json.dumps({"step": step, **meta}))
        if ended:
            (jobs / name / "exit.json").write_text(json.dumps({"returncode": 0}))
    assert other_compute_jobs() == 0  # not a dashboard job
    monkeypatch.setenv("UMTCDS_PROGRESS_FILE", str(jobs / "generate-me" / "progress.json"))
    assert other_compute_jobs() == 1
    assert cpu_threads(cores=2) == 1
