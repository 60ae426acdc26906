"""``PrefixTrie``: a trie over integer sequences stored as compact (CSR) numpy arrays.

Nodes are numbered breadth-first, root 0; the children of node v are nodes
``indptr[v]+1 .. indptr[v+1]`` (edge e leads to node e+1) with sorted ``labels``. Sequences
are kept in lexicographic order (``order``), so the sequences under node v are
``order[lo[v]:hi[v]]``. Sentinel: node -1 = the prefix is not in the trie.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .artifact import SemanticIDError, atomic_dir, load_npy, read_manifest

TRIE_KIND, TRIE_VERSION = "semantic_id.trie", 1
_ARRAYS = ("indptr", "labels", "lo", "hi", "order")


def _pad(seqs: list) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    mat = np.full((len(seqs), int(lengths.max(initial=0))), -1, dtype=np.int64)
    for i, s in enumerate(seqs):
        mat[i, :len(s)] = s
    return mat, lengths


class PrefixTrie:
    """Trie of variable-length sequences of non-negative ints (e.g. flat ID tokens)."""

    def __init__(self, indptr, labels, lo, hi, order):
        self.indptr, self.labels, self.lo, self.hi, self.order = (
            np.asarray(a, dtype=np.int64) for a in (indptr, labels, lo, hi, order))
        for a in (self.indptr, self.labels, self.lo, self.hi, self.order):
            a.flags.writeable = False
        n_nodes = len(self.lo)
        if not (len(self.indptr) == n_nodes + 1 == len(self.hi) + 1 == len(self.labels) + 2
                and self.indptr[-1] == len(self.labels)):
            raise SemanticIDError("inconsistent trie arrays; rebuild the trie")
        parent = np.repeat(np.arange(n_nodes), np.diff(self.indptr))
        self._vocab = int(self.labels.max(initial=-1)) + 1
        self._edge_key = parent * self._vocab + self.labels  # globally sorted

    @classmethod
    def build(cls, sequences) -> PrefixTrie:
        """Build from a list of integer sequences (sequence i gets item index i)."""
        seqs = [np.asarray(s, dtype=np.int64).reshape(-1) for s in sequences]
        if any(len(s) and s.min() < 0 for s in seqs):
            raise SemanticIDError("trie tokens must be non-negative integers")
        mat, lengths = _pad(seqs)
        order = np.lexsort(mat.T[::-1]) if mat.shape[1] else np.arange(len(seqs))
        mat, lengths = mat[order], lengths[order]
        n = len(seqs)
        node = np.zeros(n, dtype=np.int64)  # node of each sorted row at the current depth
        lo, hi, labels, parents = [0], [n], [], []
        n_nodes = 1
        for d in range(mat.shape[1]):
            rows = np.nonzero(lengths > d)[0]
            par, tok = node[rows], mat[rows, d]
            new = np.ones(len(rows), dtype=bool)
            new[1:] = (par[1:] != par[:-1]) | (tok[1:] != tok[:-1])
            ids = n_nodes + np.cumsum(new) - 1
            node[rows] = ids
            starts = np.nonzero(new)[0]
            ends = np.concatenate([starts[1:], [len(rows)]]) - 1
            lo.append(rows[starts])
            hi.append(rows[ends] + 1)
            labels.append(tok[starts])
            parents.append(par[starts])
            n_nodes += len(starts)
        parents = np.concatenate([np.zeros(0, np.int64), *parents])
        indptr = np.concatenate([[0], np.cumsum(np.bincount(parents, minlength=n_nodes))])
        return cls(indptr, np.concatenate([np.zeros(0, np.int64), *labels]),
                   np.concatenate([np.atleast_1d(x) for x in lo]),
                   np.concatenate([np.atleast_1d(x) for x in hi]), order)

    @property
    def n_nodes(self) -> int:
        return len(self.lo)

    def __len__(self) -> int:
        return len(self.order)

    def nodes(self, prefixes) -> np.ndarray:
        """Node of each prefix (-1 if absent), walking all prefixes in lockstep."""
        mat, lengths = _pad([np.asarray(p, dtype=np.int64).reshape(-1) for p in prefixes])
        node = np.zeros(len(mat), dtype=np.int64)
        for d in range(mat.shape[1]):
            node = np.where(lengths > d, self.step(node, mat[:, d]), node)
        return node

    def step(self, nodes, tokens) -> np.ndarray:
        """The child of each node along its token, for many nodes at once (-1: no such
        child; node -1 stays -1)."""
        node = np.asarray(nodes, dtype=np.int64).reshape(-1)
        tok = np.asarray(tokens, dtype=np.int64).reshape(-1)
        key = node * self._vocab + tok
        e = np.searchsorted(self._edge_key, key)
        ok = (node >= 0) & (tok >= 0) & (tok < self._vocab) & (e < len(self._edge_key))
        ok[ok] = self._edge_key[e[ok]] == key[ok]
        return np.where(ok, e + 1, -1)

    def children_batch(self, nodes) -> tuple[np.ndarray, np.ndarray]:
        """Next tokens of many nodes at once, as ``(rows, tokens)``: row ``i`` of ``rows``
        names the node ``nodes[i]`` the token follows (tokens sorted within a row)."""
        node = np.asarray(nodes, dtype=np.int64).reshape(-1)
        v = np.maximum(node, 0)
        first = self.indptr[v]
        n = np.where(node >= 0, self.indptr[v + 1] - first, 0)
        rows = np.repeat(np.arange(len(node)), n)
        edges = np.arange(int(n.sum())) + np.repeat(first - (np.cumsum(n) - n), n)
        return rows, self.labels[edges]

    def node(self, prefix) -> int:
        return int(self.nodes([prefix])[0])

    def children(self, node: int) -> np.ndarray:
        """Sorted next tokens below a node (empty for -1 or a leaf)."""
        if node < 0:
            return self.labels[:0]
        return self.labels[self.indptr[node]:self.indptr[node + 1]]

    @staticmethod
    def _is_batch(x) -> bool:
        if isinstance(x, np.ndarray):
            return x.ndim == 2
        return len(x) > 0 and not np.isscalar(x[0])

    def next_tokens(self, prefixes):
        """Allowed next tokens: for one prefix (a 1-D sequence, ``[]`` = the root) a sorted
        array; for a batch (list of sequences or a 2-D array) a list of arrays."""
        if self._is_batch(prefixes):
            nodes = self.nodes(prefixes)
            rows, tokens = self.children_batch(nodes)
            return np.split(tokens, np.searchsorted(rows, np.arange(1, len(nodes))))
        return self.children(self.node(prefixes))

    def items(self, prefix) -> np.ndarray:
        """Indices of the sequences that start with ``prefix`` (one, for a complete ID)."""
        v = self.node(prefix)
        return self.order[:0] if v < 0 else np.sort(self.order[self.lo[v]:self.hi[v]])

    def save(self, path: str | os.PathLike) -> None:
        with atomic_dir(path, TRIE_KIND, TRIE_VERSION, n_sequences=len(self), n_nodes=self.n_nodes) as tmp:
            for name in _ARRAYS:
                np.save(tmp / f"{name}.npy", getattr(self, name))

    @classmethod
    def load(cls, path: str | os.PathLike) -> PrefixTrie:
        read_manifest(path, TRIE_KIND, TRIE_VERSION)
        return cls(*(load_npy(Path(path) / f"{name}.npy") for name in _ARRAYS))
