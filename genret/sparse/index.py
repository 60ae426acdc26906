"""The term-major inverted index (scipy CSR, vocabulary × products), query-term pruning and
the # FLOPS figure; torch-free."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..eval import tiebreak_keys, top_k


def prune_top_terms(m: sp.csr_matrix, n: int | None) -> sp.csr_matrix:
    """Keep the ``n`` largest weights of every row (ties by term id); ``None`` keeps all."""
    m = sp.csr_matrix(m)
    if n is None:
        return m
    rows, cols, vals = [], [], []
    for i in range(m.shape[0]):
        a, b = m.indptr[i], m.indptr[i + 1]
        c, v = m.indices[a:b], m.data[a:b]
        if len(v) > n:
            keep = np.lexsort((c, -v))[:n]
            c, v = c[keep], v[keep]
        rows.append(np.full(len(c), i))
        cols.append(c)
        vals.append(v)
    out = sp.csr_matrix((np.concatenate(vals) if vals else np.zeros(0, m.dtype),
                         (np.concatenate(rows) if rows else np.zeros(0, int),
                          np.concatenate(cols) if cols else np.zeros(0, int))), shape=m.shape,
                        dtype=m.dtype)
    out.sort_indices()
    return out


def flops_figure(Q: sp.spmatrix, D: sp.spmatrix) -> float:
    """The "# FLOPS" of SPLADE/PROSPER: the average, over all (query, product) pairs, of the
    number of terms both have non-zero = Σ_j P(q_j ≠ 0)·P(d_j ≠ 0). Q: queries × V,
    D: products × V."""
    Q, D = sp.csr_matrix(Q), sp.csr_matrix(D)
    if Q.shape[0] == 0 or D.shape[0] == 0:
        return 0.0
    qf = np.bincount(Q.indices[Q.data != 0], minlength=Q.shape[1]) / Q.shape[0]
    df = np.bincount(D.indices[D.data != 0], minlength=D.shape[1]) / D.shape[0]
    return float(qf @ df)


class InvertedIndex:
    """Term-major postings: a CSR matrix of shape vocabulary × products (row j = the
    products with term j and their weights)."""

    def __init__(self, postings: sp.csr_matrix, product_ids: list[str], seed: int = 0):
        self.postings = sp.csr_matrix(postings, dtype=np.float32)
        self.postings.sort_indices()
        self.product_ids = list(product_ids)
        if self.postings.shape[1] != len(self.product_ids):
            raise ValueError(f"postings cover {self.postings.shape[1]} products but "
                             f"{len(self.product_ids)} ids were given")
        self.keys = tiebreak_keys(self.product_ids, seed)

    @classmethod
    def from_documents(cls, D: sp.spmatrix, product_ids: list[str], seed: int = 0) -> "InvertedIndex":
        """From a products × vocabulary matrix."""
        return cls(sp.csr_matrix(D).T.tocsr(), product_ids, seed)

    @property
    def documents(self) -> sp.csr_matrix:
        return self.postings.T.tocsr()

    def search(self, Q: sp.spmatrix, k: int, batch_size: int = 256):
        """For each query row: (product indices, scores) of the top k among the products
        that share a term with it (seeded tie-break)."""
        Q = sp.csr_matrix(Q, dtype=np.float32)
        if Q.shape[1] != self.postings.shape[0]:
            raise ValueError(f"queries have {Q.shape[1]} terms but the index {self.postings.shape[0]}")
        out = []
        n = self.postings.shape[1]
        for s in range(0, Q.shape[0], batch_size):
            S = (Q[s:s + batch_size] @ self.postings).tocsr()  # term-at-a-time accumulation
            for i in range(S.shape[0]):
                a, b = S.indptr[i], S.indptr[i + 1]
                scores = np.full(n, -np.inf)
                scores[S.indices[a:b]] = S.data[a:b]
                idx = top_k(scores, k, self.keys, valid_only=True)
                out.append((idx, scores[idx]))
        return out

    def save(self, d: Path) -> None:
        np.save(d / "index_data.npy", self.postings.data)
        np.save(d / "index_indices.npy", self.postings.indices)
        np.save(d / "index_indptr.npy", self.postings.indptr)
        (d / "product_ids.json").write_text(json.dumps(self.product_ids))

    @classmethod
    def load(cls, d: Path, shape: tuple[int, int], seed: int = 0) -> "InvertedIndex":
        data, indices, indptr = (np.load(d / f"index_{n}.npy", allow_pickle=False)
                                 for n in ("data", "indices", "indptr"))
        ids = json.loads((d / "product_ids.json").read_text())
        return cls(sp.csr_matrix((data, indices, indptr), shape=tuple(shape)), ids, seed)

    def stats(self) -> dict:
        D = self.documents
        nnz = np.diff(D.indptr)
        return {"products": D.shape[0], "vocab": D.shape[1], "postings": int(D.nnz),
                "terms_per_product": float(nnz.mean()) if len(nnz) else 0.0,
                "active_terms": int((np.diff(self.postings.indptr) > 0).sum())}
