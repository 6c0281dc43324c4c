"""Item metadata: what an item is, in words, and the loaders of catalogue files.

An :class:`ItemMeta` is one record of the optional items topic
(``interest.items``: compacted, key = item id, JSON
``{"item_id": str, "title": str, "category": str?, "text": str?}``) and what
:func:`load_items` reads from a catalogue file:

* ``recbole``: the ``.item`` file (``item_id``, a title column such as
  ``movie_title``, optional ``release_year``, a genre column such as ``class``
  and an optional ``text``/``description`` column); named by its events file
  (``x.inter``), the catalogue is the ``x.item`` beside it;
* ``movielens``: GroupLens ``u.item`` (``id|title|release date|...|19 genre flags``);
* ``csv``: a header row with ``item`` and ``title``, optional ``text`` and ``category``;
* ``unisrec``: the ``<name>.text`` of a UniSRec data set (``item id<TAB>title. category
  path. brand.``; see :mod:`model.data.unisrec`), the category path as category.

The category is the first genre (as the event loaders of :mod:`model.data.datasets`
give it, so events and metadata agree); every genre goes into the text.

>>> meta = ItemMeta("1", "Toy Story (1995)", "Animation", "Animation, Children's, Comedy")
>>> meta.content_text()
"Toy Story (1995). Animation, Children's, Comedy"
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import DataError

__all__ = ["ItemMeta", "ItemsLoad", "load_items", "item_from_json", "ITEM_FORMATS", "MAX_TEXT"]

ITEM_FORMATS: tuple[str, ...] = ("recbole", "movielens", "csv", "unisrec")
# Longer texts are cut here: the encoder reads 256 word pieces at most anyway.
MAX_TEXT = 4000
_MAX_EXAMPLES = 5
_TITLE_COLUMNS = ("movie_title", "title", "name", "item_name")
_CATEGORY_COLUMNS = ("class", "genre", "genres", "categories", "category")
_TEXT_COLUMNS = ("text", "description", "overview", "summary")


@dataclass(frozen=True, slots=True)
class ItemMeta:
    """What is known of an item before anyone touches it."""

    item_id: str
    title: str
    category: str | None = None
    text: str | None = None

    def content_text(self) -> str:
        """The text the content encoder reads: title, then the free text."""
        parts = [p.strip() for p in (self.title, self.text or "") if p and p.strip()]
        return ". ".join(parts)[:MAX_TEXT]

    def to_json(self) -> dict[str, str]:
        out = {"item_id": self.item_id, "title": self.title}
        if self.category:
            out["category"] = self.category
        if self.text:
            out["text"] = self.text
        return out


def item_from_json(doc: Any, max_id_bytes: int = 256) -> ItemMeta:
    """An :class:`ItemMeta` from a decoded JSON record; ValueError says what is wrong."""
    if not isinstance(doc, Mapping):
        raise ValueError("not a JSON object")
    item_id, title = doc.get("item_id"), doc.get("title")
    if not isinstance(item_id, str) or not item_id.strip():
        raise ValueError("item_id must be a non-empty string")
    if len(item_id.encode("utf-8")) > max_id_bytes:
        raise ValueError(f"item_id is longer than {max_id_bytes} bytes")
    if not isinstance(title, str):
        raise ValueError("title must be a string")
    extra: dict[str, str | None] = {}
    for name in ("category", "text"):
        value = doc.get(name)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} must be a string")
        extra[name] = value or None
    category = extra["category"]
    if category is not None and len(category.encode("utf-8")) > max_id_bytes:
        raise ValueError(f"category is longer than {max_id_bytes} bytes")
    text = extra["text"]
    return ItemMeta(item_id, title[:MAX_TEXT], category, None if text is None else text[:MAX_TEXT])


@dataclass
class ItemsLoad:
    """Items read from a catalogue file, and the rows skipped."""

    items: list[ItemMeta]
    bad_rows: int = 0
    examples: tuple[str, ...] = ()

    def report(self, path: str | Path) -> str | None:
        if not self.bad_rows:
            return None
        lines = [f"skipped {self.bad_rows} unreadable item row(s) in {path}; first ones:"]
        return "\n".join(lines + [f"  {ex}" for ex in self.examples])


def _lines(path: Path) -> Iterator[str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark (spreadsheets write one) dropped
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # GroupLens u.item is ISO-8859-1
    yield from text.splitlines()


def _find(path: Path, names: tuple[str, ...], what: str) -> Path:
    if path.is_dir():
        for pattern in names:
            hits = sorted(path.glob(pattern))
            if hits:
                return hits[0]
        raise DataError(f"no {what} file ({', '.join(names)}) in directory {path}")
    if not path.exists():
        raise DataError(f"cannot read {path}: no such file")
    return path


class _Rows:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[ItemMeta] = []
        self.bad = 0
        self.examples: list[str] = []

    def reject(self, line_no: int, reason: str, raw: str) -> None:
        self.bad += 1
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append(f"{self.path.name}:{line_no}: {reason}: {raw[:80]!r}")

    def result(self) -> ItemsLoad:
        if not self.items:
            raise DataError(f"{self.path}: no usable item rows")
        return ItemsLoad(self.items, self.bad, tuple(self.examples))


def _load_recbole(path: Path) -> ItemsLoad:
    if path.suffix == ".inter" and path.is_file():  # the events file: its catalogue is beside it
        path = path.with_suffix(".item")
        if not path.exists():
            raise DataError(f"no RecBole .item file beside the events ({path.name} not found)")
    item_file = _find(path, ("*.item",), "RecBole .item")
    lines = _lines(item_file)
    header = [h.split(":")[0].strip() for h in next(lines, "").split("\t")]
    if "item_id" not in header:
        raise DataError(f"{item_file}: not a RecBole .item file (no item_id column)")
    title = next((header.index(c) for c in _TITLE_COLUMNS if c in header), None)
    if title is None:
        raise DataError(f"{item_file}: no title column ({', '.join(_TITLE_COLUMNS)})")
    col_id = header.index("item_id")
    cat = next((header.index(c) for c in _CATEGORY_COLUMNS if c in header), None)
    text = next((header.index(c) for c in _TEXT_COLUMNS if c in header), None)
    year = header.index("release_year") if "release_year" in header else None
    rows = _Rows(item_file)
    for line_no, raw in enumerate(lines, start=2):
        if not raw.strip():
            continue
        parts = raw.split("\t")
        if len(parts) <= max(c for c in (col_id, title, cat, text, year) if c is not None):
            rows.reject(line_no, "too few columns", raw)
            continue
        item_id, name = parts[col_id].strip(), parts[title].strip()
        if not item_id or not name:
            rows.reject(line_no, "empty item id or title", raw)
            continue
        if year is not None and parts[year].strip():
            name = f"{name} ({parts[year].strip()})"
        genres = parts[cat].split() if cat is not None else []
        words = [parts[text].strip()] if text is not None and parts[text].strip() else []
        body = ", ".join(genres)
        rows.items.append(
            ItemMeta(
                item_id,
                name,
                genres[0] if genres else None,
                ". ".join([b for b in (body, *words) if b]) or None,
            )
        )
    return rows.result()


def _load_movielens(path: Path) -> ItemsLoad:
    if path.is_dir():
        item_file = path / "u.item"
    elif path.name == "u.data":  # the events file: its catalogue is beside it
        item_file = path.with_name("u.item")
    else:  # the file named is the catalogue, whatever its name
        item_file = path
    if not item_file.exists():
        raise DataError(f"cannot read {item_file}: no such file")
    from model.data.datasets import _ML_GENRES

    genre_names = list(_ML_GENRES)
    genre_file = item_file.with_name("u.genre")
    if genre_file.exists():
        named = [ln.split("|")[0] for ln in _lines(genre_file) if "|" in ln]
        genre_names = named or genre_names
    rows = _Rows(item_file)
    for line_no, raw in enumerate(_lines(item_file), start=1):
        if not raw.strip():
            continue
        parts = raw.split("|")
        if len(parts) < 6 or not parts[0].strip() or not parts[1].strip():
            rows.reject(line_no, "not id|title|...|genre flags", raw)
            continue
        genres = [g for g, f in zip(genre_names, parts[5:], strict=False) if f.strip() == "1"]
        rows.items.append(
            ItemMeta(
                parts[0].strip(),
                parts[1].strip(),
                genres[0] if genres else None,
                ", ".join(genres) or None,
            )
        )
    return rows.result()


def _load_csv(path: Path) -> ItemsLoad:
    if path.is_dir():
        raise DataError(f"{path} is a directory; --format csv wants a file")
    lines = list(_lines(path))
    if not lines:
        raise DataError(f"{path}: empty file, expected a CSV header item,title[,text][,category]")
    delim = "\t" if lines[0].count("\t") > lines[0].count(",") else ","
    reader = csv.reader(lines, delimiter=delim)
    header = [h.strip().lower() for h in next(reader)]
    if "item" not in header or "title" not in header:
        raise DataError(f"{path}: CSV header needs columns item and title (have {header})")
    names: tuple[str, ...] = ("item", "title", "text", "category")
    idx: dict[str, int] = {name: header.index(name) for name in names if name in header}
    rows = _Rows(path)
    for line_no, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) <= max(idx["item"], idx["title"]):
            rows.reject(line_no, "too few columns", delim.join(row))
            continue
        item_id, title = row[idx["item"]].strip(), row[idx["title"]].strip()
        if not item_id or not title:
            rows.reject(line_no, "empty item or title", delim.join(row))
            continue

        def opt(name: str, row: list[str] = row) -> str | None:
            i = idx.get(name)
            return (row[i].strip() or None) if i is not None and i < len(row) else None

        rows.items.append(ItemMeta(item_id, title, opt("category"), opt("text")))
    return rows.result()


def _load_unisrec(path: Path) -> ItemsLoad:
    from model.data.unisrec import find_files, read_texts, split_text

    text_file = find_files(path).text
    if not text_file.exists():
        raise DataError(f"cannot read {text_file}: no such file")
    texts, bad, examples = read_texts(text_file)
    rows = _Rows(text_file)
    rows.bad, rows.examples = bad, examples
    for item, text in texts.items():
        title, category, brand = split_text(text)
        rest = ". ".join(x for x in (category, brand) if x)
        rows.items.append(ItemMeta(item, title[:MAX_TEXT], category, rest or None))
    return rows.result()


def load_items(path: str | Path, fmt: str) -> ItemsLoad:
    """Item metadata of a catalogue file (or the directory holding it) in format ``fmt``."""
    p = Path(path)
    if fmt == "recbole":
        return _load_recbole(p)
    if fmt == "movielens":
        return _load_movielens(p)
    if fmt == "csv":
        return _load_csv(p)
    if fmt == "unisrec":
        return _load_unisrec(p)
    raise DataError(f"unknown item format {fmt!r} (choose from {', '.join(ITEM_FORMATS)})")
