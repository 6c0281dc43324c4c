"""Content that is never lost: the UniSRec loader and stream, the last-item protocol, a
catalogue found beside its events or reported, and replicas that get the vectors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core.errors import DataError
from core.types import Event
from engine.replay.pull import evaluate_models, first_event_times
from engine.replay.scaleout import ScaledOut
from model.data.datasets import load_events
from model.data.unisrec import STREAM_STEP_MS, find_files, read_sequences
from model.eval.metrics import split_last_item
from model.factory import create_model
from model.items import ItemMeta, load_items
from stream.cli import evaluate as cli
from tests.helpers import needs_encoder

SLICE = Path(__file__).resolve().parents[1] / "data" / "scientific"


def _file_sequences() -> dict[str, list[str]]:
    """Each user's items, oldest first, read straight from the slice's files."""
    index = dict(
        reversed(line.split("\t"))
        for line in (SLICE / "Scientific.item2index").read_text().split("\n")
        if line
    )
    out = {}
    for line in (SLICE / "Scientific.test.inter").read_text().splitlines()[1:]:
        user, history, last = line.split("\t")
        out[user] = [index[i] for i in [*history.split(), last]]
    return out


def test_unisrec_stream_keeps_every_users_order_with_increasing_time() -> None:
    loaded = load_events(SLICE, "unisrec")
    expected = _file_sequences()
    got: dict[str, list[str]] = {}
    for ev in loaded.events:
        got.setdefault(ev.user_id, []).append(ev.item_id)
    assert got == expected and loaded.bad_rows == 0
    ts = [ev.ts for ev in loaded.events]
    assert all(b - a == STREAM_STEP_MS for a, b in zip(ts, ts[1:], strict=False))
    assert {ev.event for ev in loaded.events} == {"purchase"}
    # Interleaved, not user after user; and the same stream on every load.
    first_user = loaded.events[0].user_id
    n_first = len(expected[first_user])
    assert any(ev.user_id != first_user for ev in loaded.events[:n_first])
    assert load_events(SLICE / "Scientific.test.inter", "unisrec").events == loaded.events


def test_unisrec_items_split_title_category_and_brand() -> None:
    items = {m.item_id: m for m in load_items(SLICE, "unisrec").items}
    line = next(
        ln for ln in (SLICE / "Scientific.text").read_text().splitlines()[1:] if ln.count(". ") == 3
    )
    asin, text = line.split("\t")
    title, category, brand, _ = text.split(". ")
    assert items[asin] == ItemMeta(asin, title, category, f"{category}. {brand}")
    events = load_events(SLICE, "unisrec").events
    assert all(ev.category == items[ev.item_id].category for ev in events)


def test_unisrec_bad_rows_are_counted_or_refused(tmp_path: Path) -> None:
    for name in ("Scientific.item2index", "Scientific.text"):
        shutil.copy(SLICE / name, tmp_path / name)
    lines = (SLICE / "Scientific.test.inter").read_text().splitlines()
    lines[2] = "x\t1 2 3"  # no last item
    lines[3] = lines[3] + " 99999999"  # an index no item has
    (tmp_path / "Scientific.test.inter").write_text("\n".join(lines) + "\n")
    loaded = load_events(tmp_path, "unisrec")
    assert loaded.bad_rows == 2 and len(loaded.examples) == 2
    with pytest.raises(DataError, match="bad row"):
        read_sequences(find_files(tmp_path), strict=True)
    with pytest.raises(DataError, match="not a UniSRec data set"):
        find_files(SLICE.parent)


def test_last_item_split_holds_out_each_users_last_event() -> None:
    events = load_events(SLICE, "unisrec").events
    learnt, held = split_last_item(events)
    expected = _file_sequences()
    assert {ev.user_id: ev.item_id for ev in held} == {u: s[-1] for u, s in expected.items()}
    assert len(learnt) + len(held) == len(events)
    v_learnt, v_held = split_last_item(events, validation=True)
    assert {ev.user_id: ev.item_id for ev in v_held} == {u: s[-2] for u, s in expected.items()}
    assert len(v_learnt) == len(events) - 2 * len(expected)
    # Nothing held out is learnt, and the held-out events keep stream order.
    assert not set(map(id, held)) & set(map(id, learnt))
    assert [ev.ts for ev in held] == sorted(ev.ts for ev in held)


def test_cli_scores_one_event_per_user_and_the_validation_parts(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    base = ["evaluate", "--data", str(SLICE), "--format", "unisrec", "--item-data", "none"]
    base += ["--protocol", "last-item", "--models", "popular,itemknn"]
    assert cli.main([*base, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert (result["protocol"], result["events_tested"]) == ("last-item", 60)
    assert cli.main([*base, "--validation", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["events_tested"] == 60
    base[-3] = "prequential"
    assert cli.main([*base, "--validation", "--json", str(out)]) == 0
    scored = json.loads(out.read_text())["events_tested"]
    assert scored == int(sum(map(len, _file_sequences().values())) * 0.3)


def _recbole(tmp: Path, item_ids: list[str]) -> Path:
    rows = [
        f"u{u}\ti{(u * 7 + j) % 12}\t5\t{1000 + 20 * u + j}" for u in range(10) for j in range(20)
    ]
    (tmp / "x.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "\n".join(rows) + "\n"
    )
    items = [f"{i}\tTitle {i}\tDrama" for i in item_ids]
    (tmp / "x.item").write_text(
        "item_id:token\tmovie_title:token_seq\tclass:token_seq\n" + "\n".join(items) + "\n"
    )
    return tmp / "x.inter"


def test_an_inter_file_finds_the_item_file_beside_it(tmp_path: Path) -> None:
    inter = _recbole(tmp_path, [f"i{i}" for i in range(12)])
    for path in (inter, tmp_path):
        assert [m.item_id for m in load_items(path, "recbole").items] == [
            f"i{i}" for i in range(12)
        ]
    (tmp_path / "x.item").unlink()
    with pytest.raises(DataError, match=r"x\.item"):
        load_items(inter, "recbole")


def test_an_unusable_catalogue_is_one_line_and_an_error_when_named(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    inter = _recbole(tmp_path, ["other1", "other2"])  # ids no event has
    base = ["evaluate", "--data", str(inter), "--format", "recbole", "--models", "popular"]
    assert cli.main(base) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if "item metadata" in ln]
    assert len(err) == 1 and "none of its 2 item ids" in err[0]
    assert cli.main([*base, "--item-data", str(tmp_path / "x.item")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --item-data")


@needs_encoder
def test_one_worker_replays_exactly_as_the_plain_model() -> None:
    kinds = ("saw", "drill", "glove", "tape", "vise", "lens")
    items = [ItemMeta(f"i{n}", f"{kinds[n % 6]} model {n}", kinds[n % 6]) for n in range(30)]
    events = [
        Event(f"u{u}", f"i{(u * 5 + 6 * j + u % 6) % 30}", "click", 1_000 * (u + 40 * j))
        for j in range(8)
        for u in range(40)
    ]
    events.sort(key=lambda e: e.ts)
    warm, test = events[:100], events[100:]
    plain, replica = create_model("interest"), create_model("interest")
    reports = evaluate_models(
        {"plain": plain, "one": ScaledOut([replica], sync_every_s=0.0)}, warm, test, items=items
    )
    assert plain.content is not None and replica.content is not None
    assert len(replica.content.item_ids) == len(plain.content.item_ids) == 30
    assert reports["one"].hits == reports["plain"].hits
    assert reports["one"].rr == reports["plain"].rr


@needs_encoder
def test_an_item_is_never_listed_before_the_replay_reaches_its_first_event() -> None:
    kinds = ("saw", "drill", "glove", "tape", "vise", "lens")
    items = [ItemMeta(f"i{n}", f"{kinds[n % 6]} model {n}", kinds[n % 6]) for n in range(30)]
    # Near twins of the items everyone uses, first seen only after the replayed part.
    items += [
        ItemMeta(f"new{n}", f"{kinds[n % 6]} model {n} mark two", kinds[n % 6]) for n in range(6)
    ]
    events = [
        Event(f"u{u}", f"i{(u * 5 + 6 * j + u % 6) % 30}", "click", 1_000 * (u + 40 * j))
        for j in range(8)
        for u in range(40)
    ]
    events.sort(key=lambda e: e.ts)
    later = [Event("u0", f"new{n}", "click", events[-1].ts + 1_000 * (n + 1)) for n in range(6)]
    times = first_event_times([*events, *later])
    twins = {m.item_id for m in items[30:]}
    listed = {}
    for mode, at in (("start", None), ("first-event", times)):
        model = create_model("interest")
        report = evaluate_models(
            {mode: model}, events[:100], events[100:], items=items, item_times=at
        )[mode]
        listed[mode] = report.recommended & twins
        assert model.content is not None
        known = twins & set(model.content.item_ids)
        assert known == (twins if at is None else set())
    assert listed["start"], "the twins are known from the start and listed"
    assert not listed["first-event"], "an item is not listed before it exists"
