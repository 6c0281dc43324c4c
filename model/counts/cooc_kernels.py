"""Compiled loops behind :class:`model.counts.cooc.SparseCoOccurrence` (numba, nopython).

The co-occurrence rows live in one flat arena: row ``r`` owns the block
``[start[r], start[r] + cap)`` whose first ``length[r]`` slots hold neighbour
rows (``nbr``, int32) and their weights (``val``, float32). Block capacities
come in classes 4, 8, 16, ... up to the row limit; a row moves to the next
class when it fills, and freed blocks go on a per-class free list threaded
through their first ``nbr`` slot (the next free offset in units of 4 slots).

Every loop here touches O(pairs x row limit) or O(users x (window x row limit
+ candidates)) memory: nothing scans the catalogue except :func:`forget_rows`.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = [
    "CACHED",
    "UNIT",
    "compile_loop",
    "add_pairs",
    "candidate_scores",
    "dense_scores",
    "dense_scores_shifted",
    "forget_rows",
    "lookup_pairs",
    "top_items",
    "top_neighbours",
]

UNIT = 4  # smallest block; every block size is a multiple of it
# A score within this share of what was added to and taken from it is rounding.
_ROUNDING = np.float32(64.0 * np.finfo(np.float32).eps)


def compile_loop(fn):
    """``njit`` with an on-disk cache when numba finds a writable place for one.

    numba raises RuntimeError at decoration time when neither the source's
    ``__pycache__`` nor the user cache dir (or ``NUMBA_CACHE_DIR``) is writable,
    e.g. a read-only image run as another user: then compile in each process.
    """
    global CACHED
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError:
        CACHED = False
        return numba.njit(nogil=True)(fn)


CACHED = True


def _alloc(cls, sizes, free, top, nbr):
    """Offset of a free block of class ``cls``, or -1 when the arena is full."""
    head = free[cls]
    if head >= 0:
        nxt = nbr[head]
        free[cls] = -1 if nxt < 0 else np.int64(nxt) * UNIT
        return head
    size = sizes[cls]
    if top[0] + size > nbr.shape[0]:
        return -1
    off = top[0]
    top[0] += size
    return off


def _release(off, cls, free, nbr):
    head = free[cls]
    nbr[off] = -1 if head < 0 else np.int32(head // UNIT)
    free[cls] = off


def _add_pairs(start, length, klass, nbr, val, sizes, free, top, limit, src, dst, w, first, draws):
    """Add ``w[p]`` to pair ``(src[p], dst[p])`` for p >= ``first``.

    A row that is full (``limit`` entries) and meets a new neighbour of weight
    x gives it the place of its lightest entry (weight v) with probability
    x / (v + x), else drops the update. A neighbour that keeps coming back
    gets in after about v / x tries and then counts exactly; one-off pairs
    rarely displace anything. Stored weights are therefore exact since the
    neighbour entered its row (never more than the true weight). This beat
    Space-Saving's "always replace, inherit the weight" on MovieLens-100K
    (Recall@10 0.158 vs 0.144 at 64 neighbours; docs/model/results-history.md).
    ``draws`` counts the coin tosses: the seed of a hash, so replays are exact.

    Returns the number of pairs done; fewer than ``len(src)`` means the arena
    is full: grow it and call again from there.
    """
    last = sizes.shape[0] - 1
    for p in range(first, src.shape[0]):
        s, d, x = src[p], dst[p], w[p]
        if s < 0 or d < 0:
            continue
        off = start[s]
        if off < 0:
            off = _alloc(0, sizes, free, top, nbr)
            if off < 0:
                return p
            start[s], length[s], klass[s] = off, 0, 0
        n = length[s]
        hit = False
        for j in range(off, off + n):
            if nbr[j] == d:
                val[j] += x
                hit = True
                break
        if hit:
            continue
        c = klass[s]
        if n < sizes[c] and n < limit:
            nbr[off + n], val[off + n] = d, x
            length[s] = n + 1
        elif n < limit and c < last:
            new = _alloc(c + 1, sizes, free, top, nbr)
            if new < 0:
                return p
            nbr[new : new + n] = nbr[off : off + n]
            val[new : new + n] = val[off : off + n]
            _release(off, c, free, nbr)
            start[s], klass[s] = new, c + 1
            nbr[new + n], val[new + n] = d, x
            length[s] = n + 1
        else:
            low = off
            for j in range(off + 1, off + n):
                if val[j] < val[low]:
                    low = j
            draws[0] += 1
            if _uniform(draws[0], s, d) * (val[low] + x) < x:
                nbr[low], val[low] = d, x
    return src.shape[0]


def _uniform(draw, s, d):
    """A float in [0, 1) hashed from the toss number and the pair (splitmix64)."""
    z = (
        np.uint64(draw) * np.uint64(0x9E3779B97F4A7C15)
        ^ np.uint64(s) << np.uint64(32)
        ^ np.uint64(d)
    )
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.float64(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


def _lookup_pairs(start, length, nbr, val, rows, cols, out):
    """``out[p]`` = stored weight of pair ``(rows[p], cols[p])``, 0 when absent."""
    n_rows = start.shape[0]
    for p in range(rows.shape[0]):
        r, c = rows[p], cols[p]
        out[p] = 0.0
        if r < 0 or r >= n_rows or c < 0 or start[r] < 0:
            continue
        off = start[r]
        for j in range(off, off + length[r]):
            if nbr[j] == c:
                out[p] = val[j]
                break


def _candidate_scores(start, length, nbr, val, rows, w, cand, slot, out):
    """``out[b, k, c] += sum_l w[b, k, l] * C[rows[b, l], cand[b, c]]``.

    ``slot`` is int32 scratch, -1 everywhere, as long as the row count: it maps
    a candidate row to its column for one user at a time and is reset after.
    """
    n_rows = start.shape[0]
    n_slot = slot.shape[0]
    bsz, ksz, lsz = w.shape
    csz = cand.shape[1]
    for b in range(bsz):
        for c in range(csz):
            x = cand[b, c]
            if 0 <= x < n_slot:
                slot[x] = c
        for li in range(lsz):
            r = rows[b, li]
            if r < 0 or r >= n_rows or start[r] < 0:
                continue
            nonzero = False
            for k in range(ksz):
                if w[b, k, li] != 0.0:
                    nonzero = True
            if not nonzero:
                continue
            off = start[r]
            for j in range(off, off + length[r]):
                c = slot[nbr[j]]
                if c >= 0:
                    v = val[j]
                    for k in range(ksz):
                        out[b, k, c] += w[b, k, li] * v
        # A candidate listed twice maps to its last column: copy that score.
        for c in range(csz):
            x = cand[b, c]
            if 0 <= x < n_slot and slot[x] != c:
                for k in range(ksz):
                    out[b, k, c] = out[b, k, slot[x]]
        for c in range(csz):
            x = cand[b, c]
            if 0 <= x < n_slot:
                slot[x] = -1


def _dense_scores(start, length, nbr, val, rows, w, out):
    """``out[b, k, i] += sum_l w[b, k, l] * C[rows[b, l], i]`` for items i < out.shape[2]."""
    bsz, _, lsz = w.shape
    for b in range(bsz):
        for li in range(lsz):
            _add_row(start, length, nbr, val, rows[b, li], w[b, :, li], out[b])


def _add_row(start, length, nbr, val, r, coef, out_b):
    """``out_b[k, i] += coef[k] * C[r, i]`` for items i < out_b.shape[1] (r < 0: nothing)."""
    if r < 0 or r >= start.shape[0] or start[r] < 0:
        return
    width = out_b.shape[1]
    off = start[r]
    for j in range(off, off + length[r]):
        i = nbr[j]
        if i < width:
            v = val[j]
            for k in range(coef.shape[0]):
                out_b[k, i] += coef[k] * v


def _window_hash(rows, types, lo, hi):
    h = np.uint64(1469598103934665603)
    for li in range(lo, hi):
        h = (h ^ np.uint64(rows[li] + 2)) * np.uint64(1099511628211)
        h = (h ^ np.uint64(types[li])) * np.uint64(1099511628211)
    return h


def _dense_scores_shifted(start, length, nbr, val, rows, types, w, ratio, out):
    """As :func:`_dense_scores`, reusing contexts that are another's moved on by one event.

    When context b's rows and types, but the newest, are context p's but the oldest
    (p earlier in the batch: the same user one event before, or any context with that
    window), and the weights are geometric in position (``w[b, k, l] = ratio[k] *
    w[p, k, l + 1]``, as with a per-age decay), then
    ``out[b] = ratio * (out[p] - w[p, :, 0] C[rows[p, 0]]) + w[b, :, L-1] C[rows[b, L-1]]``:
    two neighbour rows instead of L. Contexts are found by a hash of their windows,
    checked slot by slot. Taking the dropped row off leaves float rounding where the
    true score is zero (no other item of the window has that neighbour), which a later
    normalisation by the row's largest score would blow up: each score carries the size
    of everything added to or taken from it (``mag``), and a score within rounding of
    that size is zero.
    """
    bsz, ksz, lsz = w.shape
    size = 16
    while size < 2 * bsz:
        size *= 2
    mask = np.uint64(size - 1)
    keys = np.zeros(size, dtype=np.uint64)
    owner = np.full(size, -1, dtype=np.int64)
    coef = np.empty(ksz, dtype=np.float32)
    mag = np.empty(out.shape, dtype=np.float32)
    tol = _ROUNDING
    for b in range(bsz):
        p = -1
        if lsz > 1:
            h = _window_hash(rows[b], types[b], 0, lsz - 1)
            slot = h & mask
            while owner[slot] >= 0:
                if keys[slot] == h:
                    q = owner[slot]
                    same = True
                    for li in range(lsz - 1):
                        if rows[b, li] != rows[q, li + 1] or types[b, li] != types[q, li + 1]:
                            same = False
                            break
                    if same:
                        p = q
                        break
                slot = (slot + np.uint64(1)) & mask
        if p >= 0:
            for k in range(ksz):
                r = ratio[k]
                for i in range(out.shape[2]):
                    out[b, k, i] = r * out[p, k, i]
                    mag[b, k, i] = r * mag[p, k, i]
                coef[k] = -r * w[p, k, 0]
            _add_row(start, length, nbr, val, rows[p, 0], coef, out[b])
            for k in range(ksz):
                coef[k] = -coef[k]
            _add_row(start, length, nbr, val, rows[p, 0], coef, mag[b])
            for k in range(ksz):
                coef[k] = w[b, k, lsz - 1]
            _add_row(start, length, nbr, val, rows[b, lsz - 1], coef, out[b])
            _add_row(start, length, nbr, val, rows[b, lsz - 1], coef, mag[b])
            for k in range(ksz):
                for i in range(out.shape[2]):
                    if out[b, k, i] <= tol * mag[b, k, i]:
                        out[b, k, i] = 0.0
        else:
            for li in range(lsz):
                _add_row(start, length, nbr, val, rows[b, li], w[b, :, li], out[b])
            for k in range(ksz):  # weights and counts are >= 0: nothing cancelled
                for i in range(out.shape[2]):
                    mag[b, k, i] = out[b, k, i]
        if lsz > 1:
            h = _window_hash(rows[b], types[b], 1, lsz)
            slot = h & mask
            while owner[slot] >= 0 and keys[slot] != h:
                slot = (slot + np.uint64(1)) & mask
            keys[slot] = h
            owner[slot] = b


def _select(values, items, m, out_items, out_scores):
    """Write the ``m`` largest ``values`` (ties: lower position first) with their items."""
    n = values.shape[0]
    if n > m:
        cut = np.partition(values, n - m)[n - m]
        keep = np.empty(m, dtype=np.int64)
        q = 0
        for i in range(n):  # strictly above the cut first, then ties, so at most m
            if values[i] > cut:
                keep[q] = i
                q += 1
        for i in range(n):
            if q < m and values[i] == cut:
                keep[q] = i
                q += 1
        idx = keep[:q]
    else:
        idx = np.arange(n)
    order = idx[np.argsort(-values[idx], kind="mergesort")]
    for q in range(order.shape[0]):
        out_items[q] = items[order[q]]
        out_scores[q] = values[order[q]]
    return order.shape[0]


def _top_items(
    start, length, nbr, val, rows, w, exclude, m, slot, col_counts, col_power, out_items, out_scores
):
    """Per user, the ``m`` items with the largest ``sum_l w[b, l] * C[rows[b, l], i] * s_i``.

    ``s_i = max(col_counts[i], 1) ** -col_power`` (1 for items past the end of
    ``col_counts``), e.g. a cosine normalisation by popularity.
    Items in ``exclude[b]`` (-1 padded) are left out; ``slot`` as in
    :func:`_candidate_scores`. Unused places keep item -1, score 0.
    """
    n_rows = start.shape[0]
    bsz, lsz = w.shape
    cap = 0
    for b in range(bsz):
        total = 0
        for li in range(lsz):
            r = rows[b, li]
            if 0 <= r < n_rows and start[r] >= 0:
                total += length[r]
        cap = max(cap, total)
    items = np.empty(cap, dtype=np.int64)
    acc = np.empty(cap, dtype=np.float32)
    for b in range(bsz):
        nt = 0
        for li in range(lsz):
            r = rows[b, li]
            if r < 0 or r >= n_rows or start[r] < 0 or w[b, li] == 0.0:
                continue
            off = start[r]
            for j in range(off, off + length[r]):
                i = nbr[j]
                t = slot[i]
                if t < 0:
                    t = nt
                    slot[i] = t
                    items[t] = i
                    acc[t] = 0.0
                    nt += 1
                acc[t] += w[b, li] * val[j]
        if col_power != 0.0:
            for t in range(nt):
                i = items[t]
                if i < col_counts.shape[0]:
                    acc[t] *= max(col_counts[i], 1.0) ** -col_power
        for e in range(exclude.shape[1]):
            x = exclude[b, e]
            if 0 <= x < slot.shape[0] and slot[x] >= 0:
                acc[slot[x]] = -np.inf
        for t in range(nt):
            slot[items[t]] = -1
        got = _select(acc[:nt], items[:nt], m, out_items[b], out_scores[b])
        # Excluded items sort last; drop them.
        while got > 0 and out_scores[b, got - 1] == -np.inf:
            got -= 1
            out_items[b, got] = -1
            out_scores[b, got] = 0.0


def _top_neighbours(start, length, nbr, val, rows, m, out_items, out_scores):
    """The ``m`` heaviest neighbours of each of ``rows``, heaviest first."""
    n_rows = start.shape[0]
    for q in range(rows.shape[0]):
        r = rows[q]
        if r < 0 or r >= n_rows or start[r] < 0:
            continue
        off = start[r]
        n = length[r]
        items = nbr[off : off + n].astype(np.int64)
        _select(val[off : off + n].copy(), items, m, out_items[q], out_scores[q])


def _forget_rows(start, length, klass, nbr, val, free, dead):
    """Empty the rows marked ``dead`` and remove every entry pointing at one.

    One pass over every stored entry: O(stored pairs), whatever the number of
    rows forgotten — so forget many rows at once, not one at a time.
    """
    n_rows = start.shape[0]
    for r in range(n_rows):
        if start[r] >= 0 and dead[r]:
            _release(start[r], klass[r], free, nbr)
            start[r], length[r], klass[r] = -1, 0, 0
    for r in range(n_rows):
        off = start[r]
        if off < 0:
            continue
        kept = 0
        for j in range(off, off + length[r]):
            i = nbr[j]
            if i < dead.shape[0] and dead[i]:
                continue
            nbr[off + kept], val[off + kept] = i, val[j]
            kept += 1
        length[r] = kept


_alloc = compile_loop(_alloc)
_uniform = compile_loop(_uniform)
_release = compile_loop(_release)
_select = compile_loop(_select)
add_pairs = compile_loop(_add_pairs)
lookup_pairs = compile_loop(_lookup_pairs)
candidate_scores = compile_loop(_candidate_scores)
dense_scores = compile_loop(_dense_scores)
_add_row = compile_loop(_add_row)
_window_hash = compile_loop(_window_hash)
dense_scores_shifted = compile_loop(_dense_scores_shifted)
top_items = compile_loop(_top_items)
top_neighbours = compile_loop(_top_neighbours)
forget_rows = compile_loop(_forget_rows)
