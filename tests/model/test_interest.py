"""The interest model: learns a planted pattern, cold start, new items, determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from core.types import Event, UserState
from engine.replay.pull import evaluate_models
from model.data.synthetic import SyntheticStream
from model.factory import create_model
from model.interest.memories import stage
from model.interest.model import EXHAUSTIVE_ROWS, InterestModel
from model.step import process_batch
from state.views import MemoryStates

# Every row a candidate (small catalogues), or the bounded candidate lists of large ones.
PATHS = pytest.mark.parametrize(
    "exhaustive_rows", [EXHAUSTIVE_ROWS, 0], ids=["exhaustive", "candidates"]
)


def test_learns_planted_interests_clearly_above_popular() -> None:
    events = list(
        SyntheticStream(seed=11, n_users=150, n_categories=8, items_per_category=25, n_events=6000)
    )
    models = {"interest": create_model("interest", seed=0), "popular": create_model("popular")}
    reports = evaluate_models(models, events[:1000], events[1000:], batch_size=32)
    recall = {n: sum(r.hits) / len(r.hits) for n, r in reports.items()}
    assert recall["interest"] > 1.5 * recall["popular"]


def test_same_seed_same_lists() -> None:
    events = list(SyntheticStream(seed=4, n_events=1500))

    def run() -> list[list[str]]:
        torch.manual_seed(123)  # must not matter: the model owns its generator
        model, views = create_model("interest", seed=9), MemoryStates()
        out = []
        for i in range(0, len(events), 64):
            out += process_batch(events[i : i + 64], views, model, keep_lists=True).lists
        return out

    assert run() == run()


@PATHS
def test_cold_start_user_gets_trending_items(exhaustive_rows: int) -> None:
    model = InterestModel(seed=0, exhaustive_rows=exhaustive_rows)
    views = MemoryStates()
    hot = [Event(f"u{i}", "hot", "click", i, "c1") for i in range(40)]
    cold = [Event(f"v{i}", f"item{i}", "click", 100 + i, "c2") for i in range(20)]
    process_batch(cold + hot, views, model)
    top = model.rank("stranger", UserState(), 5)
    assert top[0][0] == "hot"


@PATHS
def test_new_item_rides_on_its_category(exhaustive_rows: int) -> None:
    model = InterestModel(seed=0, exhaustive_rows=exhaustive_rows)
    views = MemoryStates()
    t = 0
    batch = []
    for u in range(30):  # every user lives in category "shoes"
        for j in range(5):
            t += 1
            batch.append(Event(f"u{u}", f"s{j}", "click", t, "shoes"))
            batch.append(Event(f"u{u}", f"b{j}", "click", t, "books"))
    process_batch(batch, views, model, score=False)
    # A brand-new shoe and a brand-new book appear once each.
    process_batch(
        [
            Event("x", "s-new", "click", t + 1, "shoes"),
            Event("y", "b-new", "click", t + 2, "books"),
        ],
        views,
        model,
        score=False,
    )
    fan = UserState()
    for j in range(5):
        fan.recent_items.append(f"s{j}")
        fan.recent_types.append(0)
        fan.recent_ts.append(t)
        fan.counts[0] += 1
    scores = dict(model.rank("fan", fan, 100))
    assert scores["s-new"] > scores["b-new"]


def test_vocabulary_grows_past_initial_capacity_while_training() -> None:
    model = InterestModel(seed=0, dim=8)
    views = MemoryStates()
    events = [Event(f"u{i % 37}", f"i{i}", "click", i, f"c{i % 300}") for i in range(1200)]
    for i in range(0, len(events), 100):
        process_batch(events[i : i + 100], views, model)
    assert len(model.vocab) == 1200 and model.emb_out.shape[0] >= 1200
    assert model.vocab.n_categories == 301
    assert torch.isfinite(model.emb_out).all()


def test_freeze_stops_learning_but_states_still_move() -> None:
    events = list(SyntheticStream(seed=8, n_events=1200))
    model, views = InterestModel(seed=0), MemoryStates()
    process_batch(events[:800], views, model)
    model.freeze()
    before = [p.detach().clone() for p in model.params.tensors()]
    n_items = len(model.vocab)
    user = events[900].user_id
    n_user = views.states[user].n_events if user in views.states else 0
    for i in range(800, 1200, 100):
        process_batch(events[i : i + 100], views, model)
    assert len(model.vocab) == n_items
    assert all(torch.equal(a, b) for a, b in zip(before, model.params.tensors(), strict=True))
    assert views.states[user].n_events > n_user


def test_candidate_path_for_large_catalogues_still_learns() -> None:
    # exhaustive_rows below the catalogue size forces candidates + sampled negatives.
    events = list(
        SyntheticStream(seed=12, n_users=150, n_categories=8, items_per_category=25, n_events=5000)
    )
    models = {
        "sampled": InterestModel(seed=0, exhaustive_rows=50, n_negatives=64),
        "popular": create_model("popular"),
    }
    reports = evaluate_models(models, events[:1000], events[1000:], batch_size=32)
    recall = {n: sum(r.hits) / len(r.hits) for n, r in reports.items()}
    assert recall["sampled"] > 1.5 * recall["popular"]
    assert torch.isfinite(models["sampled"].alpha).all()


@PATHS
def test_explanation_names_the_recent_items_behind_the_list(exhaustive_rows: int) -> None:
    model, views = InterestModel(seed=0, exhaustive_rows=exhaustive_rows), MemoryStates()
    t = 0
    batch = []
    for u in range(40):  # "a" is always followed by "b" and "c"; "z" is a loner
        for item in ("a", "b", "c"):
            t += 1
            batch.append(Event(f"u{u}", item, "click", t, "x"))
    batch.append(Event("loner", "z", "click", t + 1, "y"))
    process_batch(batch, views, model, score=False)
    res = process_batch(
        [Event("me", "a", "click", t + 2, "x"), Event("me", "z", "click", t + 3, "y")], views, model
    )
    rec = res.recommendations[0]
    assert {"b", "c"} <= {i for i, _ in rec.items[:3]}
    assert rec.explanation[0] == "a"


@PATHS
def test_learning_later_learns_the_same_and_lists_the_batch_before_the_step(
    exhaustive_rows: int,
) -> None:
    # The worker ranks a batch's lists before the model's step on it and takes the
    # step while the batch commits: the model must end up exactly as if it had
    # learnt at once, and the lists must be the ones of the model before the step.
    events = list(SyntheticStream(seed=5, n_events=1200))
    now = InterestModel(seed=3, exhaustive_rows=exhaustive_rows)
    later = InterestModel(seed=3, exhaustive_rows=exhaustive_rows)
    views_now, views_later = MemoryStates(), MemoryStates()
    for i in range(0, len(events), 100):
        batch = events[i : i + 100]
        process_batch(batch, views_now, now)
        res = process_batch(batch, views_later, later, learn="later")
        assert res.finish_learning is not None
        # Ranked before the step: the same lists as ranking without learning at all.
        users = [rec.user_id for rec in res.recommendations]
        states = [views_later.states[u] for u in users]
        assert [list(rec.items) for rec in res.recommendations] == later.rank_many(
            users, states, 10
        )
        res.finish_learning()
    a, b = now.state_dict(), later.state_dict()
    assert a.arrays.keys() == b.arrays.keys() and a.meta == b.meta
    for name, value in a.arrays.items():
        # Equal up to float rounding (the same sums in other buffers; Adam scales
        # the last bits of tiny entries): a missed or doubled step moves rows by ~1e-2.
        np.testing.assert_allclose(value, b.arrays[name], rtol=1e-3, atol=1e-6, err_msg=name)


def test_a_long_batch_learns_in_steps_of_step_events() -> None:
    # A worker catching up takes batches of several thousand events: the model must
    # still learn in steps of the usual size (one step per batch learnt much less).
    events = list(SyntheticStream(seed=6, n_events=1400))
    model = InterestModel(seed=0, step_events=100)
    views = MemoryStates()
    process_batch(events[:400], views, model)  # most items known from here on
    sizes: list[int] = []
    step = model.training.step

    def counted(ctx, targets, types, batch_no):  # noqa: ANN001
        sizes.append(len(targets))
        step(ctx, targets, types, batch_no)

    model.training.step = counted  # type: ignore[method-assign]
    process_batch(events[400:], views, model)
    known = sum(sizes)  # events on items the model had rows for before the batch
    assert known > 400 and len(sizes) == -(-known // 100)
    assert all(n == 100 for n in sizes[:-1]) and 0 < sizes[-1] <= 100


def test_warm_up_leaves_the_model_and_what_it_lists_as_they_were() -> None:
    events = list(SyntheticStream(seed=7, n_events=900))
    warmed, plain = InterestModel(seed=2), InterestModel(seed=2)
    views_w, views_p = MemoryStates(), MemoryStates()
    process_batch(events[:300], views_w, warmed)
    process_batch(events[:300], views_p, plain)
    before = {name: value.copy() for name, value in warmed.state_dict().arrays.items()}
    warmed.warm_up()
    after = warmed.state_dict()
    assert before.keys() == after.arrays.keys()
    for name, value in before.items():
        np.testing.assert_array_equal(value, after.arrays[name], err_msg=name)
    for i in range(300, len(events), 150):
        a = process_batch(events[i : i + 150], views_w, warmed, keep_lists=True)
        b = process_batch(events[i : i + 150], views_p, plain, keep_lists=True)
        assert a.lists == b.lists
        assert [r.items for r in a.recommendations] == [r.items for r in b.recommendations]


def _context_one_by_one(model: InterestModel, states: list[UserState]) -> dict[str, np.ndarray]:
    """The context packed state by state, the plain way: the reference for the batched packing."""
    L, d, index = model.window, model.dim, model.vocab.index
    rows = np.full((len(states), L), -1, dtype=np.int64)
    types = np.zeros((len(states), L), dtype=np.int64)
    lt = np.zeros((len(states), d), dtype=np.float32)
    excluded = []
    for i, st in enumerate(states):
        recent = st.recent_items[-L:]
        if recent:
            rows[i, L - len(recent) :] = [index.get(it, -1) for it in recent]
            types[i, L - len(recent) :] = st.recent_types[-L:]
        if st.long_term.shape == (d,):
            lt[i] = st.long_term
        ids = st.seen if model.exclude_seen else st.purchased
        excluded.append([index[it] for it in ids if it in index])
    n = [sum(st.counts) for st in states]
    width = max(1, *map(len, excluded))
    return {
        "rows": rows,
        "types": types,
        "lt": lt,
        "cold": np.array([1.0 / (1.0 + k / 3.0) for k in n], dtype=np.float32),
        "stage": np.array([stage(k) for k in n], dtype=np.int64),
        "exclude": np.array(
            [x + [-1] * (width - len(x)) for x in excluded], dtype=np.int64
        ).reshape(len(states), width),
    }


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_the_batched_context_packs_what_packing_each_state_does(exclude_seen: bool) -> None:
    model = InterestModel(seed=0, exclude_seen=exclude_seen)
    events = list(itertools.islice(iter(SyntheticStream(seed=2, n_users=40)), 3000))
    view = MemoryStates()
    for i in range(0, len(events), 200):
        process_batch(events[i : i + 200], view, model)
    states = [view.states[u] for u in sorted(view.states)]
    states += [UserState(), UserState(long_term=np.ones(3, dtype=np.float32))]  # empty, odd dim
    odd = states[0].copy()  # ids the model never saw: padding in place, dropped from exclusions
    odd.recent_items[-1] = odd.seen[0] = "never-seen"
    odd.purchased = ["never-seen", *odd.purchased]
    states.append(odd)
    ctx, want = model._context(states), _context_one_by_one(model, states)
    for name, expected in want.items():
        np.testing.assert_array_equal(getattr(ctx, name), expected, err_msg=name)
    assert (ctx.exclude >= 0).any() and (ctx.rows == -1).any()
