"""What the Chat page's Publish section needs to know about a running ``umtcds serve`` job: its address, whether it
answers, the line to paste into a website, and a QR code for phones.

Why read the address from the job's log: with ``port: 0`` the server picks a free port, and only its start line
(``Students' page: http://…/``) says which; the settings file cannot. Torch- and Streamlit-free, so it is tested
without a browser; the QR code is drawn by ``segno`` (pure Python, PNG without Pillow).
"""

from __future__ import annotations

import io
import re
import socket
import urllib.error
import urllib.request

_PAGE_RE = re.compile(r"Students' page: (https?://\S+?)/?\s")
_API_RE = re.compile(r"Serving .* at (https?://\S+?)/v1\b")
WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]", ""}


def served_base(log_text: str) -> str | None:
    """``http://host:port`` from a serve job's start lines (the last start, if it was restarted), else None."""
    found = _PAGE_RE.findall(log_text) or _API_RE.findall(log_text)
    return found[-1].rstrip("/") if found else None


def lan_address() -> str | None:
    """This machine's address on its network (what a phone on the same network opens), or None when unknown.

    Connecting a UDP socket sends nothing; it only asks the kernel which interface would be used."""
    for target in ("10.255.255.255", "192.0.2.1"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect((target, 1))
                addr = s.getsockname()[0]
            except OSError:
                continue
            if addr and not addr.startswith("127.") and addr != "0.0.0.0":
                return addr
    return None


def public_url(base: str) -> str:
    """The students' page address to hand out: a server listening on every network (``0.0.0.0``) is shown at this
    machine's network address; anything else as it is."""
    m = re.match(r"^(https?://)(\[[^\]]*\]|[^:/]+)(:\d+)?$", base)
    if not m or m.group(2) not in WILDCARD_HOSTS | {"[::]"}:
        return base + "/"
    host = lan_address() or "127.0.0.1"
    return f"{m.group(1)}{host}{m.group(3) or ''}/"


def local_url(base: str) -> str:
    """Where this machine itself reaches the server (a wildcard host through loopback)."""
    m = re.match(r"^(https?://)(\[[^\]]*\]|[^:/]+)(:\d+)?$", base)
    if m and m.group(2) in WILDCARD_HOSTS | {"[::]"}:
        return f"{m.group(1)}127.0.0.1{m.group(3) or ''}"
    return base


def healthy(base: str, timeout: float = 1.0) -> bool:
    """True when ``GET /health`` answers ``ok`` (the model is loaded and the server listens)."""
    try:
        with urllib.request.urlopen(local_url(base) + "/health", timeout=timeout) as resp:  # noqa: S310 - our own URL
            return resp.status == 200 and b"ok" in resp.read(200)
    except (OSError, urllib.error.URLError, ValueError):
        return False


def widget_snippet(url: str) -> str:
    """The one line a webmaster pastes into the university's pages to add the chat bubble."""
    return f'<script src="{url.rstrip("/")}/widget.js"></script>'


def qr_png(url: str, scale: int = 6) -> bytes:
    """A QR code of ``url`` as PNG bytes, for phones to scan off the screen."""
    import segno

    buf = io.BytesIO()
    segno.make(url, error="m", micro=False).save(buf, kind="png", scale=scale, border=2)
    return buf.getvalue()
