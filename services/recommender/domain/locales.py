"""Locales and countries as a customer's record keeps them: a BCP 47 language tag in the one
canonical form every service uses (vicino.services.kernel.locales: "it-IT", "it", "zh-Hant-TW"),
and an ISO 3166-1 alpha-2 country ("IT") checked against CLDR with Babel. Pure: Babel's data
ships with the library."""
from __future__ import annotations

import re
from functools import lru_cache

from babel import Locale

from vicino.services.kernel.locales import canonical_locale as kernel_canonical_locale

_COUNTRY = re.compile(r"^[A-Z]{2}$")
# two-letter codes CLDR names that are no country: unknown, unions, outlying, pseudo-locales
_NOT_COUNTRIES = frozenset({"ZZ", "EU", "EZ", "UN", "QO", "XA", "XB"})


class LocaleError(ValueError):
    pass


@lru_cache(maxsize=4096)  # a CRM file repeats a handful of tags; Babel's parse costs ~40 µs
def canonical_locale(tag: str) -> str:
    """`tag` in its canonical BCP 47 form, or LocaleError saying why not."""
    try:
        return kernel_canonical_locale(tag)
    except ValueError as e:
        raise LocaleError(str(e)) from None


@lru_cache(maxsize=1)
def _countries() -> frozenset[str]:
    return frozenset(c for c in Locale("en").territories if _COUNTRY.match(c)) - _NOT_COUNTRIES


def canonical_country(code: str) -> str:
    """An ISO 3166-1 alpha-2 country code, upper case ("IT"), or LocaleError."""
    text = code.strip().upper() if isinstance(code, str) else ""
    if text not in _countries():
        raise LocaleError(f"{str(code)[:20]!r} is not an ISO 3166-1 alpha-2 country code (such as \"IT\")")
    return text
