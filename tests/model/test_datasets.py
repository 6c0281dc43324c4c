"""Loaders: RecBole, GroupLens and CSV files made in tmp_path, good and bad rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import DataError
from model.data.datasets import load_events, rating_to_event


def _recbole(tmp_path: Path, rows: list[str]) -> Path:
    inter = tmp_path / "toy.inter"
    inter.write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "\n".join(rows) + "\n"
    )
    (tmp_path / "toy.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tA\t1995\tComedy Drama\n20\tB\t1996\tAction\n"
    )
    return inter


def test_recbole_sorts_by_time_and_reads_genres(tmp_path: Path) -> None:
    _recbole(tmp_path, ["1\t10\t5\t200", "2\t20\t3\t100", "1\t20\t4\t150"])
    res = load_events(tmp_path, "recbole")
    assert [e.ts for e in res.events] == [100_000, 150_000, 200_000]
    assert res.ratings == [3.0, 4.0, 5.0]
    assert res.events[2].category == "Comedy"  # first genre
    assert res.events[0].category == "Action"
    assert [e.event for e in res.events] == [rating_to_event(r) for r in res.ratings]
    assert res.bad_rows == 0


def test_recbole_reports_bad_rows_and_strict_mode_fails(tmp_path: Path) -> None:
    inter = _recbole(tmp_path, ["1\t10\t5\t200", "1\t10", "2\t20\t3\tyesterday", "3\t20\t4\t9"])
    res = load_events(inter, "recbole")
    assert len(res.events) == 2
    assert res.bad_rows == 2
    assert len(res.examples) == 2 and "toy.inter:3" in res.examples[0]
    with pytest.raises(DataError, match="toy.inter:3"):
        load_events(inter, "recbole", strict=True)


def test_recbole_wrong_file_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.inter"
    bad.write_text("a\tb\n1\t2\n")
    with pytest.raises(DataError, match="missing column user_id"):
        load_events(bad, "recbole")
    with pytest.raises(DataError, match="no such file"):
        load_events(tmp_path / "absent.inter", "recbole")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no RecBole"):
        load_events(empty, "recbole")


def test_movielens_udata_with_uitem(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1\t7\t5\t300\n2\t8\t1\t100\nbroken line\n")
    flags = ["0"] * 19
    horror = list(flags)
    horror[11] = "1"
    (tmp_path / "u.item").write_text(
        "7|Film|01-Jan-1995||http://x|" + "|".join(horror) + "\n"
        "8|Other|01-Jan-1995||http://x|" + "|".join(flags) + "\n"
    )
    res = load_events(tmp_path, "movielens")
    assert [(e.user_id, e.item_id) for e in res.events] == [("2", "8"), ("1", "7")]
    assert res.events[1].category == "Horror"
    assert res.events[0].category is None
    assert res.events[1].event == "favourite" and res.events[0].event == "click"
    assert res.bad_rows == 1


def test_movielens_rejects_other_layouts(tmp_path: Path) -> None:
    path = tmp_path / "u.data"
    path.write_text("user,item,rating,ts\n1,2,3,4\n")
    with pytest.raises(DataError, match="not a GroupLens"):
        load_events(path, "movielens")


def test_csv_with_column_and_behaviour_maps(tmp_path: Path) -> None:
    path = tmp_path / "ev.csv"
    path.write_text(
        "uid,sku,behavior,time,cat\n"
        "u1,a,pv,1700000000,shoes\n"
        "u1,a,buy,1700000001000,shoes\n"
        "u2,b,fav,2024-01-01T00:00:00Z,\n"
        "u2,b,teleport,1700000002,\n"
        "u3,c,pv\n"
    )
    res = load_events(
        path,
        "csv",
        column_map={
            "user": "uid",
            "item": "sku",
            "type": "behavior",
            "ts": "time",
            "category": "cat",
        },
    )
    assert [e.event for e in res.events] == ["click", "purchase", "favourite"]
    assert res.events[0].ts == 1_700_000_000_000  # seconds became ms
    assert res.events[1].ts == 1_700_000_001_000  # ms stayed ms
    assert res.events[0].category == "shoes" and res.events[2].category is None
    assert res.bad_rows == 2 and "teleport" in res.examples[0]
    assert res.ratings is None


def test_csv_custom_event_map_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "ev.csv"
    path.write_text("user,item,type,ts\nu,i,basket,5\n")
    assert load_events(path, "csv", event_map={"basket": "cart"}).events[0].event == "cart"
    with pytest.raises(DataError, match="unknown event type"):
        load_events(path, "csv", event_map={"basket": "hug"})
    with pytest.raises(DataError, match="lacks column"):
        load_events(path, "csv", column_map={"ts": "when"})
    with pytest.raises(DataError, match="unknown data format"):
        load_events(path, "parquet")


def test_rows_that_are_not_utf8_are_skipped_and_a_byte_order_mark_is_no_column(
    tmp_path: Path,
) -> None:
    csv_file = tmp_path / "ev.csv"
    csv_file.write_bytes(
        b"\xef\xbb\xbfuser,item,type,ts\n"  # as spreadsheets save UTF-8
        b"u1,a,click,1700000000\n"
        b"u\xe91,b,click,1700000001\n"  # Latin-1, not UTF-8
        b"caf\xc3\xa9,c,click,1700000002\n"
    )
    res = load_events(csv_file, "csv")
    assert [(e.user_id, e.item_id) for e in res.events] == [("u1", "a"), ("caf\u00e9", "c")]
    assert res.bad_rows == 1 and "ev.csv:3: not UTF-8" in res.examples[0]
    inter = _recbole(tmp_path, ["1\t10\t4\t100", "2\t20\t5\t200"])
    inter.write_bytes(inter.read_bytes() + b"\xff\t10\t3\t300\n")
    res = load_events(inter, "recbole")
    assert len(res.events) == 2 and res.bad_rows == 1 and "not UTF-8" in res.examples[0]
    udata = tmp_path / "u.data"
    udata.write_bytes(b"1\t10\t4\t100\n2\xff\t20\t5\t200\n")
    res = load_events(udata, "movielens")
    assert len(res.events) == 1 and res.bad_rows == 1 and "not UTF-8" in res.examples[0]
