"""All UI strings go through :func:`tr`: ``tr("开始", "Start")`` — Chinese first (the default), English second.

Why pairs at the call site rather than a key catalogue: each page keeps its text next to the widget it labels, and a
missing translation is impossible by construction. The language lives in ``st.session_state["lang"]`` ("zh"|"en");
outside Streamlit (CLI, tests) English is used unless ``UMTCDS_LANG`` says otherwise.
"""

from __future__ import annotations

import os
import sys

LANGS = {"zh": "中文", "en": "English"}
DEFAULT_LANG = "zh"


def current_lang() -> str:
    st = sys.modules.get("streamlit")
    if st is not None:
        try:
            from streamlit.runtime.scriptrunner import get_script_run_ctx

            if get_script_run_ctx() is not None:
                return st.session_state.get("lang", DEFAULT_LANG)
        except Exception:  # noqa: BLE001 - no Streamlit session: fall through
            pass
    return os.environ.get("UMTCDS_LANG", "en")


def tr(zh: str, en: str) -> str:
    """The string for the current language."""
    return en if current_lang() == "en" else zh


def error_text(exc: BaseException) -> str:
    """An error's message for the current language: its Chinese sentence where it has one (``UserError(zh=...)``)."""
    zh = getattr(exc, "zh", None)
    return zh if zh and current_lang() != "en" else str(exc)


# Words a background job writes into its progress file (units, counter names, a few counter values). The job writes
# plain keys — tools read progress.json — and the dashboard shows them in its language through this table.
PROGRESS_WORDS: dict[str, tuple[str, str]] = {
    "pages": ("页", "pages"),
    "steps": ("步", "steps"),
    "answers": ("个回答", "answers"),
    "it": ("项", "items"),
    "saved": ("已保存", "saved"),
    "robots": ("robots 拦截", "robots.txt blocked"),
    "duplicates": ("重复", "duplicates"),
    "errors": ("出错", "errors"),
    "queue": ("待抓取", "queued"),
    "pairs": ("问答对", "pairs"),
    "failures": ("失败", "failures"),
    "tokens": ("已生成 token", "tokens"),
    "tokens_per_s": ("token/秒", "tokens/s"),
    "tokens/s": ("token/秒", "tokens/s"),
    "skipped": ("跳过", "skipped"),
    "loss": ("训练损失", "loss"),
    "eval_loss": ("验证损失", "eval loss"),
    "model": ("正在生成", "generating"),
    "new": ("新增", "new"),
    "changed": ("有变化", "changed"),
    "unchanged": ("未变", "unchanged"),
    "removed": ("已删除", "removed"),
    "chunks": ("文本块", "chunks"),
    "base": ("微调前", "base"),
    "tuned": ("微调后", "tuned"),
}


def progress_word(word) -> str:
    """A progress unit, counter name or counter value in the current language (unknown words as they are)."""
    pair = PROGRESS_WORDS.get(word) if isinstance(word, str) else None
    return tr(*pair) if pair else str(word)
