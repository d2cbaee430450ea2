"""Text normal forms and character classes shared by dedupe, grounding, language guessing and scoring.

Why one module: the question-generation filters (:mod:`qa`) and the dataset's duplicate finder (:mod:`dataset`) each
had their own ``normalize`` and their own idea of which characters are "CJK"; a pair that one of them called a
duplicate the other did not. Both now read the definitions below.

Two normal forms, because two comparisons need different things (both: NFKC, so full-width ``？`` and ``A`` equal
``?`` and ``A``; case-folded; punctuation and ``_`` never count):

* :func:`normalize` keeps word boundaries as single spaces. Near-duplicate shingles of Latin text are trigrams that
  see where words start ("library open" ≠ "libraryopen"), and a human reading a dedupe report still sees words.
* :func:`compact` drops the spaces too. Grounding looks for an answer's character n-grams in the page it came from,
  whose line breaks and spacing differ from the answer's; and Chinese has no spaces to keep. It is exactly
  ``normalize(text).replace(" ", "")``.

Character classes (strings for use inside ``[...]`` of a regular expression):

* :data:`HAN` — Chinese characters (CJK unified ideographs, extension A, compatibility ideographs): "is this
  Chinese" (prompt language, jieba segmentation).
* :data:`CJK` — :data:`HAN` plus Japanese kana and Korean Hangul syllables: scripts where one character is about a
  syllable, so text is compared by characters rather than words and costs about a token per character.
* :data:`CJK_PUNCT` — CJK symbols and punctuation and the full-width forms: counted with the ideographs when telling a
  right Chinese decode from mojibake or estimating tokens.
"""

from __future__ import annotations

import re
import unicodedata

HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
CJK = "\u3040-\u30ff" + HAN + "\uac00-\ud7af"
CJK_PUNCT = "\u3000-\u303f\uff00-\uffef"

HAN_RE = re.compile(f"[{HAN}]")
CJK_RE = re.compile(f"[{CJK}]")

_NON_WORD = re.compile(r"[\W_]+")


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def normalize(text: str) -> str:
    """NFKC, case-folded, punctuation removed, spaces collapsed (so '图书馆几点开门？' == '图书馆几点开门')."""
    return " ".join(_NON_WORD.sub(" ", _fold(text)).split())


def compact(text: str) -> str:
    """:func:`normalize` without spaces: letters, digits and CJK characters only (what grounding compares)."""
    return _NON_WORD.sub("", _fold(text))


def has_han(text: str) -> bool:
    """The text holds at least one Chinese character."""
    return HAN_RE.search(text) is not None


def han_ratio(text: str) -> float:
    """Share of the non-space characters that are Chinese characters (0 for empty text)."""
    letters = [c for c in text if not c.isspace()]
    return len(HAN_RE.findall(text)) / len(letters) if letters else 0.0
