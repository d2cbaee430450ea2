"""API keys and the dashboard password: read from the environment or ``.streamlit/secrets.toml``, never written.

Why a module: keys must never reach configs, logs, manifests or datasets. Everything that needs a key asks here by
*variable name* (what configs store), and everything that shows one uses :func:`mask`.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def secrets_file() -> Path:
    return Path(os.environ.get("UMTCDS_SECRETS_FILE", PROJECT_ROOT / ".streamlit" / "secrets.toml"))


def _from_secrets_toml(name: str) -> str | None:
    path = secrets_file()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return None
    value = data.get(name)
    return str(value) if value else None


def get_secret(name: str) -> str | None:
    """The value of ``name`` from the environment first, then ``.streamlit/secrets.toml``; None when unset."""
    value = os.environ.get(name)
    if value:
        return value
    return _from_secrets_toml(name)


def mask(secret: str | None) -> str:
    """``sk-abcdef123456`` → ``sk-a…3456``: enough to recognise a key, not to use it."""
    if not secret:
        return ""
    if len(secret) <= 8:
        return "•" * len(secret)
    return f"{secret[:4]}…{secret[-4:]}"


def redact(text: str, secrets: list[str | None]) -> str:
    """Replace every occurrence of the given secrets in ``text`` (e.g. an error message from an SDK) by its mask."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, mask(s))
    # Bearer tokens echoed back by servers
    return re.sub(r"(Bearer\s+)[A-Za-z0-9._\-]{8,}", r"\1[redacted]", text)


def is_loopback(host: str) -> bool:
    return host in {"localhost", "::1"} or host.startswith("127.")


def public_without_password(host: str) -> bool:
    """True (and a warning on stderr) when the dashboard would listen beyond loopback with no UMTCDS_PASSWORD."""
    import sys

    if is_loopback(host) or get_secret("UMTCDS_PASSWORD"):
        return False
    print(
        f"WARNING: the dashboard will listen on {host}, reachable from other machines, and UMTCDS_PASSWORD is not set: "
        "anyone who reaches it can read your files and API keys. Set UMTCDS_PASSWORD (env or .streamlit/secrets.toml).",
        file=sys.stderr,
    )
    return True
