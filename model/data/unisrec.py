"""Text-rich sequences as UniSRec and Recformer preprocess Amazon reviews, as a replayable stream.

A data set in this layout (e.g. ``Scientific``, Amazon "Industrial and
Scientific" 2018 as the UniSRec authors preprocessed it) is a directory with

* ``<name>.test.inter``: a header, then one line per user: ``user<TAB>history
  item indexes (space-separated, oldest first)<TAB>last item index``, each user's
  whole sequence;
* ``<name>.item2index``: ``item id<TAB>item index`` (the item id is the ASIN);
* ``<name>.text``: a header, then ``item id<TAB>text``, the text being
  ``title. category path. brand.``

The files keep no timestamps, only each user's order. The stream the evaluator
replays is made the same way for every model and every run:

* **order**: a seeded uniform interleave of the users' sequences (seed
  :data:`STREAM_SEED`): every interleaving that keeps each user's own order is
  equally likely, so users arrive and return throughout the stream as in a log;
* **time**: the n-th event of the stream gets the synthetic timestamp
  ``STREAM_START_MS + n * STREAM_STEP_MS`` (one event a second), strictly increasing;
* **events**: every review is a ``purchase`` of the item (a review follows a
  purchase; the evaluator then never lists an item back to its buyer), with the
  item's category path as its category; item ids are the ASINs.

>>> interleave([["a", "b", "c"], ["x", "y"]], seed=0)
[(0, 'a'), (1, 'x'), (1, 'y'), (0, 'b'), (0, 'c')]
>>> split_text("G8748 Hand Tapping Machine. Industrial & Scientific Cutting Tools. Grizzly. ")
('G8748 Hand Tapping Machine', 'Industrial & Scientific Cutting Tools', 'Grizzly')
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.errors import DataError
from core.types import Event

__all__ = [
    "STREAM_SEED",
    "STREAM_START_MS",
    "STREAM_STEP_MS",
    "UnisrecFiles",
    "find_files",
    "interleave",
    "split_text",
    "read_sequences",
    "read_texts",
    "stream_events",
]

STREAM_SEED = 0
STREAM_START_MS = 1_500_000_000_000  # 2017-07-14: any fixed start would do
STREAM_STEP_MS = 1_000


class UnisrecFiles:
    """The three files of one data set (see the module docstring)."""

    def __init__(self, inter: Path, item2index: Path, text: Path) -> None:
        self.inter, self.item2index, self.text = inter, item2index, text


def find_files(path: str | Path) -> UnisrecFiles:
    """The files of the data set in directory ``path`` (or beside the file ``path``)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"cannot read {p}: no such file or directory")
    folder = p if p.is_dir() else p.parent
    if p.is_file():
        name = p.name.split(".")[0]
        hits = [folder / f"{name}.test.inter", folder / f"{name}.item2index"]
    else:
        hits = [*sorted(folder.glob("*.test.inter"))[:1], *sorted(folder.glob("*.item2index"))[:1]]
    if len(hits) < 2 or not all(h.exists() for h in hits):
        raise DataError(
            f"{p}: not a UniSRec data set (want <name>.test.inter, <name>.item2index and "
            "<name>.text side by side)"
        )
    inter, index = hits
    text = index.with_suffix(".text")
    return UnisrecFiles(inter, index, text)


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_index(path: Path) -> dict[str, str]:
    """item index -> item id, from ``<name>.item2index``."""
    out: dict[str, str] = {}
    for line_no, line in enumerate(_lines(path), start=1):
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise DataError(f"{path.name}:{line_no}: want 'item id<TAB>index': {line[:80]!r}")
        out[parts[1].strip()] = parts[0].strip()
    if not out:
        raise DataError(f"{path}: no items")
    return out


def read_sequences(
    files: UnisrecFiles, strict: bool = False
) -> tuple[list[str], list[list[str]], int, list[str]]:
    """(users, each user's item ids oldest first, bad rows, first bad rows)."""
    index = read_index(files.item2index)
    lines = _lines(files.inter)
    if not lines or "item_id_list" not in lines[0]:
        raise DataError(
            f"{files.inter}: not a UniSRec .test.inter file (header user_id, item_id_list, item_id)"
        )
    users: list[str] = []
    seqs: list[list[str]] = []
    bad: list[str] = []
    n_bad = 0
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        items = (parts[1].split() + [parts[2].strip()]) if len(parts) == 3 else []
        ids = [index.get(i) for i in items]
        if not items or not parts[0].strip() or any(x is None for x in ids):
            why = "unknown item index" if items else "want user<TAB>history<TAB>last item"
            msg = f"{files.inter.name}:{line_no}: {why}: {line[:80]!r}"
            if strict:
                raise DataError(f"bad row in {msg}")
            n_bad += 1
            if len(bad) < 5:
                bad.append(msg)
            continue
        users.append(parts[0].strip())
        seqs.append([x for x in ids if x is not None])
    return users, seqs, n_bad, bad


def interleave(seqs: Sequence[Sequence[str]], seed: int = STREAM_SEED) -> list[tuple[int, str]]:
    """(user position, item) in a seeded uniform interleave keeping each user's order."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    owner = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(seqs)), lengths))
    # The k-th slot of a user takes the user's k-th item.
    flat = [item for s in seqs for item in s]
    items: list[str] = [""] * len(flat)
    for pos, slot in enumerate(np.argsort(owner, kind="stable").tolist()):
        items[slot] = flat[pos]
    return list(zip(owner.tolist(), items, strict=True))


def split_text(text: str) -> tuple[str, str | None, str | None]:
    """(title, category path, brand) of a ``title. category path. brand.`` text."""
    parts = [p.strip() for p in text.strip().rstrip(".").split(". ")]
    if len(parts) < 3:
        return text.strip(), None, None
    title = ". ".join(parts[:-2]).strip()
    return title or text.strip(), parts[-2] or None, parts[-1] or None


def read_texts(path: Path) -> tuple[dict[str, str], int, list[str]]:
    """item id -> text, from ``<name>.text``; and the bad rows."""
    out: dict[str, str] = {}
    bad: list[str] = []
    n_bad = 0
    for line_no, line in enumerate(_lines(path)[1:], start=2):
        if not line.strip():
            continue
        item, sep, text = line.partition("\t")
        if not sep or not item.strip() or not text.strip():
            n_bad += 1
            if len(bad) < 5:
                bad.append(f"{path.name}:{line_no}: want 'item id<TAB>text': {line[:80]!r}")
            continue
        out[item.strip()] = text.strip()
    return out, n_bad, bad


def stream_events(path: str | Path, strict: bool = False) -> tuple[list[Event], int, list[str]]:
    """The replayable stream of the data set at ``path`` (module docstring); bad rows."""
    files = find_files(path)
    users, seqs, n_bad, bad = read_sequences(files, strict)
    categories: dict[str, str | None] = {}
    if files.text.exists():
        texts, _, _ = read_texts(files.text)
        categories = {item: split_text(t)[1] for item, t in texts.items()}
    events = [
        Event(
            users[u],
            item,
            "purchase",
            STREAM_START_MS + n * STREAM_STEP_MS,
            categories.get(item),
        )
        for n, (u, item) in enumerate(interleave(seqs))
    ]
    return events, n_bad, bad
