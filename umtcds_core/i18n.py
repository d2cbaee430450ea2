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
