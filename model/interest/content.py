"""Item content for the interest model: text vectors, a learned projection, content neighbours.

An item's metadata (:class:`model.items.ItemMeta`) is read by the sentence
encoder of :mod:`model.interest.encoder` once per distinct text, off the hot path: the
texts go to one background thread per process that encodes them in batches,
and the model picks the vectors up between steps (:meth:`ContentPart.install`).
An event whose item's text is still being encoded never waits for it; the
item is simply scored without content until its vector is in.

What the model gets from a vector ``c_i`` (float32[384], read centred on the
catalogue's mean and unit length again):

* an item feature: ``q . (c_i @ P_out) + c_i . w`` is added to the item's
  embedding score (``P_out``: learned float32[384, dim], ``w``: float32[384],
  zero at first), so items whose texts mean similar things share what was
  learnt, and an item nobody touched yet has a useful score from its first appearance;
* a score feature: the cosine between ``c_i`` and the user's content profile
  (recency- and event-type-weighted sum of their recent items' vectors), with
  its own learned blend weight ``alpha + f * fresh(item)``;
* a nearest-text feature: the highest cosine between ``c_i`` and one of the user's
  ``NEAR_RECENT`` newest items' vectors (:meth:`ContentPart.nearest`), learned weight;
* a gate on both, learnt with the rest (:meth:`ContentPart.gate`):
  ``sigmoid(g0 + g1 * log(1 + count_i) + g2 * cold(user))``, so the text counts
  as much as it earns, per item (its own events take over as they come in) and
  per user; on MovieLens-100K it learns to fade as an item's events grow
  (docs/model/content.md);
* a candidate source: every item keeps its ``NEIGHBOURS`` most similar items
  (cosine of the vectors, updated both ways when an item arrives), and a user's
  recent items propose theirs, so a brand-new item reaches the users of similar items.

Items with metadata get a vocabulary row when their vector is installed (they
count as seen then, or at the first event after it), and expire like any item;
their vectors stay, keyed by item id, and come back with the item's next
event. Vectors are stored in float16; with 32 neighbours an item with content
costs about 1.1 KiB beside the 2-3.5 KiB of an item (see docs/model/results-history.md).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model.interest.encoder import TextEncoder, load_encoder
from model.interest.memories import EVENT_WEIGHTS, Context
from model.items import ItemMeta
from model.persist import ModelState, load_params, save_params
from model.vocab import ItemVocab

__all__ = ["ContentPart", "TEXT_DIM", "NEIGHBOURS", "CANDIDATES", "encode_texts", "text_key"]

# Events in a step that take the full content learning rate; smaller steps take a share,
# so a worker stepping every few events learns content as fast per event as a full batch.
_FULL_BATCH = 32

log = logging.getLogger("interest_stream.content")

TEXT_DIM = 384
NEIGHBOURS = 32  # content neighbours kept per item
CANDIDATES = 50  # content candidates per user
RECENT = 10  # the newest recent items whose neighbours are candidates
PROFILE_DECAY = 0.8  # per-event decay of a recent item's weight in the content profile
GATE_START = 2.0  # the gate's bias at first: sigmoid(2) = 0.88, content nearly fully on
NEAR_RECENT = 3  # the user's newest items the nearest-text feature reads
NEAR_START = 1.0  # the nearest-text feature's weight at first
FRESH_EVENTS = 2.0  # events after which an item is half "fresh" (see ContentPart.score)
INSTALL_BUDGET = 1024  # vectors installed per model call at most (the rest wait for the next)
_ENCODE_BATCH = 64
_CACHE_ITEMS = 50_000  # texts whose vectors the process keeps (float16: 38 MB at most)
_CHUNK = 16384  # item slots per block of the neighbour update


def text_key(text: str) -> str:
    """A short stable key of ``text`` for the encoder's cache."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]


class _Service:
    """One encoding thread per process, a bounded cache of vectors by text key."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[str, str, queue.SimpleQueue]] = queue.SimpleQueue()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._encoder: TextEncoder | None = None
        self._loaded = False
        self.encoded = 0  # texts encoded in this process
        self.encode_seconds = 0.0

    def encoder(self) -> TextEncoder | None:
        with self._lock:
            if not self._loaded:
                self._loaded = True
                try:
                    self._encoder = load_encoder()
                except OSError as exc:
                    log.warning("%s; items are served without content", exc)
                if self._encoder is None:
                    log.info("no text encoder installed: items are served without content")
                elif self._encoder.dim != TEXT_DIM:
                    log.warning("text encoder gives %d dimensions, not %d", self._encoder.dim, 384)
                    self._encoder = None
            return self._encoder

    def cached(self, key: str) -> np.ndarray | None:
        with self._lock:
            vec = self._cache.get(key)
            if vec is not None:
                self._cache.move_to_end(key)
            return vec

    def remember(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        with self._lock:
            for key, vec in zip(keys, vectors, strict=True):
                self._cache[key] = vec
            while len(self._cache) > _CACHE_ITEMS:
                self._cache.popitem(last=False)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float16[n, 384] vectors of ``texts``, on this thread (cached ones: not again)."""
        enc = self.encoder()
        assert enc is not None
        keys = [text_key(t) for t in texts]
        out = np.zeros((len(texts), TEXT_DIM), dtype=np.float16)
        todo = [i for i, k in enumerate(keys) if self.cached(k) is None]
        if todo:
            import time

            t0 = time.perf_counter()
            vecs = enc.encode([texts[i] for i in todo]).astype(np.float16)
            self.encode_seconds += time.perf_counter() - t0
            self.encoded += len(todo)
            self.remember([keys[i] for i in todo], vecs)
        for i, key in enumerate(keys):
            vec = self.cached(key)
            if vec is None:  # pushed out of the cache meanwhile: encode alone
                vec = enc.encode([texts[i]])[0].astype(np.float16)
            out[i] = vec
        return out

    def submit(self, key: str, text: str, done: queue.SimpleQueue) -> None:
        """Encode ``text`` in the background; ``(key, float16[384])`` goes to ``done``."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="content-encoder", daemon=True
                )
                self._thread.start()
        self._jobs.put((key, text, done))

    def _run(self) -> None:
        while True:
            jobs = [self._jobs.get()]
            while len(jobs) < _ENCODE_BATCH:
                try:
                    jobs.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            try:
                vecs = self.encode([text for _, text, _ in jobs])
            except Exception:  # a broken encoder must not kill the thread: items go without
                log.exception("encoding %d item text(s) failed", len(jobs))
                vecs = np.full((len(jobs), TEXT_DIM), np.nan, dtype=np.float16)
            for (key, _, done), vec in zip(jobs, vecs, strict=True):
                done.put((key, vec))


_SERVICE = _Service()


def encode_texts(texts: Sequence[str], cache: Path | None = None) -> np.ndarray | None:
    """float16[n, 384] content vectors of ``texts`` now (cached for the models), or None.

    None when no encoder is installed. The evaluator calls it to encode a
    catalogue once, before any model asks. ``cache``: a directory where the
    vectors of the same texts by the same encoder files are kept between runs
    (encoding ML-100K's 1,682 titles took 100 s on a busy 2-core machine; reading
    them back takes milliseconds). An unreadable or unwritable cache is skipped.
    """
    enc = _SERVICE.encoder()
    if enc is None:
        return None
    if cache is None:
        return _SERVICE.encode(texts)
    keys = [text_key(t) for t in texts]
    weights = enc.path / "model.safetensors"
    stamp = f"{enc.path.resolve()}:{weights.stat().st_size if weights.exists() else 0}"
    name = hashlib.sha1("\n".join([stamp, *keys]).encode("utf-8")).hexdigest()[:24]
    path = cache / f"{name}.npy"
    try:
        vecs = np.load(path, allow_pickle=False)
        if vecs.shape == (len(texts), TEXT_DIM) and vecs.dtype == np.float16:
            _SERVICE.remember(keys, vecs)
            return vecs
    except (OSError, ValueError):
        pass
    vecs = _SERVICE.encode(texts)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
        with tmp.open("wb") as fh:
            np.save(fh, vecs, allow_pickle=False)
        tmp.replace(path)
    except OSError as exc:
        log.warning("cannot keep content vectors in %s: %s", cache, exc)
    return vecs


def encoder_stats() -> tuple[int, float]:
    """(texts encoded in this process, seconds spent encoding them)."""
    return _SERVICE.encoded, _SERVICE.encode_seconds


def _grow(a: np.ndarray, n: int, fill: float | int) -> np.ndarray:
    if n <= len(a):
        return a
    size = max(len(a), 256)
    while size < n:
        size *= 2
    out = np.full((size, *a.shape[1:]), fill, dtype=a.dtype)
    out[: len(a)] = a
    return out


class ContentPart:
    """The content side of :class:`model.interest.model.InterestModel` (module docstring)."""

    def __init__(self, dim: int, lr: float, blend_lr: float) -> None:
        self.dim = dim
        # Per item with metadata ("slot"): its id, text key, vector and neighbours.
        self.slot: dict[str, int] = {}
        self.item_ids: list[str] = []
        self.keys: list[str] = []
        self.vectors = np.zeros((0, TEXT_DIM), dtype=np.float32)
        self.nbr = np.zeros((0, NEIGHBOURS), dtype=np.int64)  # slots, -1: none
        self.nsim = np.zeros((0, NEIGHBOURS), dtype=np.float32)
        self.slot_row = np.zeros(0, dtype=np.int64)  # vocabulary row of a slot, -1: not live
        self.row_slot = np.zeros(0, dtype=np.int64)  # slot of a vocabulary row, -1: none
        self._categories: dict[str, str | None] = {}
        self._waiting: dict[str, tuple[ItemMeta, str]] = {}  # item -> (meta, key) being encoded
        self._ready: list[tuple[ItemMeta, str, np.ndarray]] = []
        self._done: queue.SimpleQueue[tuple[str, np.ndarray]] = queue.SimpleQueue()
        self._by_key: dict[str, list[str]] = {}  # key -> items waiting for it
        self._last: tuple[np.ndarray | None, np.ndarray] = (None, np.zeros((0, TEXT_DIM)))
        self._centre = np.zeros(TEXT_DIM, dtype=np.float32)
        self.proj_out = nn.Parameter(torch.zeros(TEXT_DIM, dim))
        self.item_bias = nn.Parameter(torch.zeros(TEXT_DIM))
        self.alpha = nn.Parameter(torch.tensor(1.0))
        # Weights of the cosine on items few people touched yet, and of their being new.
        self.fresh_cos = nn.Parameter(torch.tensor(0.0))
        # Weight of the nearest-text feature (see :meth:`nearest`).
        self.near_w = nn.Parameter(torch.tensor(NEAR_START))
        # The gate (see :meth:`gate`): how much an item's text counts, per item and user.
        self.gate_w = nn.Parameter(torch.tensor([GATE_START, 0.0, 0.0]))
        self._opt = torch.optim.Adam(
            [
                {"params": [self.proj_out, self.item_bias], "lr": lr},
                {
                    "params": [self.alpha, self.fresh_cos, self.near_w, self.gate_w],
                    "lr": blend_lr,
                },
            ]
        )
        self._base_lr = [lr, blend_lr]

    @property
    def active(self) -> bool:
        """Whether any item has a vector (else every hook is a no-op)."""
        return bool(self.item_ids)

    # metadata in ---------------------------------------------------------------------
    def add(self, items: Sequence[ItemMeta]) -> int:
        """Queue item metadata; returns how many texts go to the encoder. Never blocks on it."""
        if not items or _SERVICE.encoder() is None:
            return 0
        sent = 0
        for meta in items:
            text = meta.content_text()
            if not text:
                continue
            key = text_key(text)
            slot = self.slot.get(meta.item_id)
            if slot is not None and self.keys[slot] == key:
                continue
            vec = _SERVICE.cached(key)
            if vec is not None:
                self._ready.append((meta, key, vec))
                continue
            self._waiting[meta.item_id] = (meta, key)
            waiting = self._by_key.setdefault(key, [])
            waiting.append(meta.item_id)
            if len(waiting) == 1:
                _SERVICE.submit(key, text, self._done)
                sent += 1
        return sent

    def _collect(self, block: bool) -> None:
        while self._by_key:
            try:
                key, vec = self._done.get(block=block)
            except queue.Empty:
                return
            for item in self._by_key.pop(key, []):
                entry = self._waiting.get(item)
                if entry is not None and entry[1] == key:
                    del self._waiting[item]
                    if np.isfinite(vec).all():
                        self._ready.append((entry[0], key, vec))

    def wait(self) -> None:
        """Block until every queued text is encoded (tests and the evaluator)."""
        self._collect(block=True)

    @property
    def pending(self) -> int:
        """Items whose vectors are not installed yet."""
        return len(self._waiting) + len(self._ready)

    # installing (on the model's thread, between steps) --------------------------------
    def install(self, vocab: ItemVocab, budget: int | None = INSTALL_BUDGET) -> np.ndarray:
        """Install the vectors that are ready; returns the rows it added to ``vocab``.

        Items get a vocabulary row now (the caller resets the tables of the
        rows ``vocab.fresh()`` reports); their neighbour lists, and those of
        every item they are similar to, are updated.
        """
        self._collect(block=False)
        if not self._ready:
            return np.zeros(0, dtype=np.int64)
        take = self._ready if budget is None else self._ready[:budget]
        self._ready = self._ready[len(take) :]
        latest = {meta.item_id: (meta, key, vec) for meta, key, vec in take}
        slots = []
        for item, (meta, key, vec) in latest.items():
            s = self.slot.get(item)
            if s is None:
                s = self.slot[item] = len(self.item_ids)
                self.item_ids.append(item)
                self.keys.append(key)
                n = len(self.item_ids)
                self.vectors = _grow(self.vectors, n, 0.0)
                self.nbr = _grow(self.nbr, n, -1)
                self.nsim = _grow(self.nsim, n, -np.inf)
                self.slot_row = _grow(self.slot_row, n, -1)
            else:
                self.keys[s] = key
            self.vectors[s] = vec
            self._last = (None, self._last[1])
            self._categories[item] = meta.category
            slots.append(s)
        rows = vocab.add_events(
            (item, meta.category, vocab.now) for item, (meta, _, _) in latest.items()
        )
        self.attach(rows, vocab)
        self._link(np.asarray(slots, dtype=np.int64))
        self._recentre()
        return rows

    def attach(self, rows: np.ndarray, vocab: ItemVocab) -> None:
        """Point item ``rows`` (new to the vocabulary, or reused) at their items' vectors."""
        if rows.size == 0:
            return
        self._last = (None, self._last[1])
        self.row_slot = _grow(self.row_slot, vocab.n_rows, -1)
        ids = vocab.ids
        for row in rows.tolist():
            item = ids[row]
            s = self.slot.get(item) if item is not None else None
            self.row_slot[row] = -1 if s is None else s
            if s is not None:
                self.slot_row[s] = row

    def forget(self, rows: np.ndarray) -> None:
        """Expired rows: their items keep their vectors, but no longer a row."""
        self._last = (None, self._last[1])
        rows = rows[rows < len(self.row_slot)]
        slots = self.row_slot[rows]
        self.slot_row[slots[slots >= 0]] = -1
        self.row_slot[rows] = -1

    def _link(self, new: np.ndarray) -> None:
        """Merge slots ``new`` into every neighbour list, and give them their own."""
        n = len(self.item_ids)
        new = np.unique(new)
        vn = self.vectors[new].astype(np.float32)  # [B, T]
        # A changed text: its old place in others' lists goes first.
        stale = np.isin(self.nbr[:n], new)
        self.nbr[:n][stale], self.nsim[:n][stale] = -1, -np.inf
        own_nbr = np.full((len(new), NEIGHBOURS), -1, dtype=np.int64)
        own_sim = np.full((len(new), NEIGHBOURS), -np.inf, dtype=np.float32)
        for lo in range(0, n, _CHUNK):
            hi = min(n, lo + _CHUNK)
            sims = self.vectors[lo:hi].astype(np.float32) @ vn.T  # [c, B]
            ids = np.arange(lo, hi)
            sims[ids[:, None] == new[None, :]] = -np.inf  # never one's own neighbour
            # Existing items: keep the best NEIGHBOURS of old and new.
            cand = np.concatenate([self.nbr[lo:hi], np.broadcast_to(new, (hi - lo, len(new)))], 1)
            csim = np.concatenate([self.nsim[lo:hi], sims], axis=1)
            self.nbr[lo:hi], self.nsim[lo:hi] = _top(cand, csim)
            # New items: the best of this block, merged with what earlier blocks gave.
            cand = np.concatenate([own_nbr, np.broadcast_to(ids, (len(new), hi - lo))], 1)
            own_nbr, own_sim = _top(cand, np.concatenate([own_sim, sims.T], axis=1))
        self.nbr[new], self.nsim[new] = own_nbr, own_sim

    def _recentre(self) -> None:
        """The mean of the catalogue's vectors, taken out of every vector the model reads."""
        n = len(self.item_ids)
        if n:
            self._centre = self.vectors[:n].astype(np.float32).mean(axis=0)
        self._last = (None, self._last[1])

    # reading -------------------------------------------------------------------------
    def _vectors_of(self, rows: np.ndarray) -> np.ndarray:
        """float32[..., T] vectors of item ``rows`` (zeros where a row has none, or is -1)."""
        rows = np.asarray(rows, dtype=np.int64)
        ok = (rows >= 0) & (rows < len(self.row_slot))
        slots = np.where(ok, self.row_slot[np.where(ok, rows, 0)], -1)
        out = self.vectors[np.maximum(slots, 0)].astype(np.float32)
        # Centred on the catalogue's mean and unit length again: what every text of a
        # catalogue shares ("a movie", "an industrial product") says nothing about a
        # user's taste, and left in, it makes the most generic texts close to every
        # profile (ML-100K validation, docs/model/content.md: catalogue coverage 0.58 ->
        # 0.63 of the items, with the other content terms as they are now).
        out -= self._centre
        out /= np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-6)
        out[slots < 0] = 0.0
        return out

    def _columns(self, cols: np.ndarray) -> np.ndarray:
        """float32[C, T] vectors of a column block shared by all users (the last one is kept:
        the embedding term and the feature read the same block)."""
        last, vec = self._last
        if last is not cols:
            vec = self._vectors_of(cols)
            self._last = (cols, vec)
        return vec

    def gate(self, counts: np.ndarray, cold: np.ndarray | None = None) -> torch.Tensor:
        """float32[counts.shape] (or [B, C] with ``cold`` float32[B]): how much items' texts count.

        ``sigmoid(g0 + g1 * log(1 + count) + g2 * cold(user))``, learnt by the same
        loss as the rest: an item's own events can take over from its text as they
        come in, and users with a history can lean on it more (or less) than newcomers.
        Every content term is multiplied by it, so what the text adds is what the
        model found it to be worth, item by item and user by user.
        """
        g = self.gate_w[0] + self.gate_w[1] * torch.from_numpy(
            np.log1p(np.maximum(counts, 0.0)).astype(np.float32)
        )
        if cold is not None:
            if g.dim() == 1:
                g = g.unsqueeze(0)
            g = g + self.gate_w[2] * torch.from_numpy(cold.astype(np.float32)).unsqueeze(1)
        return torch.sigmoid(g)

    def item_scores(
        self, q: torch.Tensor, cols: np.ndarray, counts: np.ndarray, cold: np.ndarray
    ) -> torch.Tensor:
        """float32[B, C]: ``gate * (q . (c_i @ P_out) + c_i . w)`` for the columns (q:
        float32[B, dim]; ``counts``: the columns' event counts, ``cold``: float32[B]).

        Computed as ``(q @ P_out^T + w) . c_i``: one product with the columns'
        vectors instead of projecting every column.
        """
        qc = q @ self.proj_out.T + self.item_bias  # [B, T]
        gate = self.gate(counts, cold)
        if cols.ndim == 1:
            return (qc @ torch.from_numpy(self._columns(cols)).T) * gate
        parts = []
        step = max(1, 4096 // max(cols.shape[1], 1))
        for lo in range(0, cols.shape[0], step):
            vec = torch.from_numpy(self._vectors_of(cols[lo : lo + step]))  # [b, C, T]
            parts.append(torch.bmm(vec, qc[lo : lo + step].unsqueeze(2)).squeeze(2))
        return torch.cat(parts) * gate

    def _profile(self, ctx: Context) -> np.ndarray:
        """float32[B, T] unit content profile per user (zeros when none of their items has one)."""
        w = EVENT_WEIGHTS[ctx.types] * np.power(np.float32(PROFILE_DECAY), ctx.ages) * ctx.mask
        prof = np.matmul(w.astype(np.float32)[:, None, :], self._vectors_of(ctx.rows))[:, 0]
        norm = np.linalg.norm(prof, axis=1, keepdims=True)
        return prof / np.maximum(norm, 1e-9)

    def feature(self, ctx: Context, cols: np.ndarray) -> torch.Tensor:
        """float32[B, C] cosine of the columns' vectors with each user's profile (0: no vector)."""
        # torch's matrix products: numpy's are several times slower on the OpenBLAS here.
        prof = torch.from_numpy(self._profile(ctx))
        if cols.ndim == 1:
            return prof @ torch.from_numpy(self._columns(cols)).T
        parts = []
        step = max(1, 4096 // max(cols.shape[1], 1))
        for lo in range(0, cols.shape[0], step):
            vec = torch.from_numpy(self._vectors_of(cols[lo : lo + step]))  # [b, C, T]
            parts.append(torch.bmm(vec, prof[lo : lo + step].unsqueeze(2)).squeeze(2))
        return torch.cat(parts)

    def nearest(self, ctx: Context, cols: np.ndarray) -> torch.Tensor:
        """float32[B, C]: the highest cosine of each column's text with one of the user's
        ``NEAR_RECENT`` newest items' texts (0 without any).

        A profile blurs what a user did into one direction; the next item is often a
        sibling of one of the last (the same product in another size, the same series,
        the brand's accessory), which only the nearest text shows.
        """
        recent = torch.from_numpy(self._vectors_of(ctx.rows[:, -NEAR_RECENT:]))  # [B, R, T]
        if cols.ndim == 1:
            sims = torch.matmul(recent, torch.from_numpy(self._columns(cols)).T)  # [B, R, C]
        else:
            parts = []
            step = max(1, 4096 // max(cols.shape[1], 1))
            for lo in range(0, cols.shape[0], step):
                vec = torch.from_numpy(self._vectors_of(cols[lo : lo + step]))  # [b, C, T]
                parts.append(torch.bmm(recent[lo : lo + step], vec.transpose(1, 2)))
            sims = torch.cat(parts)
        # An item with no text (or padding) is a zero vector: a cosine of 0, never the max
        # of a user who has a sibling, and 0 for one who has none.
        return sims.max(dim=1).values

    def score(
        self, ctx: Context, cols: np.ndarray, counts: np.ndarray, cold: np.ndarray
    ) -> torch.Tensor:
        """float32[B, C] content term of the columns' logits (``counts``: their event counts).

        ``gate * ((alpha + f * fresh) * cos + n * near)`` with ``cos`` the profile cosine
        (:meth:`feature`), ``fresh = 1 / (1 + count / FRESH_EVENTS)``
        (on items few people touched, what they are about is all there is to go on),
        ``near`` the nearest-text feature (:meth:`nearest`) and ``gate`` the item's
        and user's gate (:meth:`gate`). How much a user's history counts is the gate's
        (its ``cold(user)`` term): a second weight on ``cold`` in the blend cost on
        MovieLens-100K's validation part (docs/model/content.md).
        """
        cos = self.feature(ctx, cols)
        fresh = torch.from_numpy((1.0 / (1.0 + counts / FRESH_EVENTS)).astype(np.float32))
        if fresh.dim() == 1:
            fresh = fresh.unsqueeze(0)
        term = (self.alpha + self.fresh_cos * fresh) * cos + self.near_w * self.nearest(ctx, cols)
        return term * self.gate(counts, cold)

    def candidates(self, ctx: Context) -> np.ndarray:
        """int64[B, CANDIDATES] rows most similar to each user's newest items (-1 padded)."""
        rows = ctx.rows[:, -RECENT:]
        ok = (rows >= 0) & (rows < len(self.row_slot))
        slots = np.where(ok, self.row_slot[np.where(ok, rows, 0)], -1)
        b = rows.shape[0]
        if not (slots >= 0).any():
            return np.full((b, 1), -1, dtype=np.int64)
        w = EVENT_WEIGHTS[ctx.types[:, -RECENT:]] * np.power(PROFILE_DECAY, ctx.ages[:, -RECENT:])
        nbr = self.nbr[np.maximum(slots, 0)]  # [B, R, M]
        score = self.nsim[np.maximum(slots, 0)] * w[:, :, None]
        score[slots < 0] = -np.inf
        nbr = nbr.reshape(b, -1)
        score = score.reshape(b, -1)
        k = min(CANDIDATES, score.shape[1])
        top = np.argpartition(-score, k - 1, axis=1)[:, :k]
        picked = np.take_along_axis(nbr, top, axis=1)
        good = np.isfinite(np.take_along_axis(score, top, axis=1)) & (picked >= 0)
        out = np.where(good, self.slot_row[np.maximum(picked, 0)], -1)
        return out.astype(np.int64)

    # learning ------------------------------------------------------------------------
    def step(self, events: int = _FULL_BATCH) -> None:
        """Apply the gradients the last backward pass left on the content parameters."""
        share = min(1.0, events / _FULL_BATCH)
        for group, base in zip(self._opt.param_groups, self._base_lr, strict=True):
            group["lr"] = base * share
        self._opt.step()
        self._opt.zero_grad(set_to_none=True)

    def zero_grad(self) -> None:
        self._opt.zero_grad(set_to_none=True)

    # persistence ---------------------------------------------------------------------
    def _params(self) -> dict[str, nn.Parameter]:
        return {
            "proj_out": self.proj_out,
            "item_bias": self.item_bias,
            "alpha": self.alpha,
            "fresh_cos": self.fresh_cos,
            "near_w": self.near_w,
            "gate_w": self.gate_w,
        }

    def state_dict(self) -> ModelState:
        n = len(self.item_ids)
        state = ModelState(
            {
                "vectors": self.vectors[:n].copy(),
                "nbr": self.nbr[:n].copy(),
                "nsim": self.nsim[:n].copy(),
                "slot_row": self.slot_row[:n].copy(),
                "row_slot": self.row_slot.copy(),
            },
            {"items": list(self.item_ids), "keys": list(self.keys)},
        )
        save_params(state, self._params(), self._opt)
        return state

    def load_state_dict(self, state: ModelState) -> None:
        items = [str(i) for i in state.meta.get("items", [])]
        keys = [str(k) for k in state.meta.get("keys", [])]
        arrays = state.arrays
        n = len(items)
        if len(keys) != n or len(arrays["vectors"]) != n or len(arrays["nbr"]) != n:
            raise ValueError("content arrays do not match its items")
        self.item_ids, self.keys = items, keys
        self.slot = {item: s for s, item in enumerate(items)}
        self.vectors = np.asarray(arrays["vectors"], dtype=np.float32).reshape(n, TEXT_DIM)
        self.nbr = np.asarray(arrays["nbr"], dtype=np.int64).reshape(n, NEIGHBOURS)
        self.nsim = np.asarray(arrays["nsim"], dtype=np.float32).reshape(n, NEIGHBOURS)
        self.slot_row = np.asarray(arrays["slot_row"], dtype=np.int64).copy()
        self.row_slot = np.asarray(arrays["row_slot"], dtype=np.int64).copy()
        self._last = (None, self._last[1])
        # A snapshot from before the gate keeps the gate's starting values.
        params = {k: v for k, v in self._params().items() if f"param.{k}" in arrays}
        load_params(arrays, params, self._opt)
        self._recentre()


def _top(cand: np.ndarray, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The NEIGHBOURS best (candidate, similarity) of each row, best first; -1 / -inf after."""
    k = NEIGHBOURS
    if cand.shape[1] > k:
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        cand, sims = np.take_along_axis(cand, part, 1), np.take_along_axis(sims, part, 1)
    order = np.argsort(-sims, axis=1, kind="stable")
    cand, sims = np.take_along_axis(cand, order, 1), np.take_along_axis(sims, order, 1)
    cand = np.where(np.isfinite(sims), cand, -1)
    if cand.shape[1] < k:
        pad = k - cand.shape[1]
        cand = np.pad(cand, ((0, 0), (0, pad)), constant_values=-1)
        sims = np.pad(sims, ((0, 0), (0, pad)), constant_values=-np.inf)
    return cand, sims
