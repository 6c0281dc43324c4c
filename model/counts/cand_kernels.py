"""Compiled loops over per-user candidate lists (numba, nopython).

Each loop walks B users x (window + candidates) entries and touches a scratch
array indexed by item or category row only at the rows it meets, so its cost
never depends on the catalogue size.
"""

from __future__ import annotations

import numpy as np

from model.counts.cooc_kernels import compile_loop

__all__ = ["keep_mask", "dense_ids", "user_categories", "category_share", "warm_up"]


def _keep_mask(cand, exclude, stamp, token, keep_first, keep):
    """``keep[b, c]`` False where ``cand[b, c]`` is padding, excluded for user b or a repeat.

    ``cand`` int64[B, C] item rows (-1: padding), ``exclude`` int64[B, E]
    (-1 padded), ``stamp`` int64 scratch as long as the row count, whose
    entries are compared with per-user tokens drawn from ``token[0]``
    (so it never needs clearing). ``keep_first``: column 0 is kept even when
    excluded (a training target). Among repeats the first is kept.
    """
    bsz, csz = cand.shape
    n = stamp.shape[0]
    for b in range(bsz):
        ex_tok = token[0]
        seen_tok = ex_tok + 1
        token[0] += 2
        for e in range(exclude.shape[1]):
            x = exclude[b, e]
            if 0 <= x < n:
                stamp[x] = ex_tok
        for c in range(csz):
            x = cand[b, c]
            if x < 0 or x >= n:
                keep[b, c] = False
            elif stamp[x] == seen_tok:
                keep[b, c] = False
            elif stamp[x] == ex_tok and not (keep_first and c == 0):
                keep[b, c] = False
            else:
                keep[b, c] = True
                stamp[x] = seen_tok


def _dense_ids(values, stamp, slot, token, uniq, pos):
    """Number the distinct non-negative ``values`` in order of first appearance.

    Writes them to ``uniq[:U]`` and each value's number to ``pos`` (-1 for a
    negative value); returns U. ``stamp`` (int64) and ``slot`` (int32) are
    scratch as long as the largest value + 1; ``stamp`` is compared with a
    token drawn from ``token[0]``, so neither needs clearing.
    """
    tok = token[0]
    token[0] += 1
    u = 0
    for i in range(values.shape[0]):
        x = values[i]
        if x < 0:
            pos[i] = -1
            continue
        if stamp[x] != tok:
            stamp[x] = tok
            slot[x] = u
            uniq[u] = x
            u += 1
        pos[i] = slot[x]
    return u


def _user_categories(cats, w, scratch, out_cats, out_share):
    """Each user's categories by recency-weighted share of their recent events.

    ``cats`` int64[B, L] category rows of the recent items (0: unknown or
    padding, never counted), ``w`` float32[B, L]; ``scratch`` float32 zeros as
    long as the category count (left as zeros). Writes the top ``G`` categories
    (``out_cats`` int64[B, G], -1 padded) and their shares (``out_share``).
    """
    bsz, lsz = cats.shape
    g = out_cats.shape[1]
    found = np.empty(lsz, dtype=np.int64)
    for b in range(bsz):
        total = 0.0
        nf = 0
        for li in range(lsz):
            c = cats[b, li]
            if c <= 0 or w[b, li] == 0.0:
                continue
            if scratch[c] == 0.0:
                found[nf] = c
                nf += 1
            scratch[c] += w[b, li]
            total += w[b, li]
        for q in range(g):
            out_cats[b, q] = -1
            out_share[b, q] = 0.0
        for i in range(nf):
            c = found[i]
            v = scratch[c]
            # Insertion into the sorted top g (ties: the lower category row first).
            q = g
            while q > 0 and (
                out_cats[b, q - 1] < 0
                or v > out_share[b, q - 1]
                or (v == out_share[b, q - 1] and c < out_cats[b, q - 1])
            ):
                q -= 1
            if q < g:
                for j in range(g - 1, q, -1):
                    out_cats[b, j] = out_cats[b, j - 1]
                    out_share[b, j] = out_share[b, j - 1]
                out_cats[b, q] = c
                out_share[b, q] = v
        for q in range(g):
            if out_cats[b, q] >= 0:
                out_share[b, q] /= total
        for i in range(nf):
            scratch[found[i]] = 0.0


def _category_share(cats, w, cand_cats, scratch, out):
    """``out[b, c]`` = share of user b's weighted recent events in category ``cand_cats[b, c]``.

    ``cats``/``w`` as in :func:`_user_categories`; ``cand_cats`` int64[B, C]
    (a shared row may be broadcast); unknown category 0 scores 0.
    """
    bsz, lsz = cats.shape
    csz = cand_cats.shape[1]
    for b in range(bsz):
        total = 0.0
        for li in range(lsz):
            c = cats[b, li]
            if c > 0:
                scratch[c] += w[b, li]
                total += w[b, li]
        if total > 0.0:
            for c in range(csz):
                x = cand_cats[b, c]
                out[b, c] = scratch[x] / total if x > 0 else 0.0
        for li in range(lsz):
            c = cats[b, li]
            if c > 0:
                scratch[c] = 0.0


keep_mask = compile_loop(_keep_mask)
dense_ids = compile_loop(_dense_ids)
user_categories = compile_loop(_user_categories)
category_share = compile_loop(_category_share)


def warm_up() -> None:
    """Run each loop once on tiny data so numba loads (or compiles and caches) it."""
    cand = np.array([[0, 1, 1, -1]], dtype=np.int64)
    keep = np.zeros(cand.shape, dtype=np.bool_)
    stamp = np.zeros(4, dtype=np.int64)
    keep_mask(cand, np.array([[1]], dtype=np.int64), stamp, np.ones(1, np.int64), True, keep)
    keep_mask(cand, np.array([[1]], dtype=np.int64), stamp, np.ones(1, np.int64), False, keep)
    dense_ids(
        np.array([2, -1, 2]),
        stamp,
        np.zeros(4, dtype=np.int32),
        np.ones(1, np.int64),
        np.zeros(3, dtype=np.int64),
        np.zeros(3, dtype=np.int64),
    )
    cats = np.array([[1, 2, 0]], dtype=np.int64)
    w = np.ones((1, 3), dtype=np.float32)
    scratch = np.zeros(3, dtype=np.float32)
    user_categories(
        cats, w, scratch, np.zeros((1, 2), dtype=np.int64), np.zeros((1, 2), dtype=np.float32)
    )
    out = np.zeros((1, 2), dtype=np.float32)
    category_share(cats, w, np.array([[1, 2]], dtype=np.int64), scratch, out)
    category_share(cats, w, np.broadcast_to(np.array([1, 2], dtype=np.int64), (1, 2)), scratch, out)
