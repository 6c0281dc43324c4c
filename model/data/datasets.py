"""Readers for replayable event data: RecBole atomic files, GroupLens ``u.data``, CSV.

Every reader returns a :class:`LoadResult` whose events are sorted by time
(stable, so ties keep file order) with timestamps in epoch milliseconds.
Rows that cannot be parsed are counted and the first few are kept as examples;
``strict=True`` turns the first bad row into a :class:`DataError` instead.

Rating data has no behaviour, so a rating is mapped onto our event types by
strength of preference (see :func:`rating_to_event`), and the rating itself
is kept in ``LoadResult.ratings`` (aligned with ``events``) because the FluRS
protocol selects ``rating == 5`` as the positive events.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from core.errors import DataError
from core.types import EVENT_TYPES, Event

__all__ = [
    "LoadResult",
    "load_events",
    "rating_to_event",
    "DEFAULT_COLUMNS",
    "DEFAULT_EVENT_MAP",
    "FORMATS",
    "SOURCES",
    "parse_mapping",
    "bad_rows_message",
]

FORMATS: tuple[str, ...] = ("recbole", "movielens", "csv", "unisrec")
# Where events can come from on the command line: a file format, or the built-in stream.
SOURCES: tuple[str, ...] = (*FORMATS, "synthetic")
MAX_EXAMPLES = 5

# Our field -> CSV column name. ``category`` is optional in the file.
DEFAULT_COLUMNS: dict[str, str] = {
    "user": "user",
    "item": "item",
    "type": "type",
    "ts": "ts",
    "category": "category",
}

# Behaviour names seen in public e-commerce logs -> our four event types.
DEFAULT_EVENT_MAP: dict[str, str] = {
    **{name: name for name in EVENT_TYPES},
    "pv": "click",
    "view": "click",
    "click": "click",
    "fav": "favourite",
    "favorite": "favourite",
    "like": "favourite",
    "addtocart": "cart",
    "add_to_cart": "cart",
    "buy": "purchase",
    "order": "purchase",
    "transaction": "purchase",
}

# ML genre flags in u.item, in the order GroupLens documents them (used when
# u.genre is absent).
_ML_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


@dataclass(slots=True)
class LoadResult:
    """Parsed events (time-ordered) plus a report of the rows that were skipped.

    ``ratings`` is aligned with ``events`` when the source has ratings, else None.
    """

    events: list[Event] = field(default_factory=list)
    bad_rows: int = 0
    examples: list[str] = field(default_factory=list)
    ratings: list[float] | None = None


def rating_to_event(rating: float) -> str:
    """Map an explicit rating (1–5 stars) to an event type.

    A rating says the user consumed the item and how much they liked it, so
    strength maps onto our weight order: 5 -> favourite, 4 -> cart,
    anything lower -> click. Never purchase: purchases are excluded from
    future lists, and a rated movie is no more "bought" than a clicked one.
    """
    if rating >= 4.5:
        return "favourite"
    if rating >= 3.5:
        return "cart"
    return "click"


class _Collector:
    """Accumulates rows, bad-row reports and strict-mode failures."""

    def __init__(self, path: Path, strict: bool, with_ratings: bool) -> None:
        self.path = path
        self.strict = strict
        self.rows: list[tuple[int, int, Event, float]] = []
        self.bad = 0
        self.examples: list[str] = []
        self.with_ratings = with_ratings

    def add(self, ev: Event, rating: float = math.nan) -> None:
        self.rows.append((ev.ts, len(self.rows), ev, rating))

    def reject(self, line_no: int, reason: str, raw: str) -> None:
        msg = f"{self.path.name}:{line_no}: {reason}: {raw[:80]!r}"
        if self.strict:
            raise DataError(f"bad row in {msg}")
        self.bad += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(msg)

    def result(self) -> LoadResult:
        self.rows.sort(key=lambda r: (r[0], r[1]))
        events = [r[2] for r in self.rows]
        ratings = [r[3] for r in self.rows] if self.with_ratings else None
        return LoadResult(events, self.bad, self.examples, ratings)


def _open_lines(path: Path, events: bool = False) -> Iterator[str]:
    """The file's lines (a UTF-8 byte-order mark dropped). ``events``: bytes that are not
    UTF-8 stay as lone surrogates, for the reader to reject the row (:func:`_not_utf8`);
    otherwise (metadata beside the events) they become U+FFFD."""
    errors = "surrogateescape" if events else "replace"
    try:
        with path.open("r", encoding="utf-8-sig", errors=errors, newline="") as fh:
            yield from fh
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def _not_utf8(line: str) -> bool:
    """A line read by ``_open_lines(events=True)`` held bytes that are not UTF-8."""
    return any("\udc80" <= ch <= "\udcff" for ch in line)


def _seconds_to_ms(text: str) -> int:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError("timestamp out of range")
    return int(round(value * 1000))


def _find(path: Path, suffixes: Iterable[str], what: str) -> Path:
    """A file itself, or the single file with one of ``suffixes`` in a directory."""
    if path.is_dir():
        for suffix in suffixes:
            hits = sorted(path.glob(f"*{suffix}"))
            if hits:
                return hits[0]
        raise DataError(f"no {what} file ({', '.join(suffixes)}) in directory {path}")
    if not path.exists():
        raise DataError(f"cannot read {path}: no such file")
    return path


def _recbole_categories(item_path: Path) -> dict[str, str]:
    """item_id -> first genre, from a RecBole ``.item`` file (empty if unusable)."""
    if not item_path.exists():
        return {}
    lines = _open_lines(item_path)
    header = [h.split(":")[0] for h in next(lines, "").rstrip("\r\n").split("\t")]
    if "item_id" not in header:
        return {}
    id_col = header.index("item_id")
    cat_col = next(
        (header.index(n) for n in ("class", "genre", "categories", "category") if n in header), None
    )
    if cat_col is None:
        return {}
    out: dict[str, str] = {}
    for line in lines:
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) > max(id_col, cat_col) and parts[cat_col].strip():
            out[parts[id_col]] = parts[cat_col].split()[0]
    return out


def _load_recbole(path: Path, strict: bool, event_map: Mapping[str, str]) -> LoadResult:
    inter = _find(path, (".inter",), "RecBole .inter")
    lines = _open_lines(inter, events=True)
    head = next(lines, None)
    if head is None:
        raise DataError(f"{inter}: empty file, not a RecBole .inter file")
    names = [h.split(":")[0].strip() for h in head.rstrip("\r\n").split("\t")]
    missing = [n for n in ("user_id", "item_id", "timestamp") if n not in names]
    if missing:
        raise DataError(f"{inter}: not a RecBole .inter file (missing column {missing[0]})")
    iu, ii, it = names.index("user_id"), names.index("item_id"), names.index("timestamp")
    ir = names.index("rating") if "rating" in names else None
    ib = next(
        (names.index(n) for n in ("event", "behavior", "behaviour", "type") if n in names), None
    )
    cats = _recbole_categories(inter.with_suffix(".item"))
    col = _Collector(inter, strict, with_ratings=ir is not None)
    width = max(x for x in (iu, ii, it, ir, ib) if x is not None) + 1
    for line_no, line in enumerate(lines, start=2):
        raw = line.rstrip("\r\n")
        if not raw:
            continue
        if _not_utf8(raw):
            col.reject(line_no, "not UTF-8", raw)
            continue
        parts = raw.split("\t")
        if len(parts) < width:
            col.reject(line_no, f"expected {width} columns, got {len(parts)}", raw)
            continue
        user, item = parts[iu].strip(), parts[ii].strip()
        if not user or not item:
            col.reject(line_no, "empty user or item", raw)
            continue
        try:
            ts = _seconds_to_ms(parts[it])
            rating = float(parts[ir]) if ir is not None else math.nan
        except ValueError:
            col.reject(line_no, "unparsable timestamp or rating", raw)
            continue
        if ib is not None:
            kind = event_map.get(parts[ib].strip().lower())
            if kind is None:
                col.reject(line_no, f"unknown behaviour {parts[ib].strip()!r}", raw)
                continue
        elif ir is not None:
            kind = rating_to_event(rating)
        else:
            kind = "click"
        col.add(Event(user, item, kind, ts, cats.get(item)), rating)
    return col.result()


def _movielens_categories(data_path: Path) -> dict[str, str]:
    """item id -> first genre flagged in GroupLens ``u.item`` (empty if absent)."""
    item_path = data_path.with_name("u.item")
    if not item_path.exists():
        return {}
    genres = list(_ML_GENRES)
    genre_path = data_path.with_name("u.genre")
    if genre_path.exists():
        named = [ln.split("|")[0] for ln in _open_lines(genre_path) if "|" in ln]
        genres = named or genres
    out: dict[str, str] = {}
    for line in _open_lines(item_path):
        parts = line.rstrip("\r\n").split("|")
        flags = parts[5:]
        for name, flag in zip(genres, flags, strict=False):
            if flag.strip() == "1":
                out[parts[0]] = name
                break
    return out


def _load_movielens(path: Path, strict: bool) -> LoadResult:
    data = path / "u.data" if path.is_dir() else path
    if not data.exists():
        raise DataError(f"cannot read {data}: no such file")
    cats = _movielens_categories(data)
    col = _Collector(data, strict, with_ratings=True)
    seen_any = False
    for line_no, line in enumerate(_open_lines(data, events=True), start=1):
        raw = line.rstrip("\r\n")
        if not raw:
            continue
        if _not_utf8(raw):
            col.reject(line_no, "not UTF-8", raw)
            continue
        parts = raw.split("\t")
        if len(parts) != 4:
            if not seen_any and line_no == 1:
                raise DataError(
                    f"{data}: not a GroupLens u.data file (want 4 tab-separated "
                    f"columns user, item, rating, timestamp)"
                )
            col.reject(line_no, f"expected 4 columns, got {len(parts)}", raw)
            continue
        seen_any = True
        try:
            rating = float(parts[2])
            ts = _seconds_to_ms(parts[3])
        except ValueError:
            col.reject(line_no, "unparsable rating or timestamp", raw)
            continue
        user, item = parts[0].strip(), parts[1].strip()
        if not user or not item:
            col.reject(line_no, "empty user or item", raw)
            continue
        col.add(Event(user, item, rating_to_event(rating), ts, cats.get(item)), rating)
    return col.result()


def _parse_ts(text: str) -> int:
    """Epoch ms from epoch seconds/ms (numbers below 1e11 are seconds) or ISO 8601."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    if not math.isfinite(value) or value < 0:
        raise ValueError("timestamp out of range")
    # 1e11 s is the year 5138 while 1e11 ms is 1973: a number this small is seconds.
    return int(round(value * 1000)) if value < 1e11 else int(value)


def _load_csv(
    path: Path, strict: bool, column_map: Mapping[str, str] | None, event_map: Mapping[str, str]
) -> LoadResult:
    if path.is_dir():
        raise DataError(f"{path} is a directory; --format csv wants a file")
    columns = {**DEFAULT_COLUMNS, **(column_map or {})}
    lines = _open_lines(path, events=True)
    head = next(lines, None)
    if head is None:
        raise DataError(f"{path}: empty file, expected a CSV header")
    delim = "\t" if head.count("\t") > head.count(",") else ","
    header = [h.strip() for h in next(csv.reader([head], delimiter=delim))]
    missing = [columns[f] for f in ("user", "item", "type", "ts") if columns[f] not in header]
    if missing:
        raise DataError(f"{path}: CSV header lacks column {missing[0]!r} (have {header})")
    idx = {f: header.index(c) for f, c in columns.items() if c in header}
    width = max(idx.values()) + 1
    col = _Collector(path, strict, with_ratings=False)
    mapping = {k.lower(): v for k, v in event_map.items()}
    for line_no, row in enumerate(csv.reader(lines, delimiter=delim), start=2):
        if not row:
            continue
        raw = delim.join(row)
        if _not_utf8(raw):
            col.reject(line_no, "not UTF-8", raw)
            continue
        if len(row) < width:
            col.reject(line_no, f"expected {len(header)} columns, got {len(row)}", raw)
            continue
        user, item = row[idx["user"]].strip(), row[idx["item"]].strip()
        if not user or not item:
            col.reject(line_no, "empty user or item", raw)
            continue
        kind = mapping.get(row[idx["type"]].strip().lower())
        if kind is None:
            col.reject(line_no, f"unknown behaviour {row[idx['type']].strip()!r}", raw)
            continue
        try:
            ts = _parse_ts(row[idx["ts"]])
        except (ValueError, OverflowError):
            col.reject(line_no, "unparsable timestamp", raw)
            continue
        cat = row[idx["category"]].strip() if "category" in idx else ""
        col.add(Event(user, item, kind, ts, cat or None))
    return col.result()


def parse_mapping(text: str | None, what: str, keys: Sequence[str] | None = None) -> dict[str, str]:
    """``"user=uid,item=iid"`` -> ``{"user": "uid", "item": "iid"}`` (CLI flags).

    ``keys`` limits the left-hand names; a malformed pair is a :class:`DataError`.
    """
    out: dict[str, str] = {}
    for pair in (text or "").split(","):
        if not pair.strip():
            continue
        name, sep, value = pair.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise DataError(f"{what}: {pair.strip()!r} is not of the form name=value")
        if keys is not None and name not in keys:
            raise DataError(f"{what}: unknown name {name!r} (choose from {', '.join(keys)})")
        out[name] = value
    return out


def bad_rows_message(result: LoadResult, path: str | Path) -> str | None:
    """One report of the rows a load skipped: their count and first examples."""
    if not result.bad_rows:
        return None
    lines = [f"skipped {result.bad_rows} unreadable row(s) in {path}; first ones:"]
    lines += [f"  {ex}" for ex in result.examples]
    return "\n".join(lines)


def load_events(
    path: str | Path,
    fmt: str,
    *,
    strict: bool = False,
    column_map: Mapping[str, str] | None = None,
    event_map: Mapping[str, str] | None = None,
) -> LoadResult:
    """Read an event file (or a directory holding one) in format ``fmt``.

    ``fmt`` is ``recbole`` (``.inter`` + optional ``.item`` beside it),
    ``movielens`` (GroupLens ``u.data`` + optional ``u.item``) or ``csv``
    (header row; ``column_map`` renames our fields user/item/type/ts/category
    to the file's columns; ``event_map`` maps behaviour names to event types,
    merged over :data:`DEFAULT_EVENT_MAP`) or ``unisrec`` (users' item sequences
    without timestamps, made a stream as :mod:`model.data.unisrec` documents).
    """
    p = Path(path)
    emap = {**DEFAULT_EVENT_MAP, **(event_map or {})}
    bad_targets = sorted(set(emap.values()) - set(EVENT_TYPES))
    if bad_targets:
        raise DataError(f"event map targets unknown event type {bad_targets[0]!r}")
    if fmt == "recbole":
        return _load_recbole(p, strict, emap)
    if fmt == "movielens":
        return _load_movielens(p, strict)
    if fmt == "csv":
        return _load_csv(p, strict, column_map, emap)
    if fmt == "unisrec":
        from model.data.unisrec import stream_events

        events, bad, examples = stream_events(p, strict)
        return LoadResult(events, bad, examples)
    raise DataError(f"unknown data format {fmt!r} (choose from {', '.join(FORMATS)})")
