"""Refresh passes of a worker: re-rank idle users whose list went stale, within a time budget.

The policy (who is stale, in which order, how many per pass) is
:mod:`model.refresh`, shared with the evaluator's subscriber view. This module
runs it inside the worker's loop: in the transaction of the event batch about
to commit when one is, on its own between micro-batches when none comes:

* :meth:`Refresher.after_batch` follows each committed event batch: the users
  whose lists it published join their partition's recency list with the model
  clock (events this worker has learnt from), and the age of the list each
  event's user held is observed (``interest_list_age_seconds``: from the
  moment the list was delivered to the event's Kafka timestamp).
* :meth:`Refresher.due` says when the next pass may run: at most one pass per
  ``refresh_interval_ms``, and after a pass that took ``d`` seconds not before
  ``d * (100 - p) / p`` more seconds, so passes take at most ``p`` % of the
  worker's time (``refresh_budget_percent``; 0 turns refresh off).
* :meth:`Refresher.stage` re-ranks the stalest tracked users (at most
  ``refresh_max_users`` a pass, over every partition not being restored; a
  pass goes out in parts of at most :data:`CHUNK_USERS` users, each paced by
  the budget, so event batches wait behind one part, not a whole pass) through each
  partition's state transaction (never a user of the event batch the part
  rides in: that user's state is in the batch's): a list that changed is put into the user's
  ``last_list`` and published with ``trigger="refresh"``; an identical one is
  not published. The newcomer list (key :data:`~engine.events.NEWCOMERS_ID`)
  is refreshed by the worker that owns the events partition of its key. The
  runtime commits the checkpoint (the batch's, or a part's own), so lists,
  changelog records and states go together (one transaction with
  exactly-once, which also sends the current offsets of the partitions the
  batch did not read so that a worker that lost them is fenced), and a part
  that is aborted leaves nothing behind.

Recency lists are kept in memory: after a restart or a rebalance they fill up
again as users act. With pseudonymised user ids (:mod:`engine.privacy`) a
refreshed list goes out under the key the producer used, like the user's
event lists; that key is known only from the user's own events, so only users
seen since the worker started are refreshed, and the keys stay in memory. An
erased user leaves the recency list with the batch that erased them, and a
user without a state is never re-ranked: a refresh never brings back a list
that was erased.
"""

from __future__ import annotations

import copy
import heapq
import logging
import time
from collections.abc import Callable, Collection, Mapping

from core.errors import InterestStreamError
from core.types import Recommendation
from engine.batch import RoutedStates, StepOutcome
from engine.checkpoint import Checkpoint
from engine.events import NEWCOMERS_ID
from engine.metrics import WorkerMetrics
from engine.privacy import exception_text
from model.capabilities import Capabilities
from model.refresh import NewcomerList, RecentUsers, RefreshPolicy, refresh_lists
from state.store import StatePartition, StateTransaction

__all__ = ["Refresher", "CHUNK_USERS"]

# Users re-ranked per part. A pass of 256 users took ~45 ms on the 2-core box (ranking
# plus its own commit), during which the events behind it waited; a part of 32 riding
# in an event batch's transaction adds ~6 ms to that batch.
CHUNK_USERS = 32

log = logging.getLogger("interest_stream.worker")

_Key = tuple[str, int]


class Refresher:
    """Refresh passes of one worker (see the module docstring).

    ``warn(kind, text, exc)`` logs a model failure during a pass (throttled by the caller);
    ``timer`` is the clock of the time budget (seconds); ``log_ids``: the
    warning may carry the exception's message (see :mod:`engine.privacy`).
    """

    def __init__(
        self,
        policy: RefreshPolicy,
        budget_percent: int,
        k: int,
        metrics: WorkerMetrics,
        warn: Callable[[str, str, BaseException | None], None] | None = None,
        timer: Callable[[], float] = time.monotonic,
        log_ids: bool = False,
    ) -> None:
        self.policy = policy
        self.enabled = policy.enabled and budget_percent > 0
        self.share = budget_percent / 100.0
        self.k = k
        self.metrics = metrics
        self.log_ids = log_ids
        self.clock = 0  # events the model learnt from: the model clock of the policy
        # With a model shared across workers (stream.runtime.modelsync), the events it counted,
        # every worker's: this worker's own batches alone would make the group's lists
        # stale N times later with N workers. None: this worker's own events.
        self.model_clock: Callable[[], int] | None = None
        self.recent: dict[_Key, RecentUsers] = {}
        self.newcomers = NewcomerList()
        self._warn = warn
        self._next_at = 0.0
        # (partition, outcome as published, lists by stored user id, users left as they were)
        self._staged: list[tuple[_Key, StepOutcome, list[Recommendation], list[str]]] = []
        self._newcomers_staged: tuple[NewcomerList, Recommendation | None] | None = None
        self._started = 0.0
        self._stage_s: float | None = None  # seconds the last part took to stage
        self._riding = False  # the last part went into an event batch's checkpoint
        self._pass_at = 0.0  # when the current pass started
        self._pass_left = 0  # users the current pass may still re-rank
        self._now = timer

    # --- following event batches --------------------------------------------------------

    def after_batch(self, checkpoint: Checkpoint) -> None:
        """A committed event batch: observe list ages, then track the lists it published."""
        if not self.enabled:
            return
        at = int(checkpoint.delivered_ms)
        batch = [(part, out) for part, out in checkpoint.outcomes if not out.refresh]
        for part, out in batch:
            recent = self.recent.get((part.topic, part.partition))
            if self.model_clock is None:
                self.clock += len(out.applied)
            if recent is None:
                continue
            for user, _ in out.erased:  # never refreshed again, unless they come back
                recent.forget(user)
            stored = _stored_ids(out)
            ages = []
            for src in out.applied:
                actor = _stored_of(src.key, stored)
                held = recent.held_at(actor) if actor is not None else None
                if held is not None and src.timestamp_ms:
                    ages.append(max(0, src.timestamp_ms - held) / 1000.0)
            self.metrics.list_age.observe_many(ages)
        self._sync_clock()
        for part, out in batch:
            recent = self._recent((part.topic, part.partition))
            stored = _stored_ids(out)
            for rec in out.recommendations:
                # The checkpoint put the producer's key in user_id (pseudonymised ids):
                # track the stored id, and the key its lists go out under.
                user = _stored_of(rec.user_id.encode("utf-8"), stored) or rec.user_id
                recent.published(user, self.clock, at, out.keys.get(user))

    def _sync_clock(self) -> None:
        if self.model_clock is not None:
            self.clock = max(self.clock, self.model_clock())

    def _recent(self, key: _Key) -> RecentUsers:
        recent = self.recent.get(key)
        if recent is None:
            recent = self.recent[key] = RecentUsers(self.policy.track_users)
        return recent

    # --- a pass -------------------------------------------------------------------------

    def due(self) -> bool:
        """True when a pass may run now (refresh on, interval and time budget respected)."""
        return self.enabled and self._now() >= self._next_at

    def stage(
        self,
        parts: Mapping[_Key, StatePartition],
        caps: Capabilities,
        checkpoint: Checkpoint,
        generated_at_ms: int,
        newcomers_home: _Key | None,
        exclude: Collection[str] | None = None,
        version: str | None = None,
    ) -> int:
        """Re-rank the stalest users of ``parts`` into ``checkpoint``; the lists staged.

        ``parts``: the partitions a pass may touch (open, not restoring);
        ``newcomers_home``: the partition whose owner publishes the newcomer list;
        ``exclude``: users left out (those of an event batch ``checkpoint`` holds
        already: their state is in the batch's transaction, and their lists too);
        given, the part rides in that batch's checkpoint; ``version``: what the
        lists say they were ranked with (default: the model's version).
        Returns 0 when there is nothing to publish (the checkpoint holds nothing; users
        whose list came out unchanged are accounted for already); otherwise the caller
        commits the checkpoint and calls :meth:`committed` or :meth:`aborted`.
        """
        self._started = self._now()
        self._stage_s = None
        self._sync_clock()
        self._riding = exclude is not None
        exclude = exclude or ()
        self._staged, self._newcomers_staged = [], None
        for key in [key for key in self.recent if key not in parts]:
            del self.recent[key]  # revoked, or being restored: filled again as users act
        p = self.policy
        if self._pass_left <= 0:
            self._pass_at, self._pass_left = self._started, p.max_users
        take = min(self._pass_left, CHUNK_USERS)
        stale = [
            (recent.ranked_at(user), key, user)
            for key, recent in self.recent.items()
            for user in recent.stale(self.clock, p.stale_events, take + len(exclude))
            if user not in exclude
        ]
        chosen = heapq.nsmallest(take, stale)
        # Fewer stale users than this part may take: the pass ends with it.
        self._pass_left = self._pass_left - len(chosen) if len(chosen) == take else 0
        picked: dict[_Key, list[str]] = {}
        for _, key, user in chosen:
            picked.setdefault(key, []).append(user)
        home = parts.get(newcomers_home) if newcomers_home is not None else None
        newcomers = home is not None and self.newcomers.due(p, self.clock)
        if not picked and not newcomers:
            self._next_at = self._pass_at + p.interval_ms / 1000.0
            return 0
        # The model calls first: a failure leaves nothing in the checkpoint, which may
        # hold an event batch's outputs too.
        try:
            version = version or caps.model.version
            reranked = self._rerank(picked, parts, caps, version)
            newcomer: tuple[NewcomerList, Recommendation | None] | None = None
            if newcomers and home is not None and home.last_offset() is not None:
                fresh = copy.deepcopy(self.newcomers)
                rec = None
                if fresh.rerank(caps.model, self.k, self.clock, generated_at_ms, caps):
                    rec = Recommendation(NEWCOMERS_ID, fresh.items, version, 0, trigger="refresh")
                newcomer = (fresh, rec)
        except InterestStreamError:
            raise  # the worker's own trouble (state store, ...)
        except Exception as exc:  # a model failure: no refresh this time
            if self._warn is not None:
                # A model's message may name the user it failed on: only with log_ids.
                text = exception_text(exc, self.log_ids)
                self._warn(
                    f"refresh {type(exc).__name__}",
                    f"refresh pass failed ({text}); trying again later",
                    exc if self.log_ids else None,
                )
            self._next_at = self._now() + max(1.0, p.interval_ms / 1000.0)
            self._pass_left = 0
            return 0
        staged = 0
        for key, (txn, recs, same) in reranked.items():
            part = parts[key]
            # Published under the key the user's own lists went out under.
            recent = self.recent[key]
            keys = {r.user_id: k for r in recs if (k := recent.key_of(r.user_id)) is not None}
            out = StepOutcome(txn, recs, keys=keys, refresh=True)
            if recs:
                self._add(checkpoint, part, out, generated_at_ms)
            self._staged.append((key, out, recs, same))
            staged += len(recs)
        if newcomer is not None and home is not None:
            if newcomer[1] is not None:
                out = StepOutcome(home.begin(), [newcomer[1]], refresh=True)
                self._add(checkpoint, home, out, generated_at_ms)
                staged += 1
            self._newcomers_staged = newcomer
        self._stage_s = self._now() - self._started
        if not staged:  # every list re-ranked came out as the user holds it: nothing to send
            self.committed(time.time() * 1000.0)
        return staged

    def _rerank(
        self,
        picked: dict[_Key, list[str]],
        parts: Mapping[_Key, StatePartition],
        caps: Capabilities,
        version: str,
    ) -> dict[_Key, tuple[StateTransaction, list[Recommendation], list[str]]]:
        """Each partition's transaction, lists to publish and users left as they were.

        One ranking call for every partition's users (a call has a fixed cost:
        four partitions of 16 users took 11 ms, one call of 64 took 7), each
        user's state read from and written to its own partition's transaction;
        a user picked on two partitions (moved by a repartition) keeps them apart.
        """
        txns = {key: parts[key].begin() for key in picked}
        owner = {user: key for key, users in picked.items() for user in users}
        if len(owner) < sum(len(users) for users in picked.values()):
            return {
                key: (
                    txns[key],
                    *refresh_lists(
                        users, txns[key], caps.model, self.k, caps=caps, version=version
                    ),
                )
                for key, users in picked.items()
            }
        view = RoutedStates({user: txns[key] for user, key in owner.items()})
        recs, same = refresh_lists(
            list(owner), view, caps.model, self.k, caps=caps, version=version
        )
        out: dict[_Key, tuple[StateTransaction, list[Recommendation], list[str]]] = {
            key: (txn, [], []) for key, txn in txns.items()
        }
        for rec in recs:
            out[owner[rec.user_id]][1].append(rec)
        for user in same:
            out[owner[user]][2].append(user)
        return out

    @staticmethod
    def _add(
        checkpoint: Checkpoint, part: StatePartition, out: StepOutcome, generated_at_ms: int
    ) -> None:
        checkpoint.add(part, out, generated_at_ms)
        offset = part.last_offset()
        if offset is not None:
            # The offsets the partition is at already: committing them again in the
            # pass's transaction fences a worker that lost the partition (KIP-447).
            # (An event batch in the same checkpoint has moved them on: its stay.)
            checkpoint.offsets.setdefault((part.topic, part.partition), offset + 1)

    def committed(self, delivered_ms: float) -> list[Recommendation]:
        """The staged pass was committed: account for it; returns the lists it published."""
        at = int(delivered_ms)
        out: list[Recommendation] = []
        for key, outcome, recs, same in self._staged:
            out.extend(outcome.recommendations)
            recent = self.recent.get(key)
            if recent is None:
                continue
            for rec in recs:
                recent.refreshed(rec.user_id, self.clock, at)
            for user in same:
                recent.refreshed(user, self.clock, None)
        if self._newcomers_staged is not None:
            self.newcomers, newcomer_list = self._newcomers_staged
            if newcomer_list is not None:
                out.append(newcomer_list)
        self._staged, self._newcomers_staged = [], None
        m = self.metrics
        m.lists_published.inc(len(out))
        m.lists_refreshed.inc(len(out))
        self._pace(m)
        return out

    def aborted(self) -> None:
        """The staged pass was aborted: nothing of it is visible; try again later."""
        self._staged, self._newcomers_staged = [], None
        self._pace(self.metrics)

    def _pace(self, m: WorkerMetrics) -> None:
        now = self._now()
        spent = now - self._started
        if self._riding and self._stage_s is not None:
            spent = self._stage_s  # the commit was the event batch's anyway
        m.refresh_seconds.observe(spent)
        # At most `share` of the worker's time: after `spent` seconds of refresh,
        # spent * (1 - share) / share seconds for everything else.
        rest = spent * (1.0 - self.share) / self.share if self.share < 1.0 else 0.0
        if self._pass_left > 0:  # the rest of this pass, in the budget's time
            self._next_at = now + rest
        else:
            self._next_at = max(now + rest, self._pass_at + self.policy.interval_ms / 1000.0)


def _stored_ids(out: StepOutcome) -> dict[bytes, str]:
    """Message key -> stored user id, for the users whose two differ (pseudonymised ids)."""
    return {key: user for user, key in out.keys.items()}


def _stored_of(key: bytes | None, stored: dict[bytes, str]) -> str | None:
    if key is None:
        return None
    user = stored.get(key)
    return user if user is not None else key.decode("utf-8", "replace")
