"""Sparse training: :class:`SparseLoss` (InfoNCE + quadratically warmed-up FLOPS), hard
negatives, and :func:`train_encoder` on the HF Trainer (:mod:`genret.contrastive`)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .encoder import UNKEYED, SparseConfig, SparseEncoder, normalise, quadratic_warmup


class FlopsRegularizer(nn.Module):
    """Eq. 3: ``Σ_j ( (1/N) Σ_i w_j(i) )²`` over a batch of N representations."""

    def forward(self, reps: torch.Tensor) -> torch.Tensor:
        return (reps.abs().mean(dim=0) ** 2).sum()


class InfoNCE(nn.Module):
    """Eq. 2 / eq. 12: ``−log e^{s(q_i, d_i⁺)} / Σ_{d in batch} e^{s(q_i, d)}`` with the
    positive of query i in column i; masked columns (known positives of q_i other than
    its own) are left out of the denominator."""

    def forward(self, scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        labels = torch.arange(scores.shape[0], device=scores.device)
        return nn.functional.cross_entropy(scores, labels)


class SparseLoss(nn.Module):
    """``L = L_rank + λ_q(t)·FLOPS(w_q) + λ_d(t)·FLOPS(w_d)`` (eq. 4 / eq. 13).

    ``forward`` returns named terms (``loss`` is the one to back-propagate; the others
    are detached floats for logs): rank, flops_q, flops_d, lambda_q, lambda_d.
    """

    def __init__(self, lambda_q: float, lambda_d: float, warmup_steps: int, norm: str = "none"):
        super().__init__()
        self.lambda_q, self.lambda_d, self.warmup_steps, self.norm = lambda_q, lambda_d, warmup_steps, norm
        self.rank = InfoNCE()
        self.flops = FlopsRegularizer()

    def scores(self, q_rep: torch.Tensor, d_rep: torch.Tensor) -> torch.Tensor:
        return normalise(q_rep, "query", self.norm) @ normalise(d_rep, "item", self.norm).T

    def forward(self, q: dict, d: dict, step: int, mask: torch.Tensor | None = None) -> dict:
        rank = self.rank(self.scores(q["rep"], d["rep"]), mask)
        fq, fd = self.flops(q["basic"]), self.flops(d["basic"])
        lq = quadratic_warmup(step, self.warmup_steps, self.lambda_q)
        ld = quadratic_warmup(step, self.warmup_steps, self.lambda_d)
        loss = rank + lq * fq + ld * fd
        return {"loss": loss, "rank": rank.item(), "flops_q": fq.item(), "flops_d": fd.item(),
                "lambda_q": lq, "lambda_d": ld}



def _training_pairs(dataset, qids: list[str]) -> list[tuple[str, str]]:
    return [(q, p) for q in qids for p in sorted(dataset.relevant(q))]


def mine_negatives(dataset, qids: list[str], cfg: SparseConfig, progress: bool = True) -> dict:
    """Hard-negative pools per query: ``{"bm25": {q: [...]}, "labelled": {q: [...]}}``.

    bm25: stemmed-BM25 top-``bm25_depth`` products that are not relevant (grade below the
    threshold or unlabelled); labelled: products labelled with grade < threshold.
    """
    pools: dict[str, dict[str, list[str]]] = {"bm25": {}, "labelled": {}}
    if "labelled" in cfg.negative_sources:
        for q in qids:
            neg = sorted(p for p, g in dataset.qrels.get(q, {}).items() if g < dataset.threshold)
            if neg:
                pools["labelled"][q] = neg
    if "bm25" in cfg.negative_sources:
        from ..bm25 import BM25Retriever

        bm = BM25Retriever(stemmer="english").fit(dataset)
        run = bm.search({q: dataset.queries[q] for q in qids}, cfg.bm25_depth, progress=progress)
        for q in qids:
            rel = dataset.relevant(q)
            neg = [p for p in (run[q].ids if q in run else []) if p not in rel]
            if neg:
                pools["bm25"][q] = neg
    return pools


def _sample_negative(q: str, pools: dict, rng: np.random.Generator, catalog_ids: list[str],
                     relevant: dict) -> str:
    """A labelled non-relevant product or a BM25 negative (each with probability 1/2 when
    both exist), else a random non-relevant product."""
    have = [s for s in ("labelled", "bm25") if q in pools.get(s, {})]
    if have:
        pool = pools[have[int(rng.integers(len(have)))]][q]
        return pool[int(rng.integers(len(pool)))]
    while True:
        p = catalog_ids[int(rng.integers(len(catalog_ids)))]
        if p not in relevant:
            return p


@dataclass
class _Step:
    """One global batch: (query, relevant product) pairs, then ``hard_negatives`` rounds of
    one sampled negative per pair."""
    pairs: list[tuple[str, str]]
    negatives: list[list[str]]


def _schedule(dataset, pairs: list[tuple[str, str]], pools: dict, cfg: SparseConfig, batch: int,
              steps: int) -> list[_Step]:
    """``steps`` batches of ``batch`` pairs: seeded permutations of the pairs (a new one when the
    rest would not fill a batch) and, per round, a sampled negative for each pair."""
    from ..contrastive import epoch_batches

    rng, out = np.random.default_rng(cfg.seed), []
    for rows in epoch_batches(len(pairs), batch, steps, rng):
        chosen = [pairs[i] for i in rows]
        negatives = [[_sample_negative(q, pools, rng, dataset.product_ids, dataset.relevant(q)) for q, _ in chosen]
                     for _ in range(cfg.hard_negatives)]
        out.append(_Step(chosen, negatives))
    return out


def _mask(step: _Step, dataset) -> torch.Tensor:
    """Products (positives, then each round of negatives) relevant to query i other than its own."""
    docs = [p for _, p in step.pairs] + [p for r in step.negatives for p in r]
    return torch.tensor([[j != i and docs[j] in dataset.relevant(q) for j in range(len(docs))]
                         for i, (q, _) in enumerate(step.pairs)])


class _SparseTask:
    """:class:`SparseLoss` over a schedule of global batches, for
    :func:`genret.contrastive.train_schedule`: AdamW at ``lr`` for the backbone and ``head_lr``
    for the new parameters, weight decay on all."""

    log_mean = False  # a log entry is the logged step's own terms

    def __init__(self, enc: SparseEncoder, schedule: list[_Step], global_batch: int, total: int, dataset,
                 cfg: SparseConfig):
        self.enc, self.schedule, self.global_batch, self.dataset, self.cfg = enc, schedule, global_batch, dataset, cfg
        self.warmup = max(1, int(cfg.warmup_ratio * total))
        self.loss_fn = SparseLoss(cfg.lambda_q, cfg.lambda_d, int(cfg.flops_warmup_ratio * total), cfg.norm)
        self.t0 = time.perf_counter()

    def param_groups(self) -> list[dict]:
        new = {id(p) for p in self.enc.new_parameters()}
        return [{"params": [p for p in self.enc.parameters() if id(p) not in new], "lr": self.cfg.lr,
                 "weight_decay": self.cfg.weight_decay},
                {"params": [p for p in self.enc.parameters() if id(p) in new], "lr": self.cfg.head_lr,
                 "weight_decay": self.cfg.weight_decay}]

    def step_loss(self, model, step: int, local: list[int]):
        from ..contrastive import gather_cat

        s, enc = self.schedule[step], self.enc
        device = next(enc.parameters()).device
        docs = [s.pairs[i][1] for i in local] + [r[i] for r in s.negatives for i in local]
        qb = {k: v.to(device) for k, v in enc.tokenize([self.dataset.queries[s.pairs[i][0]] for i in local],
                                                        "query").items()}
        db = {k: v.to(device) for k, v in enc.tokenize([self.dataset.catalog[p] for p in docs], "item").items()}
        qo, do = model(qb, "query"), model(db, "item")
        n, v = len(local), enc.vocab_size
        q = gather_cat(torch.cat([qo["rep"], qo["basic"]], 1))  # blocks of n: positives, then each round
        d = torch.cat([gather_cat(x) for x in torch.cat([do["rep"], do["basic"]], 1).split(n)])
        q, d = {"rep": q[:, :v], "basic": q[:, v:]}, {"rep": d[:, :v], "basic": d[:, v:]}
        out = self.loss_fn(q, d, step, _mask(s, self.dataset).to(device))
        with torch.no_grad():
            nnz_q = float((q["rep"] != 0).sum(-1).float().mean())
            nnz_d = float((d["rep"] != 0).sum(-1).float().mean())
        terms = {"loss": out["loss"].item(), **{k: out[k] for k in ("rank", "flops_q", "flops_d", "lambda_q",
                                                                     "lambda_d")},
                 "nnz_q": nnz_q, "nnz_d": nnz_d, "seconds": round(time.perf_counter() - self.t0, 1)}
        return out["loss"], terms


def train_encoder(enc: SparseEncoder, dataset, cfg: SparseConfig, out_dir: Path, progress: bool = True) -> list[dict]:
    """Contrastive training on the train split with the HF Trainer (checkpoints in ``out_dir``;
    a run with the same settings, data and model resumes there); returns the log (named loss
    terms at the first step, every ``log_every`` steps and the last)."""
    from ..contrastive import keyed, train_schedule, training_args, world
    from ..training import run_key

    qids = dataset.split("train")
    pairs = _training_pairs(dataset, qids)
    if not pairs:
        raise ValueError(f"{dataset.name}: no training pairs (no train query with a relevant product)")
    batch = cfg.batch_size * world()[1]
    total = max(1, math.ceil(cfg.epochs * math.ceil(len(pairs) / batch)))
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    if total <= 0 or cfg.max_steps == 0:
        return []
    if batch > len(pairs):
        raise ValueError(f"batch_size {cfg.batch_size} x {world()[1]} processes exceeds the {len(pairs)} "
                         "training pairs; lower batch_size")
    pools = mine_negatives(dataset, qids, cfg, progress) if cfg.hard_negatives > 0 else {}
    schedule = _schedule(dataset, pairs, pools, cfg, batch, total)
    args = training_args(out_dir, steps=total, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                         seed=cfg.seed, log_every=cfg.log_every, log_first=True, save_steps=cfg.save_steps,
                         progress=progress)
    settings = {k: v for k, v in asdict(cfg).items() if k not in UNKEYED}
    data = [[[[dataset.queries[q], dataset.catalog[p]] for q, p in s.pairs],
             [[dataset.catalog[p] for p in r] for r in s.negatives], _mask(s, dataset).tolist()] for s in schedule]
    run = run_key("sparse", settings, data, keyed(enc, enc.model.config), enc.tokenizer)
    try:
        return train_schedule(_SparseTask(enc, schedule, batch, total, dataset, cfg), enc, args, run)
    finally:
        enc.eval()
