"""The offline twin of N workers: one model per worker, the live sync code, event time.

:class:`ScaledOut` looks like one model to the batch driver (so the
evaluator's replays drive it like any model) but holds one replica per worker and
routes each user to the replica of the worker that would own them live: the
user's murmur2 partition among ``4 * N`` partitions, modulo N (how a consumer
group spreads partitions over N workers). Each replica ranks and learns only
its users' events. Replicas that can share (:class:`model.sync.Shared`) do so
exactly as the worker does (:mod:`stream.runtime.modelsync`), through the same wire
bytes:

* after each micro-batch every replica's count delta goes to every replica,
  its own included, ``count_lag`` batches later (0: before the next batch,
  which is what a live worker sees when its updates arrive within a batch);
* every ``sync_every_s`` seconds of *event* time each replica's parameter
  delta goes to every other replica.

Replicas that cannot share simply learn alone: the cost of scaling out
without sharing.

>>> from engine.replay.harness import Replica
>>> from model.factory import create_model
>>> from model.data.synthetic import SyntheticStream
>>> events = list(SyntheticStream(seed=1, n_events=300))
>>> twin = ScaledOut([create_model("interest") for _ in range(2)], sync_every_s=0.0)
>>> replica = Replica(twin)
>>> for i in range(0, 300, 50):
...     _ = replica.step(events[i : i + 50])
>>> twin.memory_events()  # each replica counted every event, its own and the other's
[300, 300]
>>> a, b = twin.replicas
>>> sorted(a.vocab.index) == sorted(b.vocab.index)
True
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from core.partition import partition_for
from core.types import Event, UserState
from model.capabilities import Capabilities, RankingModel, capabilities
from model.items import ItemMeta
from model.sync import COUNTS, PARAMS, Shared, SyncBook, SyncClock, decode_delta, encode_delta

__all__ = ["ScaledOut", "PARTITIONS_PER_WORKER", "PARAM_PART_BYTES"]

PARTITIONS_PER_WORKER = 4
# Parameter deltas travel in parts of at most this many bytes (as on the topic).
PARAM_PART_BYTES = 512 * 1024


class ScaledOut:
    """N replicas of a model behind the interface of one (see the module docstring).

    It has every capability the step uses; each call goes to the replicas
    that have it (item metadata goes to every replica that takes it).
    """

    def __init__(
        self,
        replicas: Sequence[RankingModel],
        sync_every_s: float = 2.0,
        count_lag: int = 0,
        share: bool = True,
    ) -> None:
        if not replicas:
            raise ValueError("at least one replica")
        self.replicas = list(replicas)
        self.caps: list[Capabilities] = [capabilities(m) for m in self.replicas]
        self.n = len(self.replicas)
        self.name = self.replicas[0].name
        self.version = self.replicas[0].version
        shared = [c.shared for c in self.caps]
        self.shared: list[Shared] = [m for m in shared if m is not None]
        self.sharing = share and len(self.shared) == self.n
        self.count_lag = count_lag
        self.clock = SyncClock(sync_every_s)
        self.books = [SyncBook(f"w{i}") for i in range(self.n)]
        self.bytes_sent = {COUNTS: 0, PARAMS: 0}  # wire bytes, for the report
        self.merges = 0
        self._queue: deque[list[bytes]] = deque()
        self._owner: dict[str, int] = {}
        if self.sharing:
            for m in self.shared:
                m.start_sharing()

    def worker_of(self, user_id: str) -> int:
        """The worker a user's events go to (cached)."""
        w = self._owner.get(user_id)
        if w is None:
            parts = PARTITIONS_PER_WORKER * self.n
            w = self._owner[user_id] = partition_for(user_id.encode(), parts) % self.n
        return w

    def _groups(self, user_ids: Sequence[str]) -> list[list[int]]:
        groups: list[list[int]] = [[] for _ in range(self.n)]
        for i, u in enumerate(user_ids):
            groups[self.worker_of(u)].append(i)
        return groups

    # the model interface the step uses ---------------------------------------------
    def rank_many(
        self, user_ids: Sequence[str], states: Sequence[UserState], k: int
    ) -> list[list[tuple[str, float]]]:
        out: list[Any] = [None] * len(user_ids)
        for w, idx in enumerate(self._groups(user_ids)):
            if idx:
                users, sts = [user_ids[i] for i in idx], [states[i] for i in idx]
                for i, value in zip(idx, self.caps[w].rank_many(users, sts, k), strict=True):
                    out[i] = value
        return out

    def rank(self, user_id: str, state: UserState, k: int) -> list[tuple[str, float]]:
        return self.rank_many([user_id], [state], k)[0]

    def update_state(self, state: UserState, ev: Event) -> None:
        owner = self.caps[self.worker_of(ev.user_id)].keeps_user_parts
        if owner is not None:
            owner.update_state(state, ev)

    def explain_many(
        self,
        user_ids: Sequence[str],
        states: Sequence[UserState],
        lists: Sequence[list[tuple[str, float]]],
    ) -> list[tuple[str, ...]]:
        out: list[tuple[str, ...]] = [()] * len(user_ids)
        for w, idx in enumerate(self._groups(user_ids)):
            if idx:
                got = self.caps[w].explain_many(
                    [user_ids[i] for i in idx], [states[i] for i in idx], [lists[i] for i in idx]
                )
                for i, value in zip(idx, got, strict=True):
                    out[i] = value
        return out

    def add_item_metadata(self, items: Sequence[ItemMeta]) -> None:
        """Every replica that takes item metadata gets it (as every worker reads the topic)."""
        for caps in self.caps:
            if caps.takes_items is not None:
                caps.takes_items.add_item_metadata(items)

    def await_content(self) -> None:
        for caps in self.caps:
            if caps.takes_items is not None:
                caps.takes_items.await_content()

    def state_before(self, state: UserState) -> UserState:
        """What the replicas (copies of one model) read of a state, as the first says."""
        reads = self.caps[0].reads_part_of_state
        return state.copy() if reads is None else reads.state_before(state)

    def learn_many(self, events: Sequence[Event], before: Sequence[UserState]) -> None:
        """Each replica learns its users' events; then the deltas go round (module docstring)."""
        self.learn_later(events, before)()

    def learn_later(
        self, events: Sequence[Event], before: Sequence[UserState]
    ) -> Callable[[], None]:
        """Each replica starts learning its users' events as a worker does (its own
        ``learn_later`` when it has one); the returned call finishes every replica's
        step, then the deltas go round. A replica of one worker thus learns exactly
        as the plain model does."""
        finish: list[Callable[[], None]] = []
        for w, idx in enumerate(self._groups([ev.user_id for ev in events])):
            if not idx:
                continue
            evs, sts = [events[i] for i in idx], [before[i] for i in idx]
            later, learns = self.caps[w].learns_later, self.caps[w].learns
            if later is not None:
                finish.append(later.learn_later(evs, sts))
            elif learns is not None:
                learns.learn_many(evs, sts)

        def done() -> None:
            for call in finish:
                call()
            self._share(events)

        return done

    def _share(self, events: Sequence[Event]) -> None:
        """After a batch: the count deltas go round, and on the cadence the parameters."""
        if not self.sharing or not events:
            return
        batch = []
        for w, m in enumerate(self.shared):
            delta = m.count_delta()
            if delta is not None:
                batch.append(encode_delta(COUNTS, self.version, delta, {"worker": f"w{w}"}))
                self.bytes_sent[COUNTS] += len(batch[-1])
        self._queue.append(batch)
        while len(self._queue) > self.count_lag:
            for data in self._queue.popleft():
                state = decode_delta(data).state
                for m, book in zip(self.shared, self.books, strict=True):
                    book.events += m.apply_count_delta(state)
        now_s = max(ev.ts for ev in events) / 1000.0
        if self.clock.due(now_s):
            self._share_params()
            self.clock.done(now_s)

    def _share_params(self) -> None:
        """Every replica sends what it learnt since it last shared; the others add it."""
        sent: list[tuple[int, list[bytes]]] = []
        for w, (m, book) in enumerate(zip(self.shared, self.books, strict=True)):
            parts = m.param_delta(PARAM_PART_BYTES)
            if not parts:
                continue
            seq = book.next_seq()
            header = {"worker": book.worker, "seq": seq}
            wire = [encode_delta(PARAMS, self.version, p, header) for p in parts]
            m.param_delta_shared()
            book.sent(seq)
            sent.append((w, wire))
            self.bytes_sent[PARAMS] += sum(len(b) for b in wire)
        for w, wire in sent:
            for data in wire:
                delta = decode_delta(data)
                for other, (m, book) in enumerate(zip(self.shared, self.books, strict=True)):
                    if other != w and book.decide(delta.header) == "add":
                        m.apply_param_delta(delta.state)
            for other, book in enumerate(self.books):
                if other != w:
                    book.merged({"worker": f"w{w}", "seq": self.books[w].own_seq})
        self.merges += 1

    def freeze(self) -> None:
        for caps in self.caps:
            if caps.freezes is not None:
                caps.freezes.freeze()

    def memory_events(self) -> list[int]:
        """Events each replica has counted from count deltas (equal once the queue is empty)."""
        return [b.events for b in self.books]
