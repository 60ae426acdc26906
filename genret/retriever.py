"""The shape every retriever shares, and the registry that names them.

``fit(dataset)`` trains and/or indexes, ``search(queries, k) -> Run``, ``save(dir)``,
``load(dir)``. ``queries`` is a mapping of query id -> text (a list of texts is taken
as ids "0", "1", ...).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import inspect
import math
import numbers
import os
import random
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .artifact import ArtifactError, read_manifest
from .eval import Run

# harness name -> (module, class, default config overrides)
REGISTRY: dict[str, tuple[str, str, dict]] = {
    "bm25": ("genret.bm25", "BM25Retriever", {}),
    "bm25-stem": ("genret.bm25", "BM25Retriever", {"stemmer": "english"}),
    "multispan": ("genret.lexical", "MultispanRetriever", {}),
    "gr-multispan-sft": ("genret.lexical", "MultispanRetriever", {"stage": "sft"}),
    "gr-multispan-dpo": ("genret.lexical", "MultispanRetriever", {"stage": "dpo"}),
    "splade": ("genret.sparse", "SpladeRetriever", {}),
    "prosper": ("genret.sparse", "ProsperRetriever", {}),
    "prosper-no-lrn": ("genret.sparse", "ProsperRetriever", {"lrn": "none"}),
    "prosper-lrn-add": ("genret.sparse", "ProsperRetriever", {"lrn": "add"}),
    "prosper-lrn-query": ("genret.sparse", "ProsperRetriever", {"lrn_side": "query"}),
    "prosper-lrn-item": ("genret.sparse", "ProsperRetriever", {"lrn_side": "item"}),
    "prosper-no-lfw": ("genret.sparse", "ProsperRetriever", {"lfw": False}),
    "prosper-maxpool": ("genret.sparse", "ProsperRetriever", {"pooling": "max"}),
    "prosper-minilm": ("genret.sparse", "ProsperRetriever", {"backbone": "minilm"}),
    "prosper-no-norm": ("genret.sparse", "ProsperRetriever", {"norm": "none"}),
    "prosper-all-norm": ("genret.sparse", "ProsperRetriever", {"norm": "all"}),
    "prosper-d-norm": ("genret.sparse", "ProsperRetriever", {"norm": "d"}),
    "prosper-l1-norm": ("genret.sparse", "ProsperRetriever", {"norm": "q-l1"}),
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
    # the same channels naming the MiniLM backbone (prefix-LM; genret.minilm): the default since
    # session 7, so these equal the rows above unless a preset is given (resolve_backbone)
    "gr-multispan-minilm-sft": ("genret.lexical", "MultispanRetriever", {"stage": "sft", "backbone": "minilm"}),
    "gr-multispan-minilm-dpo": ("genret.lexical", "MultispanRetriever", {"stage": "dpo", "backbone": "minilm"}),
    "gr-sid-minilm-sft": ("genret.semantic", "SemanticIDRetriever", {"stage": "sft", "backbone": "minilm"}),
    "gr-sid-minilm-dpo": ("genret.semantic", "SemanticIDRetriever", {"stage": "dpo", "backbone": "minilm"}),
    "gr-sid-minilm-drop-sft": ("genret.semantic", "SemanticIDRetriever",
                               {"stage": "sft", "prune": "drop", "backbone": "minilm"}),
    "gr-sid-minilm-drop-dpo": ("genret.semantic", "SemanticIDRetriever",
                               {"stage": "dpo", "prune": "drop", "backbone": "minilm"}),
    "gr-sid-minilm-adaptive-sft": ("genret.semantic", "SemanticIDRetriever",
                                   {"stage": "sft", "prune": "adaptive", "backbone": "minilm"}),
    "gr-sid-minilm-adaptive-dpo": ("genret.semantic", "SemanticIDRetriever",
                                   {"stage": "dpo", "prune": "adaptive", "backbone": "minilm"}),
    "semantic-id": ("genret.semantic", "SemanticIDRetriever", {}),
}


def override_config(cfg, owner: str, overrides: Mapping):
    """``cfg`` (a dataclass) with ``overrides`` applied; nested dataclass fields take a
    mapping merged into them. Unknown keys raise one ValueError naming the valid ones;
    the dataclass's own checks (``__post_init__``) run on the result."""
    valid = {f.name for f in dataclasses.fields(cfg)}
    bad = sorted(set(overrides) - valid)
    if bad:
        raise ValueError(f"{owner}: unknown setting(s) {', '.join(bad)}; valid: {', '.join(sorted(valid))}")
    changes = {}
    for key, value in overrides.items():
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            value = override_config(current, f"{owner}.{key}", value)
        changes[key] = value
    return dataclasses.replace(cfg, **changes)


@contextlib.contextmanager
def caller_rng():
    """Give back the caller's global random states (Python's, numpy's and, once loaded,
    torch's on CPU and initialised CUDA devices) on exit, however the block seeds them:
    training seeds them (the HF Trainer calls ``set_seed``)."""
    py, np_state = random.getstate(), np.random.get_state()
    torch = sys.modules.get("torch")
    devices = list(range(torch.cuda.device_count())) if torch and torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices) if torch else contextlib.nullcontext():
            yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)


class Retriever:
    """Base class: subclasses set ``kind`` and implement _fit/search/save/_load."""

    kind = "retriever"
    version = 1
    catalog: str | None = None  # Dataset.catalog_fingerprint() of the catalog it indexes
    trained_catalog: str | None = None  # ... of the one it was trained on (None: the same)
    reindexed: dict | None = None  # products added/removed/kept by the last reindex()
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

    def fit(self, dataset, *, out_dir: str | os.PathLike | None = None, progress: bool = False,
            **overrides) -> "Retriever":
        """Train and/or index on ``dataset``: the one fit of every retriever.

        ``overrides`` replace config fields (a dict for a nested config, e.g.
        ``train={"max_steps": 50}``, merges into it); an unknown key is refused with the
        valid ones. ``out_dir`` holds training state (a re-run with the same settings and
        data resumes there; None: a temporary folder); ``progress`` shows progress bars."""
        if overrides:
            self.cfg = override_config(self.cfg, self.kind, overrides)
        with caller_rng():
            self._fit(dataset, out_dir=out_dir, progress=progress)
        return self

    def _fit(self, dataset, *, out_dir, progress: bool) -> None:
        raise NotImplementedError

    def search(self, queries, k: int = 1000, progress: bool = False) -> Run:
        raise NotImplementedError

    def reindex(self, dataset, progress: bool = False) -> "Retriever":
        """Index ``dataset``'s catalog with the trained model unchanged: rebuild what
        depends on the catalog (products added, removed or retitled), no training. The
        catalog it was trained on stays recorded as ``trained_catalog``."""
        old, new = set(getattr(self, "product_ids", None) or []), set(dataset.catalog)
        if not old:
            raise RuntimeError(f"{type(self).__name__}.reindex before fit() or load()")
        if not new:
            raise ValueError(f"{dataset.name}: empty catalog; nothing to index")
        self._reindex(dataset, progress)
        self.trained_catalog = self.trained_catalog or self.catalog
        self.catalog = dataset.catalog_fingerprint()
        self.reindexed = {"added": len(new - old), "removed": len(old - new), "kept": len(new & old)}
        return self

    def _reindex(self, dataset, progress: bool) -> None:
        raise NotImplementedError

    def _fitted_on(self, dataset) -> None:
        """Record ``dataset``'s catalog as the one this retriever is trained on and indexes."""
        self.catalog, self.trained_catalog, self.reindexed = dataset.catalog_fingerprint(), None, None

    def catalog_info(self) -> dict:
        """Manifest fields naming the catalog indexed, the one trained on and the last reindex."""
        info = {"catalog": self.catalog, "trained_catalog": self.trained_catalog or self.catalog}
        return info | ({"reindexed": self.reindexed} if self.reindexed else {})

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        """Save atomically to ``path``: absent, empty, or an artifact of this kind
        (``overwrite``: also one of another kind); never a user's folder."""
        raise NotImplementedError

    def explain(self, query: str, k: int = 10) -> dict:
        """One query's products (with titles when the retriever keeps them) and what the
        retriever decoded or weighted for it (see :meth:`explain_batch`)."""
        return self.explain_batch([query], k)[0]

    def explain_batch(self, queries: list[str], k: int = 10) -> list[dict]:
        """:meth:`explain` of several queries with one ``search`` call; generative, sparse
        and BM25 retrievers add what they decoded, weighted or matched."""
        run = self.search({str(i): q for i, q in enumerate(queries)}, k)
        return [{"query": q, "products": self._products(r.ids, r.scores) if (r := run.get(str(i))) else []}
                for i, q in enumerate(queries)]

    def _products(self, ids, scores) -> list[dict]:
        titles = getattr(self, "titles", None) or {}
        return [{"id": p, "score": float(s), **({"title": titles[p]} if p in titles else {})}
                for p, s in zip(ids, scores)]

    def highlights(self, title: str, detail: dict) -> list[tuple[int, int]]:
        """Character ranges [start, end) of ``title`` that one query's :meth:`explain`
        ``detail`` matched, in order; none for a retriever that matches no literal text."""
        return []

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Retriever":
        manifest = read_manifest(path, kind=cls.kind, version=cls.version)
        self = cls._load(Path(path))
        self.catalog = manifest.get("catalog")
        self.trained_catalog = manifest.get("trained_catalog")
        self.reindexed = manifest.get("reindexed")
        return self

    def check_catalog(self, dataset, where: str = "the model", model: str | None = None,
                      data: str | None = None) -> None:
        """Refuse a dataset whose catalog differs from the one this retriever indexes (its
        index would silently miss or misname products); the error names the ``genret
        index`` command (with ``model`` and ``data`` filled in when given) that fixes it."""
        fix = (f"re-index it with `genret index --model {model or 'M'} --data {data or 'D'} "
               "--out M2` (or retrain it on this data)")
        if self.catalog is None:
            raise ArtifactError(f"{where} records no catalog fingerprint (saved by an older genret); {fix}")
        if self.catalog != dataset.catalog_fingerprint():
            raise ArtifactError(f"{where} was fitted on another catalog than {dataset.name}'s "
                                f"({len(dataset.catalog)} products); {fix}")

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


def _integral(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


# annotation -> (what the error says is expected, test); numpy numbers count as numbers
_CHECKS = {bool: ("a boolean (true or false)", lambda v: isinstance(v, bool)),
           int: ("an integer", _integral),
           float: ("a float", _real),
           str: ("a string", lambda v: isinstance(v, str)),
           list: ("a list", lambda v: isinstance(v, (list, tuple))),
           tuple: ("a list", lambda v: isinstance(v, (list, tuple))),
           dict: ("a mapping", lambda v: isinstance(v, Mapping))}


def _expected(kind) -> str:
    origin, args = typing.get_origin(kind) or kind, typing.get_args(kind)
    if origin is list and args == (str,):
        return "a list of strings"
    return _CHECKS[origin][0] if origin in _CHECKS else str(kind)


def _setting(key: str, value, kind):
    """``value`` checked against the annotation ``kind``; numbers may come as strings
    ("1e-3", which YAML leaves a string). Raises "key: expected ..., got ..."."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        kinds = [k for k in typing.get_args(kind) if k is not type(None)]
        nullable = len(kinds) < len(typing.get_args(kind))
        if value is None and nullable:
            return None
        for k in kinds:
            try:
                return _setting(key, value, k)
            except ValueError:
                pass
        raise ValueError(f"{key}: expected {' or '.join(map(_expected, kinds))}"
                         f"{' or null' if nullable else ''}, got {value!r}")
    origin, args = typing.get_origin(kind) or kind, typing.get_args(kind)
    if origin not in _CHECKS:
        return value
    if origin is str and isinstance(value, os.PathLike):  # backbone=Path(...) from Python
        value = os.fspath(value)
    if origin in (int, float) and isinstance(value, str):
        try:
            value = origin(value.strip())
        except ValueError:
            pass
    if not _CHECKS[origin][1](value) or (origin is list and not all(isinstance(x, args) for x in value)):
        want = "a finite float" if origin is float and isinstance(value, float) else _expected(kind)
        raise ValueError(f"{key}: expected {want}, got {value!r}")
    if origin in (list, tuple):
        return origin(value)
    if origin in (int, float):  # as plain Python numbers (numpy ones do not serialise to JSON)
        return int(value) if _integral(value) else float(value)
    return value


def check_settings(config, settings: Mapping, owner: str, extra: Mapping | None = None,
                   prefix: str = "") -> dict:
    """``settings`` checked against the fields (and field types) of the dataclass
    ``config``; a nested dataclass field (e.g. ``train``) takes a mapping, checked the same
    way. ``extra`` adds keyword names with their annotations. Returns the settings with
    numbers parsed; an unknown key or a wrong type is a one-line ValueError naming it."""
    names = {f.name for f in dataclasses.fields(config)}
    kinds = {k: v for k, v in typing.get_type_hints(config).items() if k in names} | dict(extra or {})
    out = {}
    for key, value in settings.items():
        kind = kinds.get(key)
        nested = dataclasses.is_dataclass(kind)
        if kind is None or (isinstance(value, Mapping) and value and not nested
                            and (typing.get_origin(kind) or kind) is not dict):
            bad = key if kind is None else f"{key}.{next(iter(value))}"
            near = difflib.get_close_matches(key, kinds, n=1) if kind is None else []
            raise ValueError(f"unknown setting {prefix + bad!r} for {owner}"
                             + (f" (did you mean {prefix + near[0]!r}?)" if near else "")
                             + f"; known: {', '.join(prefix + k for k in sorted(kinds))}")
        if nested and isinstance(value, Mapping):
            out[key] = check_settings(kind, value, owner, prefix=f"{prefix}{key}.")
        elif nested and not isinstance(value, kind):
            raise ValueError(f"{prefix}{key}: expected settings as {prefix}{key}.NAME=VALUE, got {value!r}")
        else:
            out[key] = value if nested else _setting(prefix + key, value, kind)
    return out


def _retriever_class(name: str) -> type[Retriever]:
    if name not in REGISTRY:
        raise ValueError(f"unknown retriever {name!r}; known: {', '.join(sorted(REGISTRY))}")
    module, cls, _ = REGISTRY[name]
    return getattr(importlib.import_module(module), cls)


def make_retriever(name: str, **cfg) -> Retriever:
    """A fresh, unfitted retriever by harness name (see ``REGISTRY``). Every setting is
    checked first (:func:`check_settings`): an unknown key or a wrong type is a ValueError."""
    klass = _retriever_class(name)
    config = getattr(klass, "config_class", None) or type(klass().cfg)
    params = inspect.signature(klass.__init__).parameters
    extra = {k: v for k, v in typing.get_type_hints(klass.__init__).items()
             if k in params and params[k].kind is not inspect.Parameter.VAR_KEYWORD}
    return klass(**check_settings(config, {**REGISTRY[name][2], **cfg}, name, extra))


def _disagreement(retriever: Retriever, name: str) -> str | None:
    """Which of registry ``name``'s kind and settings a loaded ``retriever`` lacks, or None."""
    if _retriever_class(name).kind != retriever.kind:
        return f"kind {_retriever_class(name).kind!r}"
    for key, want in REGISTRY[name][2].items():
        have = getattr(retriever.cfg, key, getattr(retriever, key, None))
        if key not in retriever.search_settings and have != want:
            return f"{key} {want!r}, not {have!r}"
    return None


def load_retriever(path: str | os.PathLike, name: str | None = None) -> Retriever:
    """Load any saved retriever; its manifest names the class. With ``name`` (a registry
    name, e.g. the ``--retriever`` of ``genret eval``) the saved one must be of that kind
    and have that entry's settings, else an ArtifactError."""
    manifest = read_manifest(path, verify=False)  # klass.load verifies every file
    kind = manifest.get("kind")
    if name is not None and _retriever_class(name).kind != kind:
        names = [n for n in REGISTRY if _retriever_class(n).kind == kind]
        raise ArtifactError(f"{path} holds a {kind!r} retriever, not {name!r}; leave --retriever out"
                            + (f" or use one of: {', '.join(names)}" if names else ""))
    for module, cls, _ in REGISTRY.values():
        klass = getattr(importlib.import_module(module), cls)
        if klass.kind == kind:
            retriever = klass.load(path)
            if name is not None and (why := _disagreement(retriever, name)):
                fits = [n for n in REGISTRY if not _disagreement(retriever, n)]
                raise ArtifactError(f"{path} is no {name!r} retriever ({name} has {why}); leave "
                                    f"--retriever out or use one it is: {', '.join(fits)}")
            return retriever
    raise ArtifactError(f"{path}: kind {kind!r} is no retriever this genret knows")
