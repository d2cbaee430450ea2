"""A local stand-in for cloud chat-completions APIs (Zhipu, OpenAI-compatible), speaking their wire format.

The cloud cannot be reached from the test machines, so this real ``ThreadingHTTPServer`` on 127.0.0.1 answers
``POST …/chat/completions`` (the zhipuai SDK calls ``{base_url}/chat/completions`` with base ``…/api/paas/v4``, the
openai SDK ``{base_url}/chat/completions`` with base ``…/v1``) and ``GET …/models``. Tests script replies — 429 with
Retry-After, 500, 401, unparseable text, good JSON arrays — and assert on what the server received.

Usage::

    with FakeLLMServer(api_key="sk-test-123") as srv:
        srv.push(429, headers={"Retry-After": "0"})
        backend = make_backend("openai", "m", srv.openai_base, api_key=...)
        ...
        assert srv.requests[0]["headers"]["authorization"] == "Bearer sk-test-123"
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[dict], str]


def completion(content: str, model: str = "fake-model") -> dict:
    """A chat-completions response body with one choice."""
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "request_id": "req-fake",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": max(1, len(content) // 4), "total_tokens": 10},
    }


def _quoted_text(message: str) -> str:
    """The page text our prompt templates put between triple quotes (the last such block)."""
    blocks = re.findall(r'"""\n(.*?)\n"""', message, re.S)
    return blocks[-1] if blocks else message


def default_responder(body: dict) -> str:
    """Play a well-behaved LLM for our default prompts: clean → echo the text; judge → a score; Q&A → a JSON array
    (in a fence, with prose around it) whose answers are sentences of the page, so they pass the grounding check;
    paraphrase → each question reworded; unanswerable → questions about things no test page mentions (chargers, a
    director's school); "does the text answer it?" → no."""
    messages = body.get("messages") or []
    system = " ".join(m.get("content", "") for m in messages if m.get("role") == "system").lower()
    last = messages[-1].get("content", "") if messages else ""
    text = _quoted_text(last)
    if "paraphrase" in system or "改写" in system:  # one reworded question per line of the block, same order
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return json.dumps([f"请问，{q}" if re.search(r"[\u4e00-\u9fff]", q) else f"Tell me: {q}" for q in lines])
    if "yes or no" in system or "是或否" in system:  # does the text answer the question? our questions: no
        return "no" if "yes or no" in system else "否"
    if "does not answer" in system or "NOT answer" in system or "没有回答" in system:
        topic = (text.strip().splitlines() or ["the office"])[0].strip()[:20]
        n = int((re.search(r"(?:Write|写)\s*(\d+)", last) or [0, 1])[1])
        if re.search(r"[\u4e00-\u9fff]", text):
            asked = [f"{topic}附近有多少个电动车充电桩？", f"{topic}的负责人毕业于哪所学校？"]
        else:
            asked = [
                f"How many electric scooter chargers are there near {topic}?",
                f"Which school did the director of {topic} graduate from?",
            ]
        return json.dumps(asked[:n], ensure_ascii=False)
    if "rate" in system or "评分" in system:
        return "Score: 4"
    if "clean" in system or "清洗" in system:
        return text
    sentences = [s.strip() for s in re.split(r"(?<=[.!?。！？])\s*|\n+", text) if len(s.strip()) > 12]
    pairs = []
    for i, s in enumerate(sentences[:3]):
        topic = s.split()[0] if " " in s else s[:6]
        pairs.append({"question": f"What does the page say about {topic} (fact {i + 1})?", "answer": s})
    return "Here are the pairs:\n```json\n" + json.dumps(pairs, ensure_ascii=False, indent=1) + "\n```\nDone."


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # a client that hangs up (a stopped job) is not an error here
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class FakeLLMServer:
    """A scripted chat-completions server. ``push`` queues replies; when the queue is empty ``responder`` answers."""

    def __init__(self, api_key: str | None = None, responder: Responder | None = None, models=("fake-model",)):
        self.api_key = api_key
        self.responder = responder or default_responder
        self.models = list(models)
        self.requests: list[dict[str, Any]] = []
        self._script: deque[tuple[int, Any, dict]] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- scripting ------------------------------------------------------------------------------------------------
    def push(self, status: int = 200, body: Any = None, headers: dict | None = None) -> None:
        """Queue one reply: ``body`` may be a dict (sent as JSON), a str (sent as the assistant's content when the
        status is 200, else raw), or None (an error body for non-200)."""
        with self._lock:
            self._script.append((status, body, headers or {}))

    def push_reply(self, content: str) -> None:
        self.push(200, content)

    def chat_requests(self) -> list[dict]:
        return [r for r in self.requests if r["path"].endswith("/chat/completions")]

    # ---- lifecycle ------------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def openai_base(self) -> str:
        return self.url + "/v1"

    @property
    def zhipu_base(self) -> str:
        return self.url + "/api/paas/v4"

    def start(self) -> FakeLLMServer:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, status: int, payload: Any, headers: dict | None = None) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, str(v))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if outer.api_key is None:
                    return True
                if self.headers.get("Authorization") == f"Bearer {outer.api_key}":
                    return True
                self._send(401, {"error": {"message": "Invalid API key", "type": "invalid_request_error"}})
                return False

            def do_GET(self):  # noqa: N802 - http.server naming
                outer.requests.append(
                    {"method": "GET", "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
                )
                if not self._authorised():
                    return
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in outer.models]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):  # noqa: N802 - http.server naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"_raw": raw.decode("utf-8", "replace")}
                with outer._lock:
                    outer.requests.append(
                        {
                            "method": "POST",
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                        }
                    )
                if not self.path.endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                if not self._authorised():
                    return
                with outer._lock:
                    scripted = outer._script.popleft() if outer._script else None
                if scripted is None:
                    self._send(200, completion(outer.responder(body), body.get("model", "fake-model")))
                    return
                status, payload, headers = scripted
                if status == 200:
                    payload = completion(payload, body.get("model", "fake")) if isinstance(payload, str) else payload
                elif payload is None:
                    payload = {"error": {"code": str(status), "message": f"scripted HTTP {status}"}}
                elif isinstance(payload, str):
                    payload = payload.encode()
                self._send(status, payload, headers)

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-llm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":  # a manual server for trying the dashboard: python tests/fake_llm_server.py
    import sys

    srv = FakeLLMServer(api_key=sys.argv[1] if len(sys.argv) > 1 else None).start()
    print(f"openai base: {srv.openai_base}   zhipu base: {srv.zhipu_base}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()
