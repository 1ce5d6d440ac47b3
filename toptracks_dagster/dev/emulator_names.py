"""Deterministic ids, random streams and names for the Spotify emulator's catalogue.

Everything hashes its inputs with SHA-256, never Python's per-process salted hash(), so a seed gives the same
catalogue in every process.
"""

from __future__ import annotations

import hashlib
import random
import string

_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()


def seeded_rng(*parts: object) -> random.Random:
    return random.Random(int.from_bytes(_digest(*parts)[:16], "big"))


def unit_float(*parts: object) -> float:
    """A uniform float in [0, 1) that depends only on `parts`."""
    return int.from_bytes(_digest(*parts)[:8], "big") / 2**64


def hex_digest(length: int, *parts: object) -> str:
    return _digest(*parts).hex()[:length]


def base62_id(*parts: object) -> str:
    """A 22-character base62 id like Spotify's (131 bits, so distinct inputs never collide in practice)."""
    number = int.from_bytes(_digest(*parts), "big")
    chars = []
    for _ in range(22):
        number, digit = divmod(number, 62)
        chars.append(_BASE62[digit])
    return "".join(chars)


def demo_artist_ids(n: int, seed: int = 0) -> list[str]:
    """`n` distinct valid artist ids, the same for the same seed, for seeding demo databases.

    They are ordinary catalog ids, so a catalog with the same seed answers 404 for about `missing_share` of
    them, like stale ids in a real database.
    """
    return [base62_id("artist", seed, index) for index in range(n)]


_ADJECTIVES = [
    "Golden",
    "Electric",
    "Silent",
    "Broken",
    "Midnight",
    "Neon",
    "Velvet",
    "Wild",
    "Lonely",
    "Crystal",
    "Burning",
    "Paper",
    "Hollow",
    "Sweet",
    "Cold",
    "Summer",
    "Violet",
    "Endless",
    "Lucky",
]
_NOUNS = [
    "Heart",
    "River",
    "Dream",
    "Fire",
    "Ocean",
    "Highway",
    "Mirror",
    "Garden",
    "Thunder",
    "Shadow",
    "Rain",
    "City",
    "Echo",
    "Horizon",
    "Signal",
    "Stranger",
    "Moon",
    "Window",
    "Satellite",
    "Paradise",
]
_VERBS = ["Running", "Falling", "Dancing", "Waiting", "Chasing", "Holding On", "Dreaming", "Driving"]
_PREPOSITIONS = ["to", "through", "under", "across", "into", "beyond"]
# Real catalogs are full of non-ASCII and punctuated titles; they catch encoding and quoting bugs downstream.
_SPECIAL_TITLES = [
    "Café Noir",
    "夜に駆ける",
    "Niño del Mar",
    "Ça plane pour moi",
    "Déjà Vu",
    "Sólo Tú",
    "Über den Wolken",
    "君の名前",
    "Мечта",
    "사랑해요",
    'Say "Goodbye"',
    "Don't Stop Now",
    "Rock 'n' Roll Heart",
    "L'amour toujours",
    "¿Dónde Estás?",
    "Smörgåsbord Blues",
]
_TITLE_SUFFIXES = [" - Remastered 2011", " - Live", " (Acoustic)", " - Radio Edit", " (Remix)"]
_FIRST_NAMES = [
    "Ava",
    "Leo",
    "Mila",
    "Jonas",
    "Zoe",
    "Mateo",
    "Ines",
    "Kai",
    "Nora",
    "Theo",
    "Luz",
    "Yuki",
    "Omar",
    "Freya",
    "Dario",
    "Amara",
]
_LAST_NAMES = [
    "Rivers",
    "Stone",
    "Moreau",
    "Kowalski",
    "Haddad",
    "Lindqvist",
    "Okafor",
    "Tanaka",
    "Reyes",
    "Novak",
    "Byrne",
    "Silva",
]
_SPECIAL_ARTISTS = [
    "Sigur Lúna",
    "Mø Rose",
    "ヨルシカ風",
    "Zoë & The Kites",
    "Ólöf Storm",
    "Beyoncé Cover Band",
    "The 'Quoted' Band",
    "Niños del Sol",
]


def artist_name(seed: int, artist_id: str) -> str:
    rng = seeded_rng(seed, "artist-name", artist_id)
    roll = rng.random()
    if roll < 0.06:
        return rng.choice(_SPECIAL_ARTISTS)
    if roll < 0.40:
        return f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}"
    if roll < 0.65:
        return f"The {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}s"
    if roll < 0.80:
        return f"{rng.choice(_FIRST_NAMES)} & The {rng.choice(_NOUNS)}s"
    if roll < 0.90:
        return f"DJ {rng.choice(_NOUNS)}"
    return f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"


def song_title(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.08:
        title = rng.choice(_SPECIAL_TITLES)
    elif roll < 0.40:
        title = f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
    elif roll < 0.60:
        title = f"{rng.choice(_VERBS)} {rng.choice(_PREPOSITIONS)} the {rng.choice(_NOUNS)}"
    elif roll < 0.75:
        title = f"{rng.choice(_NOUNS)} of {rng.choice(_NOUNS)}s"
    else:
        title = rng.choice(_NOUNS)
    if rng.random() < 0.08:
        title += rng.choice(_TITLE_SUFFIXES)
    return title
