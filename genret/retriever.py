"""The shape every retriever shares, and the registry that names them.

``fit(dataset)`` trains and/or indexes, ``search(queries, k) -> Run``, ``save(dir)``,
``load(dir)``. ``queries`` is a mapping of query id -> text (a list of texts is taken
as ids "0", "1", ...).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Mapping
from pathlib import Path

from .artifact import ArtifactError, read_manifest
from .eval import Run

# harness name -> (module, class, default config overrides)
REGISTRY: dict[str, tuple[str, str, dict]] = {
    "bm25": ("genret.bm25", "BM25Retriever", {}),
    "bm25-stem": ("genret.bm25", "BM25Retriever", {"stemmer": "english"}),
    "multispan": ("genret.lexical", "MultispanRetriever", {}),
    "gr-multispan-sft": ("genret.lexical", "MultispanRetriever", {"stage": "sft"}),
    "gr-multispan-dpo": ("genret.lexical", "MultispanRetriever", {"stage": "dpo"}),
    "splade": ("genret.splade", "SpladeRetriever", {}),
    "prosper": ("genret.prosper", "ProsperRetriever", {}),
    "prosper-no-lrn": ("genret.prosper", "ProsperRetriever", {"lrn": "none"}),
    "prosper-lrn-add": ("genret.prosper", "ProsperRetriever", {"lrn": "add"}),
    "prosper-lrn-query": ("genret.prosper", "ProsperRetriever", {"lrn_side": "query"}),
    "prosper-lrn-item": ("genret.prosper", "ProsperRetriever", {"lrn_side": "item"}),
    "prosper-no-lfw": ("genret.prosper", "ProsperRetriever", {"lfw": False}),
    "prosper-maxpool": ("genret.prosper", "ProsperRetriever", {"pooling": "max"}),
    "prosper-minilm": ("genret.prosper", "ProsperRetriever", {"backbone": "minilm"}),
    "prosper-no-norm": ("genret.prosper", "ProsperRetriever", {"norm": "none"}),
    "prosper-all-norm": ("genret.prosper", "ProsperRetriever", {"norm": "all"}),
    "prosper-d-norm": ("genret.prosper", "ProsperRetriever", {"norm": "d"}),
    "prosper-l1-norm": ("genret.prosper", "ProsperRetriever", {"norm": "q-l1"}),
    "dense-zeroshot": ("genret.dense", "DenseRetriever", {}),
    "dense": ("genret.dense", "DenseRetriever", {"train": True}),
    "dense-ivf": ("genret.dense", "DenseRetriever", {"train": True, "index": "ivf", "nprobe": 256}),
    "gr-sid": ("genret.semantic", "SemanticIDRetriever", {}),  # 3x256 residual k-means
    "gr-sid-sft": ("genret.semantic", "SemanticIDRetriever", {"stage": "sft"}),
    "gr-sid-dpo": ("genret.semantic", "SemanticIDRetriever", {"stage": "dpo"}),
    "gr-sid-drop-sft": ("genret.semantic", "SemanticIDRetriever", {"stage": "sft", "prune": "drop"}),
    "gr-sid-drop-dpo": ("genret.semantic", "SemanticIDRetriever", {"stage": "dpo", "prune": "drop"}),
    "gr-sid-adaptive-sft": ("genret.semantic", "SemanticIDRetriever", {"stage": "sft", "prune": "adaptive"}),
    "gr-sid-adaptive-dpo": ("genret.semantic", "SemanticIDRetriever", {"stage": "dpo", "prune": "adaptive"}),
    "semantic-id": ("genret.semantic", "SemanticIDRetriever", {}),
}


class Retriever:
    """Base class: subclasses set ``kind`` and implement fit/search/save/_load."""

    kind = "retriever"
    version = 1
    catalog: str | None = None  # Dataset.catalog_fingerprint() of the catalog it was fitted on
    search_settings: tuple[str, ...] = ()  # config fields a saved retriever may change

    def configure(self, **settings) -> "Retriever":
        """Change search-time settings (``search_settings``) of a fitted or loaded
        retriever, e.g. the beam width; anything else would need refitting."""
        bad = sorted(set(settings) - set(self.search_settings))
        if bad:
            raise ValueError(f"{self.kind}: {bad} cannot change after fitting; search-time "
                             f"settings: {', '.join(self.search_settings) or 'none'}")
        self.cfg = dataclasses.replace(self.cfg, **settings)
        return self

    def fit(self, dataset, **cfg) -> "Retriever":
        raise NotImplementedError

    def search(self, queries, k: int = 1000, progress: bool = False) -> Run:
        raise NotImplementedError

    def save(self, path: str | os.PathLike) -> None:
        raise NotImplementedError

    def explain(self, query: str, k: int = 10) -> dict:
        """One query's products (with titles when the retriever keeps them) and, for
        generative retrievers, what was decoded."""
        r = self.search({"q": query}, k).get("q")
        titles = getattr(self, "titles", None) or {}
        return {"query": query, "products": [
            {"id": p, "score": float(s), **({"title": titles[p]} if p in titles else {})}
            for p, s in zip(r.ids, r.scores)] if r else []}

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Retriever":
        manifest = read_manifest(path, kind=cls.kind, version=cls.version)
        self = cls._load(Path(path))
        self.catalog = manifest.get("catalog")
        return self

    def check_catalog(self, dataset, where: str = "the model") -> None:
        """Refuse a dataset whose catalog differs from the one this retriever was fitted
        on (its index would silently miss or misname products)."""
        if self.catalog is None:
            raise ArtifactError(f"{where} records no catalog fingerprint (saved by an older genret); "
                                "retrain it on this data")
        if self.catalog != dataset.catalog_fingerprint():
            raise ArtifactError(f"{where} was fitted on another catalog than {dataset.name}'s "
                                f"({len(dataset.catalog)} products); retrain it on this data")

    @classmethod
    def _load(cls, path: Path) -> "Retriever":
        raise NotImplementedError


def as_queries(queries) -> dict[str, str]:
    """Normalise queries to {id: text}; reject empty texts with a clear error."""
    if isinstance(queries, str):
        queries = [queries]
    if not isinstance(queries, Mapping):
        queries = {str(i): q for i, q in enumerate(queries)}
    for qid, text in queries.items():
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"query {qid!r} is empty; give a non-empty query string")
    return dict(queries)


def make_retriever(name: str, **cfg) -> Retriever:
    """A fresh, unfitted retriever by harness name (see ``REGISTRY``)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown retriever {name!r}; known: {', '.join(sorted(REGISTRY))}")
    module, cls, defaults = REGISTRY[name]
    return getattr(importlib.import_module(module), cls)(**{**defaults, **cfg})


def load_retriever(path: str | os.PathLike) -> Retriever:
    """Load any saved retriever; its manifest names the class."""
    manifest = read_manifest(path)
    for module, cls, _ in REGISTRY.values():
        klass = getattr(importlib.import_module(module), cls)
        if klass.kind == manifest.get("kind"):
            return klass.load(path)
    raise ArtifactError(f"{path}: kind {manifest.get('kind')!r} is no retriever this genret knows")
