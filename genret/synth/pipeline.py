"""The orchestration of the synthesis: its config, the offline retrieval pipeline, the
rewriter (SFT pairs, sampling, DPO pairs), the assessment of candidates with the
rewards of :mod:`.rewards`, and :func:`synthesize`, which writes the outputs."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..artifact import atomic_dir
from ..backbone import EMBEDDED
from ..data import BUCKETS, Dataset, terms
from ..eval import Run, rrf
from ..retriever import caller_rng
from ..training import TrainConfig, check_config, dpo, sft, work_dir
from .rewards import (REWARDS, agreement, combined_reward, diversity, filter_products,
                      incremental_recall, relevance, retrieval_gain, shift_stats, well_formed)


PROMPT = "<|query|> {query}<|query|>"  # the rewrite continues like a query of pretraining
PAIR_COLUMNS = ("query", "product_id", "grade", "rewrite", "channels", "score", "reward")
REWRITER_DPO_LR = 5e-4  # the rewriter's DPO learning rate (measured on the embedded LM; TrainConfig's default is MiniLM's)


@dataclass
class SynthConfig:
    """Every knob of the synthesis; the defaults run on a CPU."""

    # the rewriter's LM: an HF causal LM name or path, "minilm" (the packaged MiniLM prefix-LM),
    # a saved rewriter, or "embedded"/None: genret's embedded LM of ``preset``, the default here
    # (unlike the retrieval channels, the rewriter has not been measured on MiniLM yet)
    backbone: str | None = None
    preset: str | None = "small"  # size of the embedded LM; None with any other backbone
    channels: list[str] = field(default_factory=lambda: ["bm25-stem", "dense-zeroshot"])
    queries: int | None = 200  # train queries to rewrite, tail bucket first (None = all)
    candidates: int = 8  # rewrites sampled per query
    decoding: str = "sample"  # "sample" (top-p) or "beam" (the N best beams)
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 24
    decode_batch_size: int = 16
    sft_pairs: int | None = 20000  # cap on the mined (A -> B) SFT pairs; 0 = no SFT (a saved rewriter)
    dpo_queries: int = 200  # train queries whose candidates give DPO pairs (0 = no DPO)
    k: int = 100  # depth of each channel's and the fused ranking
    rrf_c: float = 60.0
    judge_depth: int = 10  # fused products judged by the relevance reward
    agree_k: int = 10  # a channel retrieves a product when it ranks it in its top agree_k
    min_agree: int = 2  # channels that must agree for a pair to be kept
    anchor_k: int | None = 100  # and the original query's fused top anchor_k must hold it (None: off)
    max_pairs_per_rewrite: int = 5
    min_reward: float = 0.0  # only rewrites with a combined reward above this give pairs
    weights: dict = field(default_factory=lambda: {"gain": 1.0, "incremental": 1.0, "relevance": 1.0,
                                                   "diversity": 0.5, "form": 0.5})
    max_words: int = 12  # well-formedness: at most this many words
    min_known: float = 0.5  # well-formedness: at least this share of known words
    max_repeat: int = 2  # well-formedness: no word more often than this
    shift_embeddings: bool = True  # MiniLM centroid / nearest-neighbour similarity
    shift_sample: int = 2000  # real queries embedded for the shift check
    compare_sft: bool = True  # with DPO, also score the SFT rewriter on the same queries
    seed: int = 0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(dpo_learning_rate=REWRITER_DPO_LR))

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):
            self.train = TrainConfig(**{"dpo_learning_rate": REWRITER_DPO_LR, **self.train})
        if isinstance(self.channels, str):
            self.channels = [c.strip() for c in self.channels.split(",") if c.strip()]
        if self.decoding not in ("sample", "beam"):
            raise ValueError(f"decoding {self.decoding!r}: use 'sample' or 'beam'")
        check_config(self, "", queries=">= 1", dpo_queries=">= 0", sft_pairs=">= 0", seed=">= 0")
        if self.candidates < 2:
            raise ValueError(f"candidates must be >= 2 (diversity and DPO compare them), got {self.candidates}")
        if not self.channels:
            raise ValueError("no channels: give at least one retriever, e.g. bm25-stem,dense-zeroshot")
        if not 1 <= self.min_agree <= len(self.channels):
            raise ValueError(f"min_agree {self.min_agree} must be between 1 and the number of "
                             f"channels ({len(self.channels)}: {','.join(self.channels)})")
        unknown = sorted(set(self.weights) - set(REWARDS))
        if unknown or not any(self.weights.get(r, 0) > 0 for r in REWARDS):
            raise ValueError(f"weights {self.weights}: keys must be among {REWARDS} with at least "
                             "one positive weight")
        if self.anchor_k is not None and not 1 <= self.anchor_k <= self.k:
            raise ValueError(f"anchor_k {self.anchor_k} must be between 1 and k ({self.k}) or None")
        if self.queries is not None and self.queries < 1:
            raise ValueError(f"queries must be >= 1 or None, got {self.queries}")
        if self.backbone not in (None, EMBEDDED):
            if self.preset not in (None, "small"):  # "small" is the default: nothing asked for
                raise ValueError(f"backbone {self.backbone!r} and preset {self.preset!r} both given: preset "
                                 "picks genret's embedded LM of that size, backbone another model; give one")
            self.preset = None  # what the rewriter starts from is the backbone alone


def synth_config(**cfg) -> SynthConfig:
    """A :class:`SynthConfig` from keyword overrides; unknown keys are an error.
    ``weights`` update the default weights (``{"diversity": 0}`` turns one reward off)."""
    known = {f.name for f in fields(SynthConfig)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown synth option(s) {unknown}; known: {', '.join(sorted(known))}")
    if "weights" in cfg:
        cfg["weights"] = {**SynthConfig().weights, **cfg["weights"]}
    try:
        return SynthConfig(**cfg)
    except TypeError as e:  # a bad train.* key
        raise ValueError(f"bad synth option: {e}") from None


# ----------------------------------------------------------------------------- pipeline

class Pipeline:
    """The offline retrieval pipeline: each channel is a registry name (fitted here) or a
    saved retriever directory; their runs are fused by reciprocal-rank fusion."""

    def __init__(self, channels: list[str], k: int = 100, c: float = 60.0):
        self.specs, self.k, self.c = list(channels), k, c
        self.retrievers: dict = {}

    def fit(self, dataset: Dataset, *, progress: bool = False) -> "Pipeline":
        from ..retriever import load_retriever, make_retriever

        for spec in self.specs:
            if "/" in spec and not Path(spec).is_dir():
                raise ValueError(f"channel {spec!r}: no such retriever directory; give a registry "
                                 "name (bm25-stem, dense-zeroshot, ...) or a saved retriever")
            self.retrievers[spec] = (load_retriever(spec) if Path(spec).is_dir()
                                     else make_retriever(spec).fit(dataset, progress=progress))
        return self

    def search(self, queries: dict[str, str], progress: bool = False) -> tuple[dict[str, Run], Run]:
        """(per-channel runs, fused run) for ``queries`` (id -> text)."""
        runs = {name: r.search(queries, self.k, progress=progress) for name, r in self.retrievers.items()}
        return runs, rrf(list(runs.values()), self.k, self.c)

    def embedder(self):
        """texts -> normalised MiniLM rows: a dense channel's encoder, else the default one."""
        from ..dense import DenseRetriever, _encode, load_encoder

        dense = next((r for r in self.retrievers.values() if isinstance(r, DenseRetriever)), None)
        if dense is not None:
            return dense.encode_queries
        model = load_encoder(None)
        return lambda texts: _encode(model, texts, 128, None, False, "queries")


# ----------------------------------------------------------------------------- rewriter

def rewrite_pairs(dataset: Dataset, max_pairs: int | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """(query A, query B) for train queries that share a relevant product and differ in
    their words, both directions; a seeded sample of ``max_pairs``, in a fixed order."""
    by_product: dict[str, list[str]] = {}
    for q in dataset.split("train"):
        for p in dataset.relevant(q):
            by_product.setdefault(p, []).append(dataset.queries[q])
    pairs = {(a, b) for texts in by_product.values() for a in texts for b in texts
             if set(terms(a)) != set(terms(b))}
    key = lambda ab: hashlib.sha1(f"{seed}:{ab[0]}\0{ab[1]}".encode()).digest()  # noqa: E731
    return sorted(pairs, key=key)[:max_pairs]


def rewriter_backbone(cfg: SynthConfig, dataset: Dataset | None = None, progress: bool = False) -> str:
    """What the rewriter starts from: ``cfg.backbone`` when given (an HF path or name,
    "minilm", a saved rewriter), else genret's embedded LM of ``cfg.preset``, pretrained
    on ``dataset`` on first use (:func:`genret.backbone.resolve_backbone`, whose own
    default, MiniLM, the rewriter is not measured on)."""
    from ..backbone import resolve_backbone

    return resolve_backbone(cfg.backbone or EMBEDDED, cfg.preset, dataset, cfg.seed, progress=progress)


def _prompt_ids(tokenizer, query: str) -> list[int]:
    return tokenizer(PROMPT.format(query=query), add_special_tokens=False)["input_ids"]


def read_prompt_both_ways(model, tokenizer) -> None:
    """Make a prefix-LM backbone (:mod:`genret.minilm`) read the whole rewriter prompt
    bidirectionally. It finds the prompt's end at the last of its ``prefix_end_ids``
    markers; MiniLM's are those of the lexical and semantic prompts (``<|title|>``,
    ``<|id|>``), but :data:`PROMPT` ends with ``<|query|>``, so without this the prefix
    would be empty and the rewriter a plain causal decoder. The marker joins the model's
    config (saved with the rewriter); other models are left alone."""
    ends = getattr(model.config, "prefix_end_ids", None)
    end = _prompt_ids(tokenizer, "")[-1]  # the token the prompt ends with
    if ends is not None and end not in ends:
        model.config.prefix_end_ids = [*ends, end]


def stop_ids(tokenizer) -> set[int]:
    """Ids a rewrite ends at: the special tokens, including those the tokenizer does not
    name as bos/eos/pad/unk (MiniLM's ``[CLS]``, ``[MASK]``, ``[UNK]``)."""
    added = getattr(tokenizer, "added_tokens_decoder", {})
    return set(tokenizer.all_special_ids) | {i for i, t in added.items() if getattr(t, "special", False)}


def text_normalizer(tokenizer):
    """str -> str: what the tokenizer does to text before splitting it (MiniLM's uncased
    WordPiece lower-cases and strips accents; the embedded byte-level BPE does nothing).
    Rewrites are decoded from tokens, so they come out normalised: the queries, titles and
    real queries they are compared with go through this too."""
    norm = getattr(getattr(tokenizer, "backend_tokenizer", None), "normalizer", None)
    return norm.normalize_str if norm is not None else (lambda text: text)


@caller_rng()
def generate(model, tokenizer, queries: list[str], cfg: SynthConfig, progress: bool = False) -> list[list[str]]:
    """Up to ``cfg.candidates`` distinct rewrites per query (sampled or beams): the text up
    to the first special token, whitespace-normalised, duplicates dropped."""
    special = stop_ids(tokenizer)
    pad = tokenizer.pad_token_id
    n = cfg.candidates
    kw = (dict(do_sample=True, top_p=cfg.top_p, temperature=cfg.temperature, num_beams=1)
          if cfg.decoding == "sample" else dict(do_sample=False, num_beams=n))
    model.eval()
    torch.manual_seed(cfg.seed)
    out = []
    for i in tqdm(range(0, len(queries), cfg.decode_batch_size), desc="rewrite", disable=not progress):
        ids = [_prompt_ids(tokenizer, q) for q in queries[i:i + cfg.decode_batch_size]]
        width = max(map(len, ids))
        inp = torch.tensor([[pad] * (width - len(x)) + x for x in ids])  # left padding
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        with torch.no_grad():
            gen = model.generate(input_ids=inp, attention_mask=mask, num_return_sequences=n,
                                 max_new_tokens=cfg.max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=pad, **kw)
        for b in range(len(ids)):
            texts = []
            for seq in gen[b * n:(b + 1) * n, width:].tolist():
                cut = next((j for j, t in enumerate(seq) if t in special), len(seq))
                text = " ".join(tokenizer.decode(seq[:cut]).split())
                if text not in texts:
                    texts.append(text)
            out.append(texts)
    return out


@dataclass
class Candidate:
    """One rewrite of one query with its rewards and the pairs the filter kept."""

    query_id: str
    text: str
    rewards: dict[str, float]
    reward: float
    kept: list[tuple[str, list[str], float]]
    audit: dict[str, int]  # the filter on the fused top: drops by reason, and labelled ones it passes


def assess(pipeline: Pipeline, dataset: Dataset, cands: dict[str, list[str]], vocab: set[str],
           cfg: SynthConfig, progress: bool = False, normalize=None) -> list[Candidate]:
    """Retrieve for every candidate and its original query, score the five rewards and
    run the relevance filter on candidates whose combined reward exceeds ``min_reward``.
    With ``anchor_k`` an unlabelled product the original query does not retrieve counts
    as irrelevant (agreement 0) and is filtered out. ``normalize`` (the rewriter's
    :func:`text_normalizer`) is applied to the original query the form reward compares
    a rewrite with; ``vocab`` should be built from normalised texts likewise."""
    normalize = normalize or (lambda text: text)
    texts = {f"{q}\t{j}": t for q, ts in cands.items() for j, t in enumerate(ts) if t.strip()}
    runs, fused = pipeline.search({**texts, **{q: dataset.queries[q] for q in cands}}, progress)
    out = []
    for q, ts in cands.items():
        rel, labels = dataset.relevant(q), dataset.qrels.get(q, {})
        original = fused[q].ids if q in fused else []
        anchor = set(original[:cfg.anchor_k]) if cfg.anchor_k else None
        div = diversity(ts)
        for j, t in enumerate(ts):
            key = f"{q}\t{j}"
            hit = fused.get(key)
            got = hit.ids if hit else []
            lists = {c: r[key].ids[:cfg.agree_k] if key in r else [] for c, r in runs.items()}
            agree = {p: a for p, a in agreement(lists).items() if anchor is None or p in anchor}
            rw = {"gain": retrieval_gain(got, rel),
                 "incremental": incremental_recall(got, original, rel),
                 "relevance": relevance(got[:cfg.judge_depth], labels, dataset.threshold, agree),
                 "diversity": div[j],
                 "form": well_formed(t, normalize(dataset.queries[q]), vocab, cfg.max_words, cfg.min_known,
                                     cfg.max_repeat)}
            total = combined_reward(rw, cfg.weights)
            top = list(zip(got, hit.scores))[:cfg.agree_k] if hit and total > cfg.min_reward else []
            kept = filter_products(lists, top, labels, cfg.min_agree, cfg.max_pairs_per_rewrite, anchor)
            n_agree = {p: sum(p in ids for ids in lists.values()) for p, _ in top}
            passed = [p for p, _, _ in filter_products(lists, top, (), cfg.min_agree, None, anchor)]
            audit = {"labelled": sum(p in labels for p in n_agree),
                     "disagreement": sum(p not in labels and n_agree[p] < cfg.min_agree for p in n_agree),
                     "unanchored": sum(p not in labels and anchor is not None and p not in anchor
                                       for p in n_agree),
                     "labelled_passed": sum(p in labels for p in passed),
                     "labelled_passed_relevant": sum(p in rel for p in passed)}
            out.append(Candidate(q, t, rw, total, kept, audit))
    return out


def dpo_pairs(dataset: Dataset, candidates: list[Candidate]) -> list[dict]:
    """One preference pair per query: chosen = its best-rewarded candidate, rejected = its
    worst, when their rewards differ."""
    by_q: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_q.setdefault(c.query_id, []).append(c)
    pairs = []
    for q, cs in by_q.items():
        best, worst = max(cs, key=lambda c: c.reward), min(cs, key=lambda c: c.reward)
        if best.reward > worst.reward:
            pairs.append({"prompt": PROMPT.format(query=dataset.queries[q]),
                          "chosen": " " + best.text, "rejected": " " + worst.text})
    return pairs


def pick_queries(dataset: Dataset, n: int | None, seed: int = 0) -> list[str]:
    """Train query ids (labelled or not) in bucket order tail, torso, head, seeded within a
    bucket; the first ``n``."""
    b = dataset.buckets()
    order = {name: i for i, name in enumerate(reversed(BUCKETS))}
    qids = sorted(dataset.split("train", evaluated_only=False),
                  key=lambda q: (order[b[q]], hashlib.sha1(f"{seed}:{q}".encode()).digest()))
    return qids[:n]


# ----------------------------------------------------------------------------- synthesis

def _summary(values) -> dict:
    v = np.asarray(list(values), dtype=float)
    if not len(v):
        return {"n": 0}
    return {"n": int(len(v)), "mean": float(v.mean()), "std": float(v.std()),
            **{f"p{p}": float(np.percentile(v, p)) for p in (10, 50, 90)}}


def _precision(cands: list[Candidate]) -> dict:
    """Of the products that pass the filter but are labelled already (so are not written),
    the share labelled relevant: the filter's precision where labels can tell."""
    n = sum(c.audit["labelled_passed"] for c in cands)
    hit = sum(c.audit["labelled_passed_relevant"] for c in cands)
    return {"labelled_passed": n, "relevant": hit, "precision": hit / n if n else None}


def _tsv(value) -> str:
    return " ".join(str(value).split())  # no tab or newline may reach a TSV cell


@caller_rng()
def synthesize(dataset: Dataset, cfg: SynthConfig, out: str | Path, progress: bool = True) -> dict:
    """Train the rewriter (SFT, then DPO), rewrite ``cfg.queries`` train queries, curate
    pairs and write ``out/{pairs.tsv, candidates.tsv, report.json, synth.png}`` and the
    rewriter (``out/rewriter``, a backbone directory: pass it as ``backbone`` with
    ``sft_pairs=0, dpo_queries=0`` to rewrite more queries) atomically. Returns the report."""
    from ..backbone import encode_text, load_backbone, save_backbone

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a directory; choose another --out")
    t = {}
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    path = rewriter_backbone(cfg, dataset, progress)
    model, tokenizer = load_backbone(path)
    read_prompt_both_ways(model, tokenizer)
    normalize = text_normalizer(tokenizer)
    pairs = rewrite_pairs(dataset, cfg.sft_pairs, cfg.seed) if cfg.sft_pairs != 0 else []
    if cfg.sft_pairs != 0 and not pairs:
        raise ValueError(f"{dataset.name}: no two train queries share a relevant product, so no "
                         "rewrite pairs can be mined to teach the rewriter")
    t["backbone_seconds"] = time.perf_counter() - t0
    qids = pick_queries(dataset, cfg.queries, cfg.seed)
    texts = lambda qs: [dataset.queries[q] for q in qs]  # noqa: E731
    train_cfg = replace(cfg.train, progress=cfg.train.progress and progress)
    mined: list[Candidate] = []
    before: list[Candidate] = []
    prefs: list[dict] = []
    with work_dir(None, "genret-synth-") as work:
        if pairs:
            t0 = time.perf_counter()
            model = sft(model, tokenizer, [(_prompt_ids(tokenizer, a), encode_text(tokenizer, b))
                                           for a, b in pairs], work / "sft", train_cfg)
            t["sft_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        pipeline = Pipeline(cfg.channels, cfg.k, cfg.rrf_c).fit(dataset, progress=progress)
        t["pipeline_fit_seconds"] = time.perf_counter() - t0
        vocab = {w for text in [*dataset.titles, *texts(dataset.split("train", evaluated_only=False))]
                 for w in terms(normalize(text))}
        if cfg.dpo_queries:
            t0 = time.perf_counter()
            if cfg.compare_sft:
                gen = generate(model, tokenizer, texts(qids), cfg, progress)
                before = assess(pipeline, dataset, dict(zip(qids, gen)), vocab, cfg, progress, normalize)
            rng = np.random.default_rng(cfg.seed)
            train_q = dataset.split("train")
            dq = sorted(train_q[i] for i in rng.permutation(len(train_q))[:cfg.dpo_queries])
            gen = generate(model, tokenizer, texts(dq), cfg, progress)
            mined = assess(pipeline, dataset, dict(zip(dq, gen)), vocab, cfg, progress, normalize)
            prefs = dpo_pairs(dataset, mined)
            if prefs:
                model = dpo(model, tokenizer, prefs, work / "dpo", train_cfg)
            t["dpo_seconds"] = time.perf_counter() - t0
    if before and not prefs:  # no DPO step: the SFT rewriter's candidates are the final ones
        cands = before
    else:
        t0 = time.perf_counter()
        gen = generate(model, tokenizer, texts(qids), cfg, progress)
        t["generate_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        cands = assess(pipeline, dataset, dict(zip(qids, gen)), vocab, cfg, progress, normalize)
        t["assess_seconds"] = time.perf_counter() - t0
    best: dict[tuple[str, str], tuple[Candidate, list[str], float]] = {}
    for c in cands:
        for p, chans, score in c.kept:
            if (c.query_id, p) not in best or c.reward > best[c.query_id, p][0].reward:
                best[c.query_id, p] = (c, chans, score)
    t0 = time.perf_counter()
    real = [dataset.queries[q] for q in dataset.split("train", evaluated_only=False)]
    real = sorted(real, key=lambda s: hashlib.sha1(f"{cfg.seed}:{s}".encode()).digest())[:cfg.shift_sample]
    real = [normalize(s) for s in real]  # compared with rewrites, which are normalised
    shift = shift_stats([c.text for c in cands if terms(c.text)], real,
                        pipeline.embedder() if cfg.shift_embeddings else None)
    t["shift_seconds"] = time.perf_counter() - t0
    buckets = dataset.buckets()
    report = {
        "dataset": dataset.summary(), "backbone": str(path), "config": asdict(cfg),
        "counts": {"sft_pairs": len(pairs), "dpo_queries": len({c.query_id for c in mined}),
                   "dpo_pairs": len(prefs), "queries": len(qids),
                   "queries_by_bucket": dict(Counter(buckets[q] for q in qids)),
                   "candidates": len(cands),
                   "rewrites_rewarded": sum(c.reward > cfg.min_reward for c in cands),
                   "ill_formed": sum(c.rewards["form"] == 0 for c in cands),
                   "pairs_passing_filter": sum(len(c.kept) for c in cands),
                   **{f"filtered_{k}": sum(c.audit[k] for c in cands)
                      for k in ("labelled", "disagreement", "unanchored")},
                   "pairs_kept": len(best),
                   "queries_with_pairs": len({q for q, _ in best})},
        "rewards": {**{r: _summary(c.rewards[r] for c in cands) for r in REWARDS},
                    "combined": _summary(c.reward for c in cands),
                    "combined_sft_rewriter": _summary(c.reward for c in before),
                    "combined_dpo_mining": _summary(c.reward for c in mined)},
        "filter_precision_on_labelled": {"synthesis": _precision(cands), "dpo_mining": _precision(mined)},
        "shift": shift, "timings": {k: round(v, 2) for k, v in t.items()},
    }
    with atomic_dir(out, "synth", 1, config=asdict(cfg), n_pairs=len(best)) as tmp:
        with open(tmp / "pairs.tsv", "w", encoding="utf-8") as f:
            f.write("\t".join(PAIR_COLUMNS) + "\n")
            for (q, p), (c, chans, score) in sorted(best.items(), key=lambda kv: (kv[0][0], -kv[1][2], kv[0][1])):
                f.write("\t".join(_tsv(v) for v in (dataset.queries[q], p, dataset.threshold, c.text,
                                                     "+".join(chans), f"{score:.6g}", f"{c.reward:.4f}")) + "\n")
        with open(tmp / "candidates.tsv", "w", encoding="utf-8") as f:
            f.write("\t".join(["query", "rewrite", "reward", *REWARDS, "pairs"]) + "\n")
            for c in cands:
                f.write("\t".join(_tsv(v) for v in (dataset.queries[c.query_id], c.text, f"{c.reward:.4f}",
                                                     *(f"{c.rewards[r]:.4f}" for r in REWARDS),
                                                     len(c.kept))) + "\n")
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        plot(cands, real, tmp / "synth.png")
        save_backbone(model, tokenizer, tmp / "rewriter", rewriter_of=str(path))
    return report


def plot(cands: list[Candidate], real: list[str], path: Path) -> None:
    """Two panels: the combined reward of the candidates, and word lengths real vs synthetic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.hist([c.reward for c in cands], bins=20, color="tab:blue")
    a.set(xlabel="combined reward", ylabel="candidates", title="Reward of the rewrites")
    lens = [[len(terms(t)) for t in real], [len(terms(c.text)) for c in cands]]
    bins = np.arange(0, max(max(x, default=0) for x in lens) + 2) - 0.5
    b.hist(lens, bins=bins, density=True, label=["real train queries", "rewrites"])
    b.set(xlabel="words", ylabel="share", title="Query length")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
