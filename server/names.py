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
    rng = random.SystemRandom()
    return f"{rng.choice(_ADJECTIVES)} {rng.choice(_ANIMALS)} {rng.randrange(10, 100)}"


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
# Letters by category, invisible by design (Unicode's Default_Ignorable_Code_Point):
# the Hangul fillers make a name that shows as nothing.
_INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")
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
        if what is None and char in _INVISIBLE_LETTERS:
            what = "an invisible filler character"
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
