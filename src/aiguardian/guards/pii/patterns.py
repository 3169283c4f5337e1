"""Validated patterns for the structured kinds of PII: e-mail, URLs, IP addresses, credit cards (Luhn), IBANs
(ISO 13616 mod-97), phone numbers, US social security numbers, dates and national identity numbers.

A pattern is a regular expression that finds candidates plus, where the kind has one, the check that a real
value passes (a check digit, a range, a length by country). Kinds whose shape is too common to stand alone (a
nine-digit number is a Canadian SIN only if someone says so) also need a keyword shortly before the value.
``find`` returns every candidate that passes, possibly overlapping; the tagger uses them as features and the
detector keeps the validated ones that the tagger did not see.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

NATIONAL_ID = "NATIONAL_ID"


@dataclass(frozen=True, slots=True)
class Match:
    type: str
    start: int
    end: int
    score: float
    # The scheme within the type: "UK_NINO", "IN_AADHAAR", ... for national ids, "URL" for a DOMAIN_NAME URL.
    detail: str | None = None


def _digits(value: str) -> str:
    return "".join(c for c in value if c.isdigit())


def luhn_valid(value: str) -> bool:
    """The Luhn (mod 10) check of card numbers and Canadian SINs; separators are ignored."""
    digits = _digits(value)
    if not digits:
        return False
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = int(char)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# ISO 13616 lengths by country (the registry of SWIFT); an IBAN of another length is not one.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_valid(value: str) -> bool:
    """Country, length and the mod-97 check of ISO 7064 (the rearranged number mod 97 is 1)."""
    compact = value.replace(" ", "").upper()
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isalnum():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def ssn_valid(value: str) -> bool:
    """US SSN ranges: no area 000, 666 or 900-999 (those are ITINs), no group 00, no serial 0000."""
    digits = _digits(value)
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def itin_valid(value: str) -> bool:
    digits = _digits(value)
    return digits[0] == "9" and 50 <= int(digits[3:5]) <= 99 and digits[3:5] not in ("89", "93")


def ip_valid(value: str) -> bool:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    # "12::34" is an address but rarely meant as one; ask for a full or clearly compressed IPv6 form.
    return address.version == 4 or value.count(":") >= 5 or ("::" in value and value.count(":") >= 3)


def phone_valid(value: str) -> bool:
    digits = _digits(value.split("x")[0].split("ext")[0])
    return 7 <= len(digits) <= 15 and len(set(digits)) > 2


_VERHOEFF_D = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
    [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
]  # fmt: skip
_VERHOEFF_P = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4], [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
    [8, 9, 1, 6, 0, 4, 3, 5, 2, 7], [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
]  # fmt: skip


def verhoeff_valid(value: str) -> bool:
    """The Verhoeff check digit of the Indian Aadhaar number."""
    check = 0
    for i, char in enumerate(reversed(_digits(value))):
        check = _VERHOEFF_D[check][_VERHOEFF_P[i % 8][int(char)]]
    return check == 0


def es_dni_valid(value: str) -> bool:
    """Spanish DNI/NIE: the letter is ``TRWAGMYFPDXBNJZSQVHLCKE[number mod 23]`` (NIE X/Y/Z count as 0/1/2)."""
    compact = value.replace("-", "").replace(" ", "").upper()
    body = compact[:-1]
    if body[0] in "XYZ":
        body = str("XYZ".index(body[0])) + body[1:]
    return body.isdigit() and "TRWAGMYFPDXBNJZSQVHLCKE"[int(body) % 23] == compact[-1]


_CF_ODD = [1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10, 22, 25, 24, 23]


def it_fiscal_code_valid(value: str) -> bool:
    """Italian codice fiscale: the 16th letter checks the first 15 characters."""
    code = value.upper()
    total = 0
    for i, char in enumerate(code[:15]):
        n = int(char) if char.isdigit() else ord(char) - ord("A")
        total += _CF_ODD[n] if i % 2 == 0 else n
    return chr(ord("A") + total % 26) == code[15]


def sg_nric_valid(value: str) -> bool:
    """Singapore NRIC/FIN: weighted digits plus an offset by prefix select the final letter."""
    code = value.upper()
    total = sum(int(d) * w for d, w in zip(code[1:8], (2, 7, 6, 5, 4, 3, 2), strict=True))
    prefix = code[0]
    if prefix in "TG":
        total += 4
    elif prefix == "M":
        total += 3
    letters = "JZIHGFEDCBA" if prefix in "ST" else "XWUTRQPNMLK" if prefix in "FG" else "KLJNPQRTUWX"
    return letters[total % 11] == code[8]


def nl_bsn_valid(value: str) -> bool:
    """Dutch BSN: the "elfproef", weights 9..2 and -1, sum divisible by 11."""
    digits = _digits(value)
    total = sum(int(d) * w for d, w in zip(digits, (9, 8, 7, 6, 5, 4, 3, 2, -1), strict=True))
    return total % 11 == 0 and total > 0


def pl_pesel_valid(value: str) -> bool:
    digits = [int(d) for d in _digits(value)]
    total = sum(d * w for d, w in zip(digits[:10], (1, 3, 7, 9, 1, 3, 7, 9, 1, 3), strict=True))
    return (10 - total % 10) % 10 == digits[10]


def fr_nir_valid(value: str) -> bool:
    """French social security number (NIR): the two-digit key is 97 - (number mod 97); Corsica 2A/2B count
    as 19/18."""
    compact = value.replace(" ", "").upper().replace("2A", "19", 1).replace("2B", "18", 1)
    return compact.isdigit() and 97 - int(compact[:13]) % 97 == int(compact[13:])


def au_tfn_valid(value: str) -> bool:
    digits = [int(d) for d in _digits(value)]
    return sum(d * w for d, w in zip(digits, (1, 4, 3, 7, 5, 8, 6, 9, 10), strict=True)) % 11 == 0


def _always(value: str) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class Pattern:
    type: str
    regex: re.Pattern[str]
    check: Callable[[str], bool] = _always
    score: float = 0.9
    detail: str | None = None
    # When set, a match counts only if this matches the 48 characters before it.
    context: re.Pattern[str] | None = None
    # Lower-case strings one of which a text must contain for the pattern to run at all (a cheap test that
    # lets ordinary prose skip most patterns); "0" stands for any digit. Patterns with a context need one of
    # their keywords (and the regex itself needs digits).
    needs: tuple[str, ...] = ("0",)


def _re(pattern: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(pattern, flags | re.VERBOSE)


def _kw(words: str) -> re.Pattern[str]:
    return re.compile(rf"(?:{words})", re.IGNORECASE)


PATTERNS: tuple[Pattern, ...] = (
    Pattern(
        "EMAIL",
        _re(r"(?<![\w.+-])[\w.%+-]{1,64}@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,24}(?![\w-])"),
        score=0.95,
        needs=("@",),
    ),
    Pattern(
        "DOMAIN_NAME",
        _re(r"\b(?:https?://|www\.)[^\s<>\"'()\[\]{}|\\^`]+[^\s<>\"'()\[\]{}|\\^`.,;:!?*]"),
        score=0.85,
        detail="URL",
        needs=("://", "www."),
    ),
    Pattern(
        "DOMAIN_NAME",
        _re(
            r"(?<![\w@./-])(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
            r"(?:com|org|net|edu|gov|info|biz|io|ai|app|dev|co\.uk|co)(?![\w@-]|\.\w)"
        ),
        score=0.6,
        needs=(".com", ".org", ".net", ".edu", ".gov", ".info", ".biz", ".io", ".ai", ".app", ".dev", ".co"),
    ),
    Pattern("IP_ADDRESS", _re(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)"), ip_valid, 0.9),
    Pattern(
        "IP_ADDRESS",
        _re(
            r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){1,7}(?::|(?::[0-9A-Fa-f]{1,4}){1,6}|[0-9A-Fa-f]{1,4})(?![\w:])"
        ),
        ip_valid,
        0.9,
    ),
    Pattern(
        "CREDIT_CARD",
        _re(r"(?<![\w-])(?:\d{4}[ -]\d{4}[ -]\d{4}[ -]\d{1,7}|\d{4}[ -]\d{6}[ -]\d{4,5}|\d{12,19})(?![\w-])"),
        luhn_valid,
        0.9,
    ),
    Pattern(
        "IBAN",
        _re(r"\b[A-Za-z]{2}\d{2}(?:[ ]?[A-Za-z0-9]{4}){2,7}(?:[ ]?[A-Za-z0-9]{1,4})?\b"),
        iban_valid,
        0.95,
    ),
    Pattern("SSN", _re(r"(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])"), ssn_valid, 0.85),
    Pattern(
        "SSN",
        _re(r"(?<![\w-])\d{9}(?![\w-])"),
        ssn_valid,
        0.7,
        context=_kw(r"\bssn\b|social\s+security"),
        needs=("ssn", "social"),
    ),
    Pattern(
        "PHONE",
        _re(
            r"""(?<![\w+/.-])
            (?:\+\d{1,3}[ .-]?)?                       # country code
            (?:\(0?\d{1,4}\)[ .-]?)?                   # area code in parentheses
            (?:\(0\)[ ]?)?
            \d{2,15}(?:[ .-]\d{2,8}){0,4}              # the number in groups
            (?:[ ]?(?:x|ext\.?|extension)[ ]?\d{1,6})? # extension
            (?![\w/]|[.-]\d)"""
        ),
        phone_valid,
        0.6,
    ),
    Pattern(
        "DATE_TIME",
        _re(
            r"""(?<![\w/.-])(?:
              \d{4}-\d{1,2}-\d{1,2}(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?
            | \d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}
            | \d{1,2}:\d{2}(?::\d{2})?(?:[ ]?[ap]\.?m\.?)?
            )(?![\w/-]|\.\d)""",
            re.IGNORECASE,
        ),
        score=0.7,
    ),
    Pattern(
        "DATE_TIME",
        _re(
            r"""\b(?:
              (?:\d{1,2}(?:st|nd|rd|th)?[ ](?:of[ ])?)?
              (?:january|february|march|april|may|june|july|august|september|october|november|december
                |jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec)\.?
              (?:[ ]\d{1,2}(?:st|nd|rd|th)?)?(?:,?[ ]\d{4})?
            )\b""",
            re.IGNORECASE,
        ),
        lambda v: any(c.isdigit() for c in v),
        0.6,
    ),  # a month name with a day or year: needs a digit
    # National identity numbers. US ITIN looks like an SSN with area 9xx.
    Pattern(NATIONAL_ID, _re(r"(?<![\w-])9\d{2}([- ])\d{2}\1\d{4}(?![\w-])"), itin_valid, 0.8, "US_ITIN"),
    Pattern(
        NATIONAL_ID,
        _re(
            r"\b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
            r"[ ]?\d{2}[ ]?\d{2}[ ]?\d{2}[ ]?[A-D]\b"
        ),
        score=0.85,
        detail="UK_NINO",
    ),
    Pattern(
        NATIONAL_ID,
        _re(r"(?<![\w-])[2-9]\d{3}[ -]?\d{4}[ -]?\d{4}(?![\w-])"),
        verhoeff_valid,
        0.8,
        "IN_AADHAAR",
        _kw(r"aadhaa?r|uidai|\buid\b"),
        ("aadha", "uid"),
    ),
    Pattern(NATIONAL_ID, _re(r"\b[A-Z]{3}[ABCFGHLJPT][A-Z]\d{4}[A-Z]\b"), score=0.75, detail="IN_PAN"),
    Pattern(
        NATIONAL_ID,
        _re(r"(?<![\w-])(?:\d{8}|[XYZ]\d{7})[- ]?[A-Z](?![\w-])"),
        es_dni_valid,
        0.8,
        "ES_DNI",
    ),
    Pattern(
        NATIONAL_ID,
        _re(r"\b[A-Z]{6}\d{2}[A-EHLMPR-T]\d{2}[A-Z]\d{3}[A-Z]\b"),
        it_fiscal_code_valid,
        0.9,
        "IT_FISCAL_CODE",
    ),
    Pattern(NATIONAL_ID, _re(r"\b[STFGM]\d{7}[A-Z]\b"), sg_nric_valid, 0.85, "SG_NRIC"),
    Pattern(
        NATIONAL_ID,
        _re(r"(?<![\w-])\d{3}[ -]?\d{3}[ -]?\d{3}(?![\w-])"),
        luhn_valid,
        0.75,
        "CA_SIN",
        _kw(r"\bsin\b|social\s+insurance"),
        ("sin", "social"),
    ),
    Pattern(
        NATIONAL_ID,
        _re(r"(?<![\w-])\d{9}(?![\w-])"),
        nl_bsn_valid,
        0.75,
        "NL_BSN",
        _kw(r"\bbsn\b|burgerservice"),
        ("bsn", "burgerservice"),
    ),
    Pattern(
        NATIONAL_ID,
        _re(r"(?<![\w-])\d{11}(?![\w-])"),
        pl_pesel_valid,
        0.75,
        "PL_PESEL",
        _kw(r"pesel"),
        ("pesel",),
    ),
    Pattern(
        NATIONAL_ID,
        _re(
            r"(?<![\w-])[12][ ]?\d{2}[ ]?(?:0[1-9]|1[0-2])[ ]?(?:\d{2}|2A|2B)[ ]?\d{3}[ ]?\d{3}[ ]?\d{2}(?![\w-])"
        ),
        fr_nir_valid,
        0.85,
        "FR_NIR",
    ),
    Pattern(
        NATIONAL_ID,
        _re(r"(?<![\w-])\d{3}[ ]?\d{3}[ ]?\d{3}(?![\w-])"),
        au_tfn_valid,
        0.75,
        "AU_TFN",
        _kw(r"\btfn\b|tax\s+file"),
        ("tfn", "tax"),
    ),
)

CONTEXT_WINDOW = 48


_ANY_DIGIT = re.compile(r"\d")


def find(text: str, patterns: tuple[Pattern, ...] = PATTERNS) -> list[Match]:
    """Every candidate of every pattern that passes its check, in text order (overlaps allowed)."""
    found: list[Match] = []
    lower = text.lower()
    has_digit = _ANY_DIGIT.search(text) is not None
    for pattern in patterns:
        if not any(has_digit if need == "0" else need in lower for need in pattern.needs):
            continue
        for m in pattern.regex.finditer(text):
            value = m.group()
            if not pattern.check(value):
                continue
            if pattern.context is not None and not pattern.context.search(
                text, max(0, m.start() - CONTEXT_WINDOW), m.start()
            ):
                continue
            found.append(Match(pattern.type, m.start(), m.end(), pattern.score, pattern.detail))
    found.sort(key=lambda match: (match.start, -match.end))
    return found
