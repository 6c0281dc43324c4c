"""What a hostile producer sends, and the id rules checked independently of the decoder.

:func:`id_rule_broken` restates the id rules (docs/concepts/events.md) with :mod:`unicodedata`
categories rather than the ``str.isprintable`` the decoder uses, so the two
implementations check each other. :func:`hostile_messages` makes a seeded,
repeatable mix of malformed and adversarial messages for the live fuzz test.
"""

from __future__ import annotations

import json
import random
import unicodedata

__all__ = ["HOSTILE_CHARS", "id_rule_broken", "hostile_messages"]

# Characters that break logs, CSV, caches or displays, plus a few harmless ones so
# that mixtures also land near the rules' edges.
HOSTILE_CHARS = (
    *"\x00\t\n\r\x1b\x7f\x85\x9f",  # Cc: NUL, tab, newlines, escape, DEL, C1
    *"\u00ad\u200b\u200d\u200e\u202e\u2066\ufeff",  # Cf: soft hyphen, zero-width, bidi, BOM
    *"\u2028\u2029\u00a0\u3000\u2009",  # Zl, Zp, Zs other than the ASCII space
    *"\ud800\udfff\ue000\U0010fffd\u0378",  # Cs, Co, Cn
    *' aZ7-_,"\\\u00e9\u4e00\U0001f642',  # allowed
)
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def id_rule_broken(text: str, max_bytes: int = 256) -> str | None:
    """The id rule ``text`` breaks (a short name), or None when it is a good id."""
    if not text:
        return "empty"
    for ch in text:
        cat = unicodedata.category(ch)
        if cat in _BAD_CATEGORIES or (cat == "Zs" and ch != " "):
            return f"character {ch!r} ({cat})"
    if text != text.strip():
        return "leading or trailing whitespace"
    if len(text.encode("utf-8")) > max_bytes:
        return "too long"
    return None


def _hostile_text(rng: random.Random) -> str:
    shape = rng.randrange(6)
    if shape == 0:
        return rng.choice(["", " ", "  ", "\x00", "a\nb", "\t", "\ufeff", "\u202eu1", "u1 "])
    if shape == 1:  # near the 256-byte limit, in 1-, 2- and 4-byte characters
        ch = rng.choice(["x", "é", "\U0001f642"])
        return ch * (256 // len(ch.encode()) + rng.randrange(-1, 2))
    n = rng.randrange(1, 8)
    return "".join(rng.choice(HOSTILE_CHARS) for _ in range(n))


def _wrong_value(rng: random.Random) -> object:
    return rng.choice(
        [
            None,
            True,
            0.5,
            -0.0,
            1e308,
            10**30,
            -(2**63),
            [],
            ["u1"],
            {"id": "u1"},
            {},
            float("nan"),
            float("inf"),
            "",
            2**63,
            1.7e12,
        ]
    )


def _key_for(user: object, rng: random.Random) -> bytes | None:
    if rng.random() < 0.15:
        return rng.choice([None, b"", b"\xff\xfe", b"u1", b"u1 ", b"\x00"])
    text = user if isinstance(user, str) else json.dumps(user)
    return text.encode("utf-8", "surrogatepass")


def hostile_messages(n: int, now_ms: int, seed: int = 16) -> list[tuple[bytes | None, bytes]]:
    """``n`` (key, value) pairs a hostile producer might send, the same for the same seed."""
    rng = random.Random(seed)
    out: list[tuple[bytes | None, bytes]] = []
    for i in range(n):
        doc: dict[str, object] = {
            "user_id": f"h{i}",
            "item_id": f"hi{i}",
            "event": "click",
            "ts": now_ms - rng.randrange(1, 60_000),
        }
        kind = rng.randrange(10)
        if kind <= 2:  # a rule-breaking id in one of the id fields
            doc[("user_id", "item_id", "category")[kind]] = _hostile_text(rng)
        elif kind == 3:  # wrong type, NaN or a huge number in any field
            doc[rng.choice(["user_id", "item_id", "event", "ts", "category"])] = _wrong_value(rng)
        elif kind == 4:  # deep nesting (past Python's recursion limit, under 4096 bytes)
            depth = rng.choice([50, 1200, 2000])
            doc["item_id"] = json.loads("[" * min(depth, 50) + "]" * min(depth, 50))
            if depth > 50:
                out.append((f"h{i}".encode(), b"[" * depth + b"]" * depth))
                continue
        elif kind == 5:  # duplicate keys: parsers disagree on which one wins
            body = json.dumps(doc)[1:]
            dup = json.dumps(rng.choice(["\x00", " ", f"h{i}", "a\nb"]))
            field = rng.choice(["user_id", "item_id"])
            value = f'{{"{field}": {dup}, {body}'.encode()
            out.append((_key_for(doc["user_id"], rng), value))
            continue
        elif kind == 6:  # byte-order mark, or bytes flipped in a valid event
            raw = bytearray(json.dumps(doc).encode())
            if rng.random() < 0.5:
                raw[0:0] = b"\xef\xbb\xbf"
            else:
                for _ in range(rng.randrange(1, 4)):
                    raw[rng.randrange(len(raw))] = rng.randrange(256)
            out.append((_key_for(doc["user_id"], rng), bytes(raw)))
            continue
        elif kind == 7:  # arbitrary bytes
            raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
            out.append((_key_for(doc["user_id"], rng), raw))
            continue
        elif kind == 8:  # unknown event with control characters, or a timestamp far off
            if rng.random() < 0.5:
                doc["event"] = "click\n"
            else:
                doc["ts"] = rng.choice([now_ms // 1000, now_ms + 10 * 86_400_000, -1, 0])
        else:  # oversized (the live test sets max_payload_bytes to 4096)
            doc["pad"] = "x" * rng.randrange(4096, 8000)
        value = json.dumps(doc, ensure_ascii=rng.random() < 0.5)
        out.append((_key_for(doc["user_id"], rng), value.encode("utf-8", "surrogatepass")))
    return out
