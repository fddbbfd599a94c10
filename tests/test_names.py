"""Display names: what ``PUT /api/session`` refuses, and what it stores for what it accepts."""

from __future__ import annotations

from typing import Any

import pytest

from .support import error_of

ROOM = "/api/rooms/general/messages"

BEFORE = "Before"


async def named(client: Any, name: str = BEFORE) -> dict[str, str]:
    """Give the client's session a known name; its session."""
    resp = await client.put("/api/session", json={"name": name})
    assert resp.status == 200, await resp.text()
    session: dict[str, str] = await resp.json()
    assert session["name"] == name
    return session


async def expect_name_unchanged(client: Any, session: dict[str, str]) -> None:
    """The session, and the messages it posts, still carry the name it had."""
    now = await (await client.get("/api/session")).json()
    assert {key: now[key] for key in session} == session
    message = (await (await client.post(ROOM, json={"text": "still me"})).json())["message"]
    assert message["name"] == session["name"]


REFUSED = {  # case: (name sent, part of the error message)
    # Control characters (Cc), even the ones that count as whitespace.
    "bell": ("Ad\x07a", "control character"),
    "tab": ("Ada\tLovelace", "control character"),
    "newline": ("Ada\n", "control character"),
    "delete": ("Ada\x7f", "control character"),
    "c1 next line": ("Ada\x85", "control character"),
    # Format characters (Cf): bidi controls, zero-width characters and the like.
    "right-to-left override": ("Ada\u202eecalevoL", "format character"),
    "left-to-right embedding": ("\u202aAda", "format character"),
    "pop directional formatting": ("Ada\u202c", "format character"),
    "left-to-right isolate": ("\u2066Ada", "format character"),
    "right-to-left isolate": ("\u2067Ada", "format character"),
    "first strong isolate": ("\u2068Ada", "format character"),
    "pop directional isolate": ("Ada\u2069", "format character"),
    "left-to-right mark": ("Ada\u200e", "format character"),
    "right-to-left mark": ("\u200fAda", "format character"),
    "arabic letter mark": ("Ada\u061c", "format character"),
    "zero-width space": ("A\u200bda", "format character"),
    "zero-width non-joiner": ("A\u200cda", "format character"),
    "zero-width joiner": ("A\u200dda", "format character"),
    "word joiner": ("A\u2060da", "format character"),
    "byte order mark": ("\ufeffAda", "format character"),
    "soft hyphen": ("A\u00adda", "format character"),
    "tag character": ("Ada\U000e0041", "format character"),
    # Line and paragraph separators (Zl, Zp), which str.split() would have taken for spaces.
    "line separator": ("Ada\u2028Lovelace", "line separator"),
    "paragraph separator": ("Ada\u2029Lovelace", "paragraph separator"),
    # Unassigned (Cn) and private use (Co).
    "unassigned": ("Ada\u0378", "unassigned"),
    "noncharacter": ("Ada\ufffe", "unassigned"),
    "private use": ("Ada\ue000", "private-use"),
    "supplementary private use": ("Ada\U000f0000", "private-use"),
    # Invisible letters that make a blank name.
    "hangul filler": ("\u3164", "invisible"),
    "halfwidth hangul filler": ("Ada\uffa0", "invisible"),
    "braille blank": ("\u2800", "blank"),
    # Variation selectors: the emoji one too, even on an emoji.
    "emoji presentation selector": ("Ada \u2764\ufe0f", "variation selector (emoji"),
    "text presentation selector": ("Ada\ufe0e", "variation selector"),
    "keycap sequence": ("Ada 1\ufe0f\u20e3", "variation selector"),
    # Combining marks with nothing to sit on, or piled up.
    "leading combining mark": ("\u0301Ada", "no base character"),
    "combining mark after trimming": ("  \u0301Ada", "no base character"),
    "combining mark after a space": ("Ada \u0301", "no base character"),
    "leading enclosing mark": ("\u20ddAda", "no base character"),
    "four marks on one letter": ("Ada\u0301\u0302\u0303\u0304", "more than 3 combining marks"),
    "four marks on a composed letter": ("\u00e1\u0302\u0303\u0304", "more than 3 combining marks"),
    "marks piled up (zalgo)": (
        "Zalgo" + "\u0336\u0334\u0335\u0337" * 3,
        "more than 3 combining marks",
    ),
    # The length rule, which counts after NFC and trimming.
    "empty": ("", "1-32 characters"),
    "only spaces": (" \u00a0\u3000 ", "1-32 characters"),
    "33 characters": ("x" * 33, "1-32 characters"),
    "33 composed characters": ("e\u0301" * 33, "1-32 characters"),
}


@pytest.mark.parametrize(("name", "reason"), list(REFUSED.values()), ids=list(REFUSED))
async def test_refused_name_gets_400_and_leaves_the_name_unchanged(
    client: Any, name: str, reason: str
) -> None:
    session = await named(client)
    error = await error_of(await client.put("/api/session", json={"name": name}), 400)
    assert error["code"] == "bad_request"
    assert reason in error["message"]
    await expect_name_unchanged(client, session)


# Unicode's Default_Ignorable_Code_Point, each range by its ends, the variation
# selectors, and characters drawn blank.
INVISIBLE = [
    0x00AD,
    0x034F,
    0x061C,
    0x115F,
    0x1160,
    0x17B4,
    0x17B5,
    0x180B,
    0x180C,
    0x180D,
    0x180E,
    0x180F,
    0x200B,
    0x200F,
    0x202A,
    0x202E,
    0x2060,
    0x2065,
    0x206F,
    0x3164,
    0xFE00,
    0xFE0E,
    0xFE0F,
    0xFEFF,
    0xFFA0,
    0xFFF0,
    0xFFF8,
    0x1BCA0,
    0x1BCA3,
    0x1D173,
    0x1D17A,
    0xE0000,
    0xE0001,
    0xE007F,
    0xE0100,
    0xE01EF,
    0xE01F0,
    0xE0FFF,
    0x2800,
    0x1D159,
    0x16FE4,
]


@pytest.mark.parametrize("code", INVISIBLE, ids=[f"U+{code:04X}" for code in INVISIBLE])
async def test_an_invisible_character_alone_or_appended_gets_400_naming_it(
    client: Any, code: int
) -> None:
    session = await named(client)
    for name in (chr(code), BEFORE + chr(code), "Ada" + chr(code) + " Lovelace"):
        error = await error_of(await client.put("/api/session", json={"name": name}), 400)
        assert f"(U+{code:04X})" in error["message"], name
    await expect_name_unchanged(client, session)


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "\\ud800"}',  # a lone high surrogate, as a JSON escape
        b'{"name": "Ada \\udc00"}',  # a lone low surrogate
        b'{"name": "\\ude00\\ud83d"}',  # a pair in the wrong order
    ],
)
async def test_lone_surrogate_in_a_name_gets_400_not_500(client: Any, body: bytes) -> None:
    session = await named(client)
    resp = await client.put("/api/session", data=body, headers={"Content-Type": "application/json"})
    error = await error_of(resp, 400)
    assert "surrogate" in error["message"]
    await expect_name_unchanged(client, session)


async def test_surrogate_pair_escape_is_one_character(client: Any) -> None:
    resp = await client.put(
        "/api/session",
        data=b'{"name": "Ada \\ud83d\\ude00"}',
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["name"] == "Ada \U0001f600"


async def test_names_are_stored_nfc_normalised(client: Any) -> None:
    resp = await client.put("/api/session", json={"name": "Jose\u0301 Rene\u0301e"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["name"] == "Jos\u00e9 Ren\u00e9e"
    assert (await (await client.get("/api/session")).json())["name"] == "Jos\u00e9 Ren\u00e9e"
    message = (await (await client.post(ROOM, json={"text": "x"})).json())["message"]
    assert message["name"] == "Jos\u00e9 Ren\u00e9e"


async def test_length_counts_characters_after_nfc(client: Any) -> None:
    # 64 code points as sent, 32 once "e" + U+0301 is composed into one.
    resp = await client.put("/api/session", json={"name": "e\u0301" * 32})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["name"] == "\u00e9" * 32


@pytest.mark.parametrize(
    ("name", "stored"),
    [
        ("Zo\u00eb", "Zo\u00eb"),
        # Vietnamese: e with two marks, sent decomposed, stored as one character.
        ("Nguye\u0323\u0302n", "Nguy\u1ec7n"),
        # Devanagari: a nukta, a vowel sign and a nasal on one letter (three marks).
        ("\u091c\u093c\u0940\u0902", "\u091c\u093c\u0940\u0902"),
        # Pointed Hebrew: shin with a dagesh and a shin dot.
        ("\u05e9\u05bc\u05c1", "\u05e9\u05bc\u05c1"),
        ("\u0645\u062d\u0645\u062f", "\u0645\u062d\u0645\u062f"),  # Arabic, right to left
        ("\u674e\u5c0f\u9f99", "\u674e\u5c0f\u9f99"),
        ("\U0001f44d\U0001f3fd Ada", "\U0001f44d\U0001f3fd Ada"),  # emoji with a skin tone
        ("Ada \u2764 \U0001f600", "Ada \u2764 \U0001f600"),  # emoji without a selector
        ("\uae40\ubbfc\uc900", "\uae40\ubbfc\uc900"),  # Hangul syllables
        ("\u1112\u1161\u11ab", "\ud55c"),  # Hangul jamo, composed by NFC
        ("\u179f\u17bb\u1781\u17b6", "\u179f\u17bb\u1781\u17b6"),  # Khmer
        ("\u182e\u1823\u1829\u182d\u1823\u182f", "\u182e\u1823\u1829\u182d\u1823\u182f"),
        ("\u0e2a\u0e21\u0e0a\u0e32\u0e22", "\u0e2a\u0e21\u0e0a\u0e32\u0e22"),  # Thai
        ("\u0ba4\u0bae\u0bbf\u0bb4\u0bcd", "\u0ba4\u0bae\u0bbf\u0bb4\u0bcd"),  # Tamil
        ("\u12a0\u1260\u1260", "\u12a0\u1260\u1260"),  # Ethiopic
        ("\u10dc\u10d8\u10dc\u10dd", "\u10dc\u10d8\u10dc\u10dd"),  # Georgian
        (
            "\u0414\u043c\u0438\u0442\u0440\u0438\u0439",
            "\u0414\u043c\u0438\u0442\u0440\u0438\u0439",
        ),
        ("\u0395\u03bb\u03ad\u03bd\u03b7", "\u0395\u03bb\u03ad\u03bd\u03b7"),  # Greek
        ("\u3055\u304f\u3089", "\u3055\u304f\u3089"),  # Hiragana
        ("\u13e3\u13b3\u13a9", "\u13e3\u13b3\u13a9"),  # Cherokee
        ("\u2801\u2803 braille", "\u2801\u2803 braille"),  # braille that is not blank
        ("\u00a0Ada\u3000\u3000Lovelace ", "Ada Lovelace"),  # any space separator is a space
        ("Zed (you)", "Zed (you)"),  # the page's own marker stands after the tag
    ],
)
async def test_names_in_any_script_are_accepted(client: Any, name: str, stored: str) -> None:
    resp = await client.put("/api/session", json={"name": name})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["name"] == stored
    assert (await (await client.get("/api/session")).json())["name"] == stored
