"""The one place that reads and writes project files.

Why: every step's output is a file the next step (or a person) reads, so a crash must never leave half a file, and a
single broken JSONL line must never cost the valid ones. All text is UTF-8.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError


class DiskFullError(UserError, OSError):
    """Raised instead of a bare ENOSPC so callers can print one clear sentence."""


def _raise_friendly(exc: OSError, path: Path) -> None:
    if exc.errno == 28:  # ENOSPC
        raise DiskFullError(
            28,
            f"The disk is full while writing {path}; free some space and run the step again.",
            zh=f"写入 {path} 时磁盘已满；请清理一些空间后重新运行这一步。",
        ) from exc
    raise exc


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file in the same folder + ``os.replace`` (atomic on POSIX)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        _raise_friendly(exc, path)
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=indent) + "\n")


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """Read a JSON file; ``default`` when it is missing or unreadable (e.g. being replaced right now)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Write all records at once (atomic). Use :func:`append_jsonl` for logs that grow while a job runs."""
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return write_text_atomic(path, lines)


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one record and flush, so a reader tailing the file sees it at once.

    One ``write`` call per line keeps concurrent appenders from interleaving within a line.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False) + "\n"
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
    except OSError as exc:
        _raise_friendly(exc, path)


@dataclass
class BadLine:
    """A JSONL line that could not be read: where it is and why (shown to the user, never silently dropped)."""

    path: str
    lineno: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.lineno}: {self.reason}"


def iter_jsonl(path: str | os.PathLike, errors: list[BadLine] | None = None) -> Iterator[dict]:
    """Yield the JSON objects of a JSONL file, skipping blank lines.

    A broken line (bad JSON, not an object, or a half-written last line of a live log) is reported into ``errors``
    when a list is given, otherwise raised as ``ValueError`` naming file and line.
    """
    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                bad = BadLine(str(path), lineno, f"invalid JSON ({exc})")
                if errors is None:
                    raise ValueError(str(bad)) from exc
                errors.append(bad)
                continue
            yield obj


def read_jsonl(path: str | os.PathLike, errors: list[BadLine] | None = None) -> list[dict]:
    return list(iter_jsonl(path, errors))


def tail_text(path: str | os.PathLike, max_chars: int = 20_000) -> str:
    """The last ``max_chars`` characters of a (log) file, '' when missing."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            fh.seek(max(0, size - max_chars * 4))
            return fh.read().decode("utf-8", errors="replace")[-max_chars:]
    except OSError:
        return ""


def count_records(path: str | os.PathLike) -> int | None:
    """Non-blank lines of a JSONL file (its records, without parsing them); ``None`` when there is no such file."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return None
