"""Number words in German and English, generated from each language's rules (0 to 999 999).

German writes a number as one word: units before tens joined by ``und`` (``einundzwanzig``), ``eins``
becomes ``ein`` inside a compound (``einhundert``, ``einundzwanzigtausend``), and the thousands come
first (``dreihundertzwölftausendvier``). English writes words separated by spaces, without "and" or
hyphens here (``three hundred twelve``, ``twenty one``).
"""
from __future__ import annotations

DE_UNITS = ["null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun", "zehn", "elf",
            "zwölf", "dreizehn", "vierzehn", "fünfzehn", "sechzehn", "siebzehn", "achtzehn", "neunzehn"]
DE_TENS = ["", "", "zwanzig", "dreißig", "vierzig", "fünfzig", "sechzig", "siebzig", "achtzig", "neunzig"]
EN_UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
            "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
EN_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
MAX_NUMBER = 999_999


def _check(n: int) -> None:
    if not 0 <= n <= MAX_NUMBER:
        raise ValueError(f"number words are generated for 0 to {MAX_NUMBER}, got {n}")


def _german_below_1000(n: int) -> str:
    """1..999 as German, with ``eins`` at the end of the word (the caller fixes compounds)."""
    hundreds, rest = divmod(n, 100)
    out = (("ein" if hundreds == 1 else DE_UNITS[hundreds]) + "hundert") if hundreds else ""
    if rest == 0:
        return out
    if rest < 20:
        return out + DE_UNITS[rest]
    tens, units = divmod(rest, 10)
    if units == 0:
        return out + DE_TENS[tens]
    return out + ("ein" if units == 1 else DE_UNITS[units]) + "und" + DE_TENS[tens]


def german(n: int) -> str:
    """``n`` in German words, e.g. 312 -> ``dreihundertzwölf``, 21 -> ``einundzwanzig``."""
    _check(n)
    if n == 0:
        return "null"
    thousands, rest = divmod(n, 1000)
    out = ""
    if thousands:
        head = _german_below_1000(thousands)
        if head.endswith("eins"):  # einundzwanzigtausend, eintausend, hunderteintausend
            head = head[:-1]
        out = head + "tausend"
    return out + (_german_below_1000(rest) if rest else "")


def _english_below_1000(n: int) -> list[str]:
    hundreds, rest = divmod(n, 100)
    words = [EN_UNITS[hundreds], "hundred"] if hundreds else []
    if rest == 0:
        return words
    if rest < 20:
        return words + [EN_UNITS[rest]]
    tens, units = divmod(rest, 10)
    return words + [EN_TENS[tens]] + ([EN_UNITS[units]] if units else [])


def english(n: int) -> str:
    """``n`` in English words, e.g. 312 -> ``three hundred twelve``, 21 -> ``twenty one``."""
    _check(n)
    if n == 0:
        return "zero"
    thousands, rest = divmod(n, 1000)
    words = (_english_below_1000(thousands) + ["thousand"]) if thousands else []
    return " ".join(words + (_english_below_1000(rest) if rest else []))
