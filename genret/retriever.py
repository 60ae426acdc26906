"""The shape every retriever shares, and the registry that names them.

``fit(dataset)`` trains and/or indexes, ``search(queries, k) -> Run``, ``save(dir)``,
``load(dir)``. ``queries`` is a mapping of query id -> text (a list of texts is taken
as ids "0", "1", ...).
"""

from __future__ import annotations

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
}


class Retriever:
    """Base class: subclasses set ``kind`` and implement fit/search/save/_load."""

    kind = "retriever"
    version = 1

    def fit(self, dataset, **cfg) -> "Retriever":
        raise NotImplementedError

    def search(self, queries, k: int = 1000, progress: bool = False) -> Run:
        raise NotImplementedError

    def save(self, path: str | os.PathLike) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Retriever":
        read_manifest(path, kind=cls.kind, version=cls.version)
        return cls._load(Path(path))

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
