"""Display names: made up for a new user, checked when a user chooses one."""

from __future__ import annotations

import random
import unicodedata
from typing import Any

from .errors import BadRequest

NAME_MAX_CHARS = 32

_ADJECTIVES = [
    "Amber",
    "Brave",
    "Calm",
    "Clever",
    "Cosmic",
    "Curious",
    "Daring",
    "Eager",
    "Fuzzy",
    "Gentle",
    "Happy",
    "Jolly",
    "Kind",
    "Lively",
    "Lucky",
    "Mellow",
    "Merry",
    "Nimble",
    "Quiet",
    "Rapid",
    "Shiny",
    "Sunny",
    "Swift",
    "Witty",
]
_ANIMALS = [
    "Badger",
    "Beaver",
    "Falcon",
    "Ferret",
    "Fox",
    "Gecko",
    "Heron",
    "Koala",
    "Lemur",
    "Lynx",
    "Marten",
    "Otter",
    "Owl",
    "Panda",
    "Puffin",
    "Quokka",
    "Raven",
    "Seal",
    "Sparrow",
    "Tapir",
    "Tiger",
    "Walrus",
    "Wombat",
    "Yak",
]


def friendly_name() -> str:
    # (Everyone sees the name: it guards nothing, so the module's generator,
    # reseeded in each forked worker, serves; the system's costs three
    # system calls per new session.)
    return f"{random.choice(_ADJECTIVES)} {random.choice(_ANIMALS)} {random.randrange(10, 100)}"


# Display names are shown to everyone, so they must look like what they are.
# Refused anywhere in a name: control characters, format characters (bidi
# controls such as U+202E reorder the text around them; zero-width ones hide
# inside a name that then looks like another), line and paragraph separators,
# unassigned code points, private use and lone surrogates (a JSON "\ud800").
_REFUSED_CATEGORIES = {
    "Cc": "a control character",
    "Cf": "a format character (bidi control, zero-width or similar)",
    "Cn": "an unassigned code point",
    "Co": "a private-use character",
    "Cs": "a lone surrogate",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}


def _code_points(*ranges: tuple[int, int]) -> frozenset[str]:
    return frozenset(chr(code) for first, last in ranges for code in range(first, last + 1))


# Variation selectors (Mn by category) choose how the character before them
# is drawn, emoji or text presentation among them ("\u2764\ufe0f"): appended
# to a name, they make one that looks exactly like it.
_VARIATION_SELECTORS = _code_points((0x180B, 0x180D), (0x180F, 0x180F), (0xFE00, 0xFE0F))
_VARIATION_SELECTORS |= _code_points((0xE0100, 0xE01EF))
# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt): shown
# as nothing whatever their category. Most are Cf or Cn and refused as such;
# this catches the marks (the combining grapheme joiner, Khmer's inherent
# vowels) and letters (the Hangul fillers) among them. Then characters that
# fonts draw blank: the braille blank, the musical null notehead, the Khitan
# filler.
_INVISIBLE = _code_points(
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
) | frozenset("\u2800\U0001d159\U00016fe4")
# Combining marks allowed on one base character, counted as if decomposed
# (NFD), so that "\u1ec7" (e with two marks) counts the same as e + two marks.
# Room for real orthographies (Vietnamese stacks two; a Devanagari letter can
# take a nukta, a vowel sign and a nasal; a pointed Hebrew letter three), not
# for marks piled up until they cover the lines around the name.
NAME_MAX_MARKS = 3


def clean_name(value: Any) -> str:
    """A display name as it is stored and shown, or BadRequest saying what is wrong.

    NFC-normalised; runs of spaces become one and the ends are trimmed;
    1-32 characters (code points) counted after both.
    """
    if not isinstance(value, str):
        raise BadRequest("name must be a string")
    name = unicodedata.normalize("NFC", value)
    for char in name:
        what = _REFUSED_CATEGORIES.get(unicodedata.category(char))
        if what is None and char in _VARIATION_SELECTORS:
            what = "a variation selector (emoji presentation included)"
        elif what is None and char in _INVISIBLE:
            what = "an invisible or blank character"
        if what is not None:
            raise BadRequest(f"name must not contain {what} (U+{ord(char):04X})")
    name = " ".join(name.split())  # only space separators (Zs) are left to split on
    if not 1 <= len(name) <= NAME_MAX_CHARS:
        raise BadRequest(
            f"name must be 1-{NAME_MAX_CHARS} characters after NFC normalisation and trimming"
        )
    marks = 0
    decomposed = unicodedata.normalize("NFD", name)
    for index, char in enumerate(decomposed):
        if not unicodedata.category(char).startswith("M"):
            marks = 0
            continue
        if index == 0 or decomposed[index - 1] == " ":
            raise BadRequest(
                f"name has a combining mark with no base character (U+{ord(char):04X})"
            )
        marks += 1
        if marks > NAME_MAX_MARKS:
            raise BadRequest(
                f"name must not pile more than {NAME_MAX_MARKS} combining marks on one character"
            )
    return name
