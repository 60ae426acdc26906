"""BM25 over product titles with bm25s (Lucene IDF), optional Snowball stemming."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .artifact import atomic_dir, reads_artifact
from .eval import Run, tiebreak_keys, top_k
from .retriever import Retriever, as_queries


@dataclass
class BM25Config:
    k1: float = 1.2
    b: float = 0.75
    stopwords: str | None = "en"
    stemmer: str | None = None  # a PyStemmer language, e.g. "english"
    method: str = "lucene"
    seed: int = 0  # of the tie-breaking hash


class BM25Retriever(Retriever):
    kind = "bm25"

    def __init__(self, **cfg):
        self.cfg = BM25Config(**cfg)
        self.model = None
        self.product_ids: list[str] = []

    def _stemmer(self):
        if self.cfg.stemmer is None:
            return None
        import Stemmer

        try:
            return Stemmer.Stemmer(self.cfg.stemmer)
        except KeyError:
            raise ValueError(f"unknown stemmer language {self.cfg.stemmer!r}; see "
                             f"Stemmer.algorithms(): {Stemmer.algorithms()}") from None

    def _tokenize(self, texts: list[str], return_ids: bool):
        import bm25s

        return bm25s.tokenize(texts, stopwords=self.cfg.stopwords, stemmer=self._stemmer(),
                              return_ids=return_ids, show_progress=False)

    def _fit(self, dataset, *, out_dir, progress: bool) -> None:
        """Index ``dataset``'s catalog (BM25 trains nothing; ``out_dir`` is unused)."""
        self._fitted_on(dataset)
        self._reindex(dataset, progress)

    def _reindex(self, dataset, progress: bool) -> None:
        """BM25 has nothing trained: the statistics are rebuilt from the catalog."""
        import bm25s

        self.model = bm25s.BM25(k1=self.cfg.k1, b=self.cfg.b, method=self.cfg.method)
        self.model.index(self._tokenize(dataset.titles, True), show_progress=False)
        self._ready(dataset.product_ids)

    def _ready(self, product_ids: list[str]) -> None:
        self.product_ids = product_ids
        self._ids = np.array(product_ids, dtype=object)
        self._keys = tiebreak_keys(product_ids, self.cfg.seed)

    def search(self, queries, k: int = 1000, progress: bool = False) -> Run:
        if self.model is None:
            raise RuntimeError("BM25Retriever.search before fit() or load()")
        queries = as_queries(queries)
        tokens = self._tokenize(list(queries.values()), False)
        run = Run()
        for qid, toks in tqdm(list(zip(queries, tokens)), desc="bm25", disable=not progress):
            idx, scores = self._best(self.model.get_scores(toks), k) if toks else ([], [])
            run.add(qid, self._ids[idx].tolist(), scores)
        return run

    def _best(self, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices and scores of the ``k`` best products with a positive score (unmatched
        products are not retrieved), ties broken by the seeded keys. Ranked among the
        matched products only: a query matching fewer than ``k`` would otherwise rank the
        whole catalog (every unmatched product ties)."""
        pos = np.flatnonzero(scores > 0)
        best = pos[top_k(scores[pos], k, self._keys[pos])]
        return best, scores[best]

    def explain_batch(self, queries: list[str], k: int = 10) -> list[dict]:
        """Per query: the terms it is scored on (after stopwords and stemming) and the products."""
        out = super().explain_batch(queries, k)
        for detail, terms in zip(out, self._tokenize(queries, False)):
            detail["terms"] = list(dict.fromkeys(terms))
        return out

    def highlights(self, title: str, detail: dict) -> list[tuple[int, int]]:
        """The words of ``title`` whose BM25 terms are among the query's."""
        words = list(re.finditer(r"\w+", title))
        terms = set(detail["terms"])
        return [w.span() for w, toks in zip(words, self._tokenize([w.group() for w in words], False))
                if terms.intersection(toks)] if words and terms else []

    def save(self, path, overwrite: bool = False) -> None:
        with atomic_dir(path, self.kind, self.version, overwrite, config=asdict(self.cfg),
                        n_products=len(self.product_ids), **self.catalog_info()) as tmp:
            self.model.save(str(tmp / "bm25s"))
            (tmp / "product_ids.json").write_text(json.dumps(self.product_ids))

    @classmethod
    @reads_artifact
    def _load(cls, path: Path) -> "BM25Retriever":
        import bm25s

        manifest = json.loads((path / "manifest.json").read_text())
        self = cls(**manifest["config"])
        self.model = bm25s.BM25.load(str(path / "bm25s"))
        self._ready(json.loads((path / "product_ids.json").read_text()))
        return self
