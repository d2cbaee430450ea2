"""An OpenAI-compatible HTTP API for a base or tuned model: ``umtcds serve --model NAME|PATH [--adapter DIR]``.

Usage::

    umtcds serve --adapter runs/run-1                       # http://127.0.0.1:8000/v1
    UMTCDS_SERVE_API_KEY=... umtcds serve --adapter runs/run-1 --host 0.0.0.0 --port 8000
    umtcds serve --config settings.yaml [any flag above, which wins over the file]

Then any OpenAI client works::

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="...")
    client.chat.completions.create(model="run-1", messages=[{"role": "user", "content": "..."}], stream=True)

Endpoints: ``GET /v1/models``; ``POST /v1/chat/completions`` (``stream`` true → server-sent events ending with
``data: [DONE]``; ``max_tokens``/``max_completion_tokens``, ``temperature``, ``top_p``). With an adapter, ``/v1/models``
lists the tuned model (the run's name) and the base model; asking for the base name answers with the adapter
disabled — the same weights, no second load. ``GET /health`` needs no key.

Safety: binds 127.0.0.1 unless ``--host`` says otherwise, and warns when it listens beyond loopback without a key. The
key is read from the environment (``UMTCDS_SERVE_API_KEY``, or the variable named by ``--api-key-env``), never from
argv, and compared in constant time. One generation runs at a time (the model's lock); other requests wait.

Built on the standard library's ``ThreadingHTTPServer``: nothing to install, and one small model per process does not
need an async framework.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import json
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import schema as S
from .errors import UserError
from .model_settings import adapter_setting, device_setting, model_setting, need_model

setting = S.setting

DEFAULT_KEY_ENV = "UMTCDS_SERVE_API_KEY"
MAX_BODY = 4 * 1024 * 1024


class ServeError(UserError, ValueError):
    """A bad serve option."""


# ---- settings: each declared once (schema.py); the CLI flags and a --config YAML read them ------------------------
@dataclass
class ServeSettings:
    """What ``umtcds serve`` runs with: flags, a ``--config`` YAML, or both (flags win)."""

    model: str | None = model_setting()
    adapter: str | None = adapter_setting(
        comment="a run folder or one of its checkpoint-N folders; /v1/models then lists the tuned and the base model"
    )
    host: str = setting(
        "127.0.0.1",
        ("监听地址", "Host"),
        "address to bind; 127.0.0.1: this machine only, 0.0.0.0: every network (set an API key first)",
        help=(
            "127.0.0.1 只允许本机访问；0.0.0.0 对所有网络开放（请先设置 API 密钥）。",
            "127.0.0.1: this machine only; 0.0.0.0: every network (set an API key first).",
        ),
    )
    port: int = setting(
        8000,
        ("端口", "Port"),
        "TCP port; 0 = any free port (printed at start)",
        min=0,
        max=65535,
        range_msg=(
            "{value} is not a port; use 0–65535 (0 = any free port)",
            "{value} 不是端口号；请用 0–65535（0 表示任意空闲端口）",
        ),
    )
    api_key_env: str = setting(
        DEFAULT_KEY_ENV,
        ("API 密钥的环境变量名", "API key variable"),
        "environment variable holding the API key (never the key itself on the command line); unset: no key",
    )
    device: str | None = device_setting()


SERVE = S.from_dataclass(ServeSettings, "serve", title="UMTCDS serve settings — run with `umtcds serve --config`")
"""The serve step's schema: CLI flags and the settings YAML come from it."""


class _BadRequest(Exception):
    def __init__(self, status: int, message: str, code: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, api_key: str | None, key_env: str = DEFAULT_KEY_ENV) -> str | None:
    """The warning to print when the API is reachable beyond this machine without a key (else None)."""
    if is_loopback(host) or api_key:
        return None
    return (
        f"Warning: listening on {host} without an API key — anyone who can reach this port can use the model. "
        f"Set {key_env} to require one."
    )


class ChatAPI:
    """The request logic, separate from HTTP plumbing: validate a body, answer it (whole or as chunks)."""

    def __init__(self, chat_model, api_key: str | None = None, default_max_tokens: int = 256):
        self.cm = chat_model
        self.api_key = api_key or None
        self.default_max_tokens = default_max_tokens
        self.created = int(time.time())
        self.tuned_id = chat_model.name
        self.base_id = chat_model.base_name

    def model_ids(self) -> list[str]:
        return [self.tuned_id, self.base_id] if self.cm.has_adapter else [self.base_id]

    def models_payload(self) -> dict:
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": self.created, "owned_by": "umtcds"} for m in self.model_ids()
            ],
        }

    def authorized(self, header: str | None) -> bool:
        if not self.api_key:
            return True
        given = (header or "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), self.api_key.encode())

    def parse(self, body: dict) -> tuple[list[dict], Any, bool, str, bool]:
        """``(messages, options, use_adapter, model id, stream)`` or :class:`_BadRequest`."""
        from .chat import GenOptions

        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise _BadRequest(400, "'messages' must be a non-empty list of {role, content} objects.")
        messages = []
        for m in msgs:
            if not isinstance(m, dict) or m.get("role") not in {"system", "user", "assistant", "developer"}:
                raise _BadRequest(400, "Each message needs a role of system, user or assistant.")
            content = m.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
            if not isinstance(content, str):
                raise _BadRequest(400, "Each message needs a text 'content'.")
            messages.append({"role": "system" if m["role"] == "developer" else m["role"], "content": content})
        model_id = body.get("model") or self.model_ids()[0]
        if model_id not in self.model_ids():
            raise _BadRequest(404, f"Unknown model '{model_id}'; use one of {self.model_ids()}.", "model_not_found")
        use_adapter = self.cm.has_adapter and model_id == self.tuned_id
        try:
            max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or self.default_max_tokens)
            temperature = float(body.get("temperature", 0.7) if body.get("temperature") is not None else 0.7)
            top_p = float(body.get("top_p", 1.0) if body.get("top_p") is not None else 1.0)
        except (TypeError, ValueError) as exc:
            raise _BadRequest(400, "max_tokens, temperature and top_p must be numbers.") from exc
        if max_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
            raise _BadRequest(400, "Need max_tokens >= 1, temperature >= 0 and 0 < top_p <= 1.")
        options = GenOptions(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p)
        return messages, options, use_adapter, model_id, bool(body.get("stream"))

    def completion(self, messages, options, use_adapter: bool, model_id: str) -> dict:
        usage: dict = {}
        text = "".join(self.cm.stream(messages, options, use_adapter=use_adapter, usage=usage)).strip()
        finish = "length" if usage.get("completion_tokens", 0) >= options.max_new_tokens else "stop"
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {
                "prompt_tokens": usage.get("prompt_tokens", 0),
                "completion_tokens": usage.get("completion_tokens", 0),
                "total_tokens": usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0),
            },
        }


def make_handler(api: ChatAPI):
    class Handler(BaseHTTPRequestHandler):
        server_version = "umtcds-serve"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # one short line per request on stderr
            sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

        # ---- helpers
        def _json(self, status: int, payload: dict) -> None:
            data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            if status >= 400:  # the request body may be unread: do not reuse this connection
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, code: str = "invalid_request_error") -> None:
            self._json(status, {"error": {"message": message, "type": code, "code": code}})

        def _check_key(self) -> bool:
            if api.authorized(self.headers.get("Authorization")):
                return True
            self._error(401, "Missing or wrong API key; send it as 'Authorization: Bearer <key>'.", "invalid_api_key")
            return False

        # ---- routes
        def do_GET(self):  # noqa: N802 - http.server naming
            path = self.path.split("?")[0].rstrip("/")
            if path == "/health":
                return self._json(200, {"status": "ok"})
            if not self._check_key():
                return
            if path == "/v1/models":
                return self._json(200, api.models_payload())
            return self._error(404, f"No route {self.path}; use /v1/models or /v1/chat/completions.", "not_found")

        def do_POST(self):  # noqa: N802
            path = self.path.split("?")[0].rstrip("/")
            if path != "/v1/chat/completions":
                return self._error(404, f"No route {self.path}; use POST /v1/chat/completions.", "not_found")
            if not self._check_key():
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length <= 0 or length > MAX_BODY:
                    raise _BadRequest(400 if length <= 0 else 413, "Send a JSON body (at most 4 MiB).")
                try:
                    body = json.loads(self.rfile.read(length))
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise _BadRequest(400, f"The body is not valid JSON ({exc}).") from exc
                if not isinstance(body, dict):
                    raise _BadRequest(400, "The body must be a JSON object.")
                messages, options, use_adapter, model_id, stream = api.parse(body)
            except _BadRequest as exc:
                return self._error(exc.status, exc.message, exc.code)
            try:
                if stream:
                    return self._stream(messages, options, use_adapter, model_id)
                return self._json(200, api.completion(messages, options, use_adapter, model_id))
            except (BrokenPipeError, ConnectionResetError):
                return None
            except UserError as exc:
                return self._error(400, str(exc))

        def _stream(self, messages, options, use_adapter: bool, model_id: str) -> None:
            cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
            created = int(time.time())
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True

            def send(delta: dict, finish: str | None = None) -> None:
                chunk = {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model_id,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
                self.wfile.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
                self.wfile.flush()

            usage: dict = {}
            stop = threading.Event()
            pieces = api.cm.stream(messages, options, use_adapter=use_adapter, stop_event=stop, usage=usage)
            try:
                send({"role": "assistant", "content": ""})
                for piece in pieces:
                    send({"content": piece})
            finally:
                pieces.close()  # client gone: stops the generation, frees the lock
            finish = "length" if usage.get("completion_tokens", 0) >= options.max_new_tokens else "stop"
            send({}, finish)
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    return Handler


def make_server(
    chat_model, host: str = SERVE["host"].default, port: int = SERVE["port"].default, api_key: str | None = None
):
    """A ready (not yet serving) ``ThreadingHTTPServer``; ``port=0`` picks a free port (see ``server.server_port``)."""
    api = ChatAPI(chat_model, api_key=api_key)
    try:
        server = ThreadingHTTPServer((host, port), make_handler(api))
    except OSError as exc:
        raise ServeError(
            f"Cannot listen on {host}:{port} ({exc.strerror}); pick another --port or --host.",
            zh=f"无法监听 {host}:{port}（{exc.strerror}）；请换一个 --port 或 --host。",
        ) from exc
    server.daemon_threads = True
    server.api = api  # type: ignore[attr-defined]
    return server


# ---- CLI ------------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag (and ``--config``) from :data:`SERVE`."""
    SERVE.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from .chat import load_chat_model

    values = SERVE.from_args(args)
    need_model(values, ServeError, "serve")
    host, port, key_env = values["host"], values["port"], values["api_key_env"]
    api_key = os.environ.get(key_env) or None
    if warning := exposure_warning(host, api_key, key_env):
        print(warning, file=sys.stderr)
    cm = load_chat_model(values["model"], values["adapter"], device=values["device"])
    server = make_server(cm, host, port, api_key=api_key)
    host, port = server.server_address[:2]
    ids = ", ".join(server.api.model_ids())
    print(f"Serving {ids} at http://{host}:{port}/v1 (key {'required' if api_key else 'not required'})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        cm.unload()
    return 0
