"""Locales and countries as a customer's record keeps them: a BCP 47 language tag in its
canonical form ("it-IT", "it", "zh-Hant-TW") checked against CLDR with Babel, and an ISO 3166-1
alpha-2 country ("IT"). Pure: Babel's data ships with the library."""
from __future__ import annotations

import re
from functools import lru_cache

from babel import Locale, UnknownLocaleError

_SUBTAG = re.compile(r"^[A-Za-z0-9]{1,8}$")
_REGION = re.compile(r"^(?:[A-Za-z]{2}|[0-9]{3})$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
# two-letter codes CLDR names that are no country: unknown, unions, outlying, pseudo-locales
_NOT_COUNTRIES = frozenset({"ZZ", "EU", "EZ", "UN", "QO", "XA", "XB"})


class LocaleError(ValueError):
    pass


@lru_cache(maxsize=4096)  # a CRM file repeats a handful of tags: Babel's parse is ~40 µs
def canonical_locale(tag: str) -> str:
    """`tag` in its canonical BCP 47 form (language, script, region: "it-IT"), or LocaleError.
    A region Babel does not know for the language is refused rather than replaced: Babel alone
    would read "en-ZZ" as "en-US"."""
    if not isinstance(tag, str) or not 2 <= len(tag.strip()) <= 35:
        raise LocaleError("a locale is a BCP 47 language tag such as \"it-IT\" or \"en\"")
    parts = re.split(r"[-_]", tag.strip())
    if not all(_SUBTAG.match(p) for p in parts):
        raise LocaleError(f"{tag[:40]!r} is not a BCP 47 language tag (such as \"it-IT\" or \"en\")")
    try:
        loc = Locale.parse("_".join(parts))
    except (ValueError, UnknownLocaleError, TypeError):
        raise LocaleError(f"{tag[:40]!r} is not a locale CLDR knows (such as \"it-IT\" or \"en\")") from None
    asked_region = next((p.upper() for p in parts[1:] if _REGION.match(p)), None)
    if asked_region is not None and loc.territory != asked_region:
        raise LocaleError(f"{tag[:40]!r}: {asked_region} is not a region CLDR knows for {loc.language!r}")
    return "-".join(p for p in (loc.language, loc.script, loc.territory) if p)


@lru_cache(maxsize=1)
def _countries() -> frozenset[str]:
    return frozenset(c for c in Locale("en").territories if _COUNTRY.match(c)) - _NOT_COUNTRIES


def canonical_country(code: str) -> str:
    """An ISO 3166-1 alpha-2 country code, upper case ("IT"), or LocaleError."""
    text = code.strip().upper() if isinstance(code, str) else ""
    if text not in _countries():
        raise LocaleError(f"{str(code)[:20]!r} is not an ISO 3166-1 alpha-2 country code (such as \"IT\")")
    return text
