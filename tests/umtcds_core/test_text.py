"""Text normal forms and character classes: the one definition dedupe, grounding and scoring share."""

from __future__ import annotations

import re

from umtcds_core import dataset, qa, text


def test_normalize_keeps_words_compact_drops_spaces():
    assert text.normalize("  Library, OPEN?! ") == "library open"
    assert text.compact("  Library, OPEN?! ") == "libraryopen"
    # full-width punctuation and letters fold to the same form (NFKC), Chinese keeps its characters
    assert text.normalize("图书馆几点开门？") == text.normalize("图书馆几点开门") == "图书馆几点开门"
    assert text.normalize("Ｂ２０４ 教室") == "b204 教室"
    assert text.compact("Room_B-204\n(2nd floor)") == "roomb2042ndfloor"
    for s in ("Where is B204?", "图书馆 几点\n开门？", "Straße, STRASSE", "", "？！"):
        assert text.compact(s) == text.normalize(s).replace(" ", "")


def test_one_definition_used_by_qa_and_dataset():
    assert dataset.normalize is text.normalize
    assert qa.normalize is text.normalize and qa.compact is text.compact
    assert not hasattr(qa, "cjk_ratio") and not hasattr(dataset, "_CJK_RE")


def test_character_classes():
    han = re.compile(f"[{text.HAN}]")
    cjk = re.compile(f"[{text.CJK}]")
    for ch in "图书馆\u3400\uf900":  # unified, extension A, a compatibility ideograph
        assert han.match(ch) and cjk.match(ch)
    for ch in "ひカ한":  # kana and Hangul: CJK, not Chinese
        assert cjk.match(ch) and not han.match(ch)
    for ch in "a1？。 ":
        assert not cjk.match(ch)
    assert re.fullmatch(f"[{text.CJK_PUNCT}]+", "。、？！「」")
    assert text.has_han("B204 教室") and not text.has_han("B204 ひらがな")
    assert text.han_ratio("") == 0.0
    assert text.han_ratio("图书 ab") == 0.5
    assert qa.detect_lang("图书馆每天八点开门。" * 3) == "zh" and qa.detect_lang("The library opens at 8.") == "en"
