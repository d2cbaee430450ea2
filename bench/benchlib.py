"""What every bench script ends with: print its JSON result and, with ``--out``, keep it (bench/results/…)."""

from __future__ import annotations

import json
from pathlib import Path


def emit(result: dict, out: str | Path | None) -> str:
    """Print ``result`` as indented JSON (Chinese kept readable) and write it to ``out`` when given; returns the text."""
    text = json.dumps(result, ensure_ascii=False, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n", encoding="utf-8")
    return text
