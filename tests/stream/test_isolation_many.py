"""One model call per micro-batch across partitions, each user's state in its own partition."""

from __future__ import annotations

from collections.abc import Sequence

from core.types import Event, UserState
from engine.batch import PartitionBatch, Source
from engine.isolation import ModelGuard
from model.capabilities import capabilities
from state.store import MemoryStore
from tests.stream.helpers import TinyPopularity

TS = 1_767_225_600_000


class _Counting(TinyPopularity):
    """Records the events of every learn_many call; raises on item ``boom``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[str]] = []

    def learn_many(self, events: Sequence[Event], before: Sequence[UserState]) -> None:
        if any(ev.item_id == "boom" for ev in events):
            raise RuntimeError("cannot learn this")
        self.calls.append([ev.item_id for ev in events])
        super().learn_many(events, before)


def _batch(partition: int, pairs: list[tuple[str, str]], start: int = 0) -> PartitionBatch:
    batch = PartitionBatch("ev", partition, start, start + len(pairs) - 1, messages=len(pairs))
    for i, (user, item) in enumerate(pairs, start):
        batch.events.append(Event(user, item, "click", TS + i))
        batch.sources.append(Source("ev", partition, i, user.encode(), b"{}", TS + i))
    return batch


def _parts(store: MemoryStore) -> list:
    return [store.open_partition("ev", 0), store.open_partition("ev", 1)]


def test_partitions_of_a_micro_batch_are_one_model_call_with_states_kept_apart():
    store = MemoryStore()
    p0, p1 = _parts(store)
    model = _Counting()
    guard = ModelGuard(10, lambda kind, text, exc: None)
    b0 = _batch(0, [("a", "i1"), ("b", "i2"), ("a", "i3")])
    b1 = _batch(1, [("c", "i2"), ("d", "i4")])
    out0, out1 = guard.step_many([(p0, b0), (p1, b1)], capabilities(model))
    assert model.calls == [["i1", "i2", "i3", "i2", "i4"]]  # one step, partition order
    assert sorted(r.user_id for r in out0.recommendations) == ["a", "b"]
    assert sorted(r.user_id for r in out1.recommendations) == ["c", "d"]
    assert out0.applied == b0.sources and out1.applied == b1.sources
    assert (out0.scored, out1.scored) == (3, 2) and out0.learnt and out1.learnt
    out0.txn.commit()
    out1.txn.commit()
    assert set(p0.begin().get_many(["a", "b", "c", "d"])) == {"a", "b"}
    assert set(p1.begin().get_many(["a", "b", "c", "d"])) == {"c", "d"}
    assert p0.begin().get_many(["a"])["a"].recent_items == ["i1", "i3"]
    # The held list scores the next batch: i2 led every list published above.
    (out0,) = guard.step_many([(p0, _batch(0, [("a", "i2")], start=3))], capabilities(model))
    assert (out0.scored, out0.hits) == (1, 1)


def test_a_failing_model_call_is_retried_per_partition_event_by_event():
    store = MemoryStore()
    p0, p1 = _parts(store)
    model = _Counting()
    warned: list[str] = []
    guard = ModelGuard(10, lambda kind, text, exc: warned.append(text))
    b0 = _batch(0, [("a", "i1"), ("b", "i2")])
    b1 = _batch(1, [("c", "boom"), ("d", "i4")])
    out0, out1 = guard.step_many([(p0, b0), (p1, b1)], capabilities(model))
    assert len(warned) == 1 and "ev[0], ev[1]" in warned[0]
    assert model.calls == [["i1"], ["i2"], ["i4"]]  # nothing learnt twice, boom never
    assert out0.applied == b0.sources and not out0.failed
    assert out1.applied == [b1.sources[1]]
    assert [(src, rej.reason) for src, rej in out1.failed] == [(b1.sources[0], "processing-error")]
    assert sorted(r.user_id for r in out1.recommendations) == ["d"]


def test_a_user_on_two_partitions_is_stepped_per_partition():
    store = MemoryStore()
    p0, p1 = _parts(store)
    model = _Counting()
    guard = ModelGuard(10, lambda kind, text, exc: None)
    out0, out1 = guard.step_many(
        [(p0, _batch(0, [("a", "i1")])), (p1, _batch(1, [("a", "i2"), ("b", "i3")]))],
        capabilities(model),
    )
    assert model.calls == [["i1"], ["i2", "i3"]]
    assert [r.user_id for r in out0.recommendations] == ["a"]
    assert sorted(r.user_id for r in out1.recommendations) == ["a", "b"]


class _LearnsLater(TinyPopularity):
    """Counts at once, takes its 'step' later; the step fails on item ``late-boom``."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[list[str]] = []

    def learn_later(self, events: Sequence[Event], before: Sequence[UserState]):  # noqa: ANN201
        super().learn_many(events, before)
        items = [ev.item_id for ev in events]

        def finish() -> None:
            if "late-boom" in items:
                raise RuntimeError("cannot step")
            self.steps.append(items)

        return finish


def test_the_step_of_a_model_that_learns_later_waits_for_finish_learning():
    store = MemoryStore()
    p0, p1 = _parts(store)
    model = _LearnsLater()
    warned: list[str] = []
    guard = ModelGuard(10, lambda kind, text, exc: warned.append(text))
    out0, out1 = guard.step_many(
        [(p0, _batch(0, [("a", "i1")])), (p1, _batch(1, [("c", "i2")]))], capabilities(model)
    )
    assert out0.learnt and out1.learnt and out0.recommendations and out1.recommendations
    assert model.steps == [] and guard.learning_pending
    assert guard.finish_learning() == 0
    assert model.steps == [["i1", "i2"]] and not guard.learning_pending
    # A caller that did not finish: the next step takes the pending step first.
    guard.step_many([(p0, _batch(0, [("a", "i3")], start=1))], capabilities(model))
    guard.step_many([(p0, _batch(0, [("a", "i4")], start=2))], capabilities(model))
    assert model.steps == [["i1", "i2"], ["i3"]]
    guard.drop_learning()  # the batch will not commit: it is read (and learnt) again
    assert not guard.learning_pending
    # A failing step after the lists went out: a warning, the model goes on.
    (out,) = guard.step_many([(p0, _batch(0, [("b", "late-boom")], start=3))], capabilities(model))
    assert out.applied and out.recommendations and not out.failed
    assert guard.finish_learning() == 1
    assert len(warned) == 1 and "committed batch" in warned[0] and "RuntimeError" in warned[0]
    assert model.steps == [["i1", "i2"], ["i3"]]
