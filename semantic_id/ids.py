"""From codes to IDs: pruning (seed 001), disambiguation (dedup) level, and the flat token space.

An ID is a sequence of (level, code) pairs, levels 1-based: the kept quantiser levels in
order, then, for items whose kept pairs are shared with other items, a disambiguation
pair at level L+1 (code 0, 1, 2, ... within the group, ordered by a seeded hash of the
item id, never by catalog position), then the end-of-ID token, which makes variable-length
IDs prefix-free.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .artifact import SemanticIDError
from .diagnostics import dominant_level, level_counts

PRUNE_MODES = ("none", "drop", "adaptive")
EOS = 0
EOS_TOKEN = "<eos_id>"


class TokenSpace:
    """Flat vocabulary: index 0 is ``<eos_id>``, then level 1 codes 0..K-1, level 2, ...,
    level L, then the D codes of the disambiguation level L+1. Token strings ``<L{level}_{code}>``."""

    def __init__(self, levels: int, codebook: int, dedup_size: int):
        self.levels, self.codebook, self.dedup_size = int(levels), int(codebook), int(dedup_size)
        self.sizes = np.array([codebook] * levels + [dedup_size], dtype=np.int64)  # per level 1..L+1
        self.offsets = 1 + np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.vocab_size = int(1 + self.sizes.sum())

    def index(self, level, code):
        """Flat index of (level, code); vectorised over arrays."""
        level, code = np.asarray(level), np.asarray(code)
        if np.any((level < 1) | (level > self.levels + 1)) or np.any((code < 0) | (code >= self.sizes[level - 1])):
            raise SemanticIDError(f"(level, code) outside the token space {self.describe()}")
        return self.offsets[level - 1] + code

    def pair(self, index: int) -> tuple[int, int] | None:
        """(level, code) of a flat index; None for ``<eos_id>``."""
        index = int(index)
        if not 0 <= index < self.vocab_size:
            raise SemanticIDError(f"token index {index} outside 0..{self.vocab_size - 1}")
        if index == EOS:
            return None
        level = int(np.searchsorted(self.offsets, index, side="right"))
        return level, index - int(self.offsets[level - 1])

    def token(self, index: int) -> str:
        p = self.pair(index)
        return EOS_TOKEN if p is None else f"<L{p[0]}_{p[1]}>"

    def tokens(self) -> list[str]:
        """All token strings in index order (to add as special tokens to a tokenizer)."""
        return [EOS_TOKEN] + [f"<L{lv}_{c}>" for lv, size in enumerate(self.sizes, start=1) for c in range(size)]

    def to_pairs(self, seq) -> list[tuple[int, int]]:
        """(level, code) pairs of a flat sequence, up to ``<eos_id>``."""
        out = []
        for t in seq:
            p = self.pair(t)
            if p is None:
                break
            out.append(p)
        return out

    def describe(self) -> str:
        return f"(levels 1..{self.levels} x {self.codebook} codes, level {self.levels + 1} x {self.dedup_size})"


def check_top_k(top_k: int, codebook: int) -> None:
    if not 1 <= int(top_k) <= codebook:
        raise SemanticIDError(f"top_k must be in 1..{codebook} (the codebook size), got {top_k}")


def pruned_codes(codes: np.ndarray, codebook: int, top_k: int, level: int) -> tuple[int, ...]:
    """The ``top_k`` most frequent codes of ``level`` (1-based; ties by code): what
    adaptive pruning removes there."""
    check_top_k(top_k, codebook)
    counts = level_counts(codes[:, level - 1:level], codebook)[0]
    return tuple(sorted(int(c) for c in np.argsort(-counts, kind="stable")[:top_k]))


def prune_mask(codes: np.ndarray, codebook: int, prune: str = "none", top_k: int | None = None,
               level: int | None = None, frozen: tuple[int, ...] | None = None
               ) -> tuple[np.ndarray, int | None]:
    """Which (item, level) pairs an ID keeps, and the pruned level (1-based; None for "none").

    ``drop`` removes ``level`` (default: the dominant one, see ``dominant_level``) for every
    item; ``adaptive`` removes it only for items whose token there is among that level's
    ``top_k`` most frequent (ties by code), or among the codes ``frozen`` when given (the
    set chosen when the IDs were first built, so that added items follow the same rule).
    """
    n, L = codes.shape
    keep = np.ones((n, L), dtype=bool)
    if prune not in PRUNE_MODES:
        raise SemanticIDError(f"unknown prune mode {prune!r}; choose one of {', '.join(PRUNE_MODES)}")
    if prune == "none":
        return keep, None
    level = dominant_level(codes, codebook) if level is None else int(level)
    if not 1 <= level <= L:
        raise SemanticIDError(f"pruned level must be in 1..{L}, got {level}")
    if prune == "drop":
        if L == 1:
            raise SemanticIDError("cannot drop the only level; use levels >= 2 or prune='adaptive'")
        keep[:, level - 1] = False
    else:
        if top_k is None and frozen is None:
            raise SemanticIDError("prune='adaptive' needs top_k")
        top = pruned_codes(codes, codebook, top_k, level) if frozen is None else frozen
        keep[:, level - 1] = ~np.isin(codes[:, level - 1], top)
    return keep, level


def tiebreak_keys(item_ids: list[str], seed: int) -> np.ndarray:
    """Seeded hash of each item id (uint64): the order inside a collision group. Part of
    the ID format, so not genret's ranking tie-break (``genret.eval.tiebreak_keys``, another
    hash): with that one most collided items would get other IDs (measured on the test
    fixture: 340 of 399), and this package imports nothing of genret."""
    return np.array([int.from_bytes(hashlib.sha1(f"{seed}\0{i}".encode()).digest()[:8], "big")
                     for i in item_ids], dtype=np.uint64)


def disambiguate(codes: np.ndarray, keep: np.ndarray, tiebreak: np.ndarray) -> tuple[np.ndarray, float]:
    """Disambiguation code per item (-1 = unique, no extra token) and the collision rate
    (fraction of items whose kept (level, code) pairs are shared with another item)."""
    keys = np.where(keep, codes, -1)
    _, group, sizes = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    group = group.reshape(-1)
    order = np.lexsort((np.arange(len(group)), tiebreak, group))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.empty(len(group), dtype=np.int64)
    rank[order] = np.arange(len(group)) - starts[group[order]]
    shared = sizes[group] > 1
    return np.where(shared, rank, -1).astype(np.int32), float(shared.mean())


def extend_dedup(codes: np.ndarray, keep: np.ndarray, dedup: np.ndarray, new: np.ndarray,
                 tiebreak: np.ndarray) -> np.ndarray:
    """Disambiguation codes once the items ``new`` (a bool mask) join items whose codes
    ``dedup`` already fixed (-1 = none; entries of new items are ignored). Old items keep
    theirs, so their IDs do not change; a new item whose kept pairs are shared gets the
    smallest code still free in its group (new items in the order of ``tiebreak``); a new
    item alone in its group gets none."""
    keys = np.where(keep, codes, -1)
    _, group, sizes = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    group = group.reshape(-1)
    out = np.where(new, -1, dedup).astype(np.int32)
    used: dict[int, set[int]] = {}
    for i in np.flatnonzero(~new & (out >= 0)):
        used.setdefault(int(group[i]), set()).add(int(out[i]))
    for i in sorted(np.flatnonzero(new & (sizes[group] > 1)), key=lambda i: (group[i], tiebreak[i], i)):
        taken = used.setdefault(int(group[i]), set())
        out[i] = next(c for c in range(len(taken) + 1) if c not in taken)
        taken.add(int(out[i]))
    return out


def id_sequences(codes: np.ndarray, keep: np.ndarray, dedup: np.ndarray, space: TokenSpace
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Flat token sequences (CSR): (tokens, offsets); item i is tokens[offsets[i]:offsets[i+1]]."""
    n, L = codes.shape
    mat = np.full((n, L + 2), -1, dtype=np.int64)
    mat[:, :L] = np.where(keep, space.offsets[:L] + codes, -1)
    mat[:, L] = np.where(dedup >= 0, space.offsets[L] + dedup, -1)
    mat[:, L + 1] = EOS
    valid = mat >= 0
    offsets = np.concatenate([[0], np.cumsum(valid.sum(1))])
    return mat[valid].astype(np.int32), offsets.astype(np.int64)
