"""Mask personal data in page text before it is sent to an LLM (``umtcds generate --pii mask``, the default).

Why: news pages and award lists of a campus site name students, and notices sometimes print a student's ID number,
mobile number or private e-mail. Whatever goes into the generation prompt can end up in a pair and then inside a
model that is published or served, so it is replaced by a placeholder first. What a campus assistant *must* still
say is kept: office landlines (``010-62751234``, ``0571-88206000``) never look like a mobile number, and an e-mail
on the site's own domain or a role address (``office@``, ``info@``, ``admissions@``) is an institution's, not a
person's.

What is masked, each with its placeholder (Chinese or English by the page's language):

* Chinese resident ID numbers — 18 characters whose check digit (ISO 7064 MOD 11-2, GB 11643) and birth date are
  valid, so an 18-digit order or serial number is left alone;
* mainland mobile numbers ``1[3-9]`` + 9 digits, also written ``138 1234 5678`` / ``138-1234-5678`` or with ``+86``;
* personal e-mail addresses (any other domain, any other local part);
* with ``names=True``, person names jieba's part-of-speech tagger marks ``nr`` (two to four Chinese characters).

Pure functions, no I/O: :func:`mask` returns the masked text and what it counted.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from urllib.parse import urlsplit

from .text import HAN

KINDS = ("id_card", "mobile", "email", "name")
"""The kinds counted in a report, in a fixed order (the generate summary and ``qa.jsonl``'s ``pii`` use them)."""

PLACEHOLDERS = {
    "zh": {"id_card": "[身份证号]", "mobile": "[手机号]", "email": "[邮箱]", "name": "[姓名]"},
    "en": {"id_card": "[ID number]", "mobile": "[mobile number]", "email": "[e-mail]", "name": "[name]"},
}

ROLE_LOCAL_PARTS = frozenset(
    """office info admission admissions contact service services support help helpdesk webmaster web admin
    library lib news media press hr job jobs career careers recruit zhaopin zsb zsc zsw jwc jwb jiaowu xsc xgb
    yjs yjsy grad graduate undergrad registrar dean international intl ie gjc bgs xb xiaoban president secretary
    finance cwc bwc security library-service it nic network postmaster noreply no-reply feedback""".split()
)
"""Local parts of addresses that belong to an office, not a person (``zsb`` 招生办, ``jwc`` 教务处, ``xsc`` 学生处 …)."""

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
_ID_RE = re.compile(r"(?<![0-9A-Za-z])([1-9]\d{16}[0-9Xx])(?![0-9A-Za-z])")
_MOBILE_RE = re.compile(r"(?<![\d\-+])(?:(?:\+|00)?86[\s\-]?)?1[3-9]\d(?:(?:[\s\-]?)\d{4}){2}(?![\d\-])")
_EMAIL_RE = re.compile(  # ASCII boundaries: Chinese characters count as \w and often touch an address (邮箱a@b.cn)
    r"(?<![A-Za-z0-9._%+\-])([A-Za-z0-9._%+\-]+)@((?:[A-Za-z0-9\-]+\.)+[A-Za-z]{2,})(?![A-Za-z0-9\-])"
)
_NAME_RE = re.compile(f"^[{HAN}]{{2,4}}$")


def id_number_valid(s: str) -> bool:
    """Whether an 18-character string is a well-formed resident ID: plausible birth date and the right check digit."""
    if len(s) != 18 or not s[:17].isdigit():
        return False
    try:
        born = date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return False
    if not date(1900, 1, 1) <= born <= date.today():
        return False
    total = sum(int(d) * w for d, w in zip(s[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == s[17].upper()


def site_domain(url: str | None) -> str | None:
    """The registrable domain of a page URL (``jwc.x.edu.cn`` → ``x.edu.cn``), or None for a non-URL source."""
    if not url or "://" not in url:
        return None
    host = (urlsplit(url).hostname or "").lower()
    if not host:
        return None
    from .crawl import registrable_domain

    return registrable_domain(host)


def institutional_email(local: str, domain: str, own_domain: str | None) -> bool:
    """An address to keep: on the site's own (registrable) domain, or a role address of an office."""
    domain = domain.lower()
    if own_domain and (domain == own_domain or domain.endswith("." + own_domain)):
        return True
    return local.lower() in ROLE_LOCAL_PARTS


@dataclass
class Masked:
    """A masked text and how many of each kind were replaced (``counts`` holds only kinds that occurred)."""

    text: str
    counts: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _jieba_names(text: str) -> list[str]:
    import logging

    import jieba
    import jieba.posseg as pseg

    jieba.setLogLevel(logging.WARNING)
    return [w.word for w in pseg.cut(text) if w.flag == "nr" and _NAME_RE.match(w.word)]


def mask(text: str, source: str | None = None, *, names: bool = False, lang: str = "zh") -> Masked:
    """``text`` with personal data replaced by placeholders; ``source`` (the page URL) says which domain is the site's.

    Order matters: ID numbers first, because an ID contains 11-digit runs that look like a mobile number.
    """
    ph = PLACEHOLDERS["en" if lang == "en" else "zh"]
    counts: Counter = Counter()

    def sub_id(m: re.Match) -> str:
        if not id_number_valid(m.group(1)):
            return m.group(0)
        counts["id_card"] += 1
        return ph["id_card"]

    def sub_mobile(m: re.Match) -> str:
        counts["mobile"] += 1
        return ph["mobile"]

    own = site_domain(source)

    def sub_email(m: re.Match) -> str:
        if institutional_email(m.group(1), m.group(2), own):
            return m.group(0)
        counts["email"] += 1
        return ph["email"]

    out = _ID_RE.sub(sub_id, text)
    out = _EMAIL_RE.sub(sub_email, out)  # before mobiles: 13812345678@163.com is one personal address
    out = _MOBILE_RE.sub(sub_mobile, out)
    if names and re.search(f"[{HAN}]", out):
        found = sorted(set(_jieba_names(out)), key=len, reverse=True)
        if found:
            pattern = re.compile("|".join(re.escape(n) for n in found))
            out, n = pattern.subn(ph["name"], out)
            counts["name"] += n
    return Masked(out, counts)


def describe_counts(counts: dict) -> str:
    """``"2 ID numbers, 1 mobile number"`` — for the generate summary line (English; the CLI prints it)."""
    words = {
        "id_card": ("ID number", "ID numbers"),
        "mobile": ("mobile number", "mobile numbers"),
        "email": ("personal e-mail", "personal e-mails"),
        "name": ("name", "names"),
    }
    parts = [f"{counts[k]} {words[k][counts[k] != 1]}" for k in KINDS if counts.get(k)]
    return ", ".join(parts) if parts else "nothing"
