"""Learned sparse retrieval shared by SPLADE and PROSPER (seed 002 is the spec).

One encoder covers both models; switches select the paper's components:

- backbone: an encoder (BERT-style: ``AutoModel`` + an MLM head) or a causal LM
  (``AutoModelForCausalLM`` and its LM head);
- pooling of ``log(1 + ReLU(logits))`` over token positions: ``max`` (SPLADE, eq. 1) or
  ``last`` (PROSPER, eq. 6: the last non-pad token);
- literal residual network (PROSPER eq. 5, 7-9): ``W = w + I ⊙ (max(w') − w')`` with
  ``w' = FC(Last(log(1 + ReLU(h))))``, or the ``add`` ablation ``W = w + I ⊙ w'``;
- lexical focusing window (eq. 10): conditional top-k of ``W`` with ``k_q`` / ``k_d``;
- score normalisation (eq. 11 and Appendix D.2): L2 on the query side by default.

Training: :class:`SparseLoss` = InfoNCE (:class:`InfoNCE`, in-batch + optional hard
negatives) + λ_q FLOPS(queries) + λ_d FLOPS(products) (:class:`FlopsRegularizer`), the
λs raised quadratically to their targets (:func:`quadratic_warmup`). FLOPS acts on the
basic representation ``w`` (PROSPER: before LRN and LFW).

Retrieval: products are encoded once into a term-major inverted index (a scipy CSR
matrix of shape vocabulary × products: row j is the postings list of term j); a batch of
queries (CSR, queries × vocabulary) times it is term-at-a-time accumulation. Only
products sharing a term with the query are candidates; ties are broken by
:func:`genret.eval.tiebreak_keys`, never by catalog order.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from tqdm.auto import tqdm

from .artifact import ArtifactError, atomic_dir, reads_artifact
from .eval import Run, tiebreak_keys, top_k
from .minilm import minilm_path
from .retriever import Retriever, as_queries

POOLINGS = ("max", "last")
LRN_MODES = ("none", "residual", "add")
LRN_SIDES = ("both", "query", "item")
NORMS = ("none", "q", "d", "all", "q-l1")
ENCODER_TYPES = ("bert", "roberta", "distilbert", "xlm-roberta", "electra", "mpnet", "albert",
                 "deberta", "deberta-v2", "camembert", "modernbert")


# ============================================================================ config

@dataclass
class SparseConfig:
    """Every switch of the sparse encoders, their training and their retrieval.

    SPLADE and PROSPER subclass this with their own defaults (genret.splade,
    genret.prosper); the fields are the same, so any ablation is a keyword away.
    """

    # --- model
    backbone: str | None = "minilm"   # HF path; "minilm" = the packaged all-MiniLM-L6-v2;
                                      # None = the embedded LM (genret.backbone.default_backbone)
    preset: str = "small"             # ... of this preset, pretrained on first use and cached
    backbone_type: str = "auto"       # "encoder" (AutoModel + MLM head) | "causal" | "auto"
    pooling: str = "max"              # "max" (SPLADE eq. 1) | "last" (PROSPER eq. 6)
    lrn: str = "none"                 # "none" | "residual" (eq. 9) | "add" (W = w + I ⊙ w')
    lrn_side: str = "both"            # "both" | "query" (LRN-q) | "item" (LRN-d)
    lfw: bool = False                 # lexical focusing window (eq. 10)
    k_q: int = 64                     # LFW size for queries
    k_d: int = 128                    # LFW size for products
    norm: str = "none"                # "none" | "q" (eq. 11) | "d" | "all" | "q-l1"
    append_eos: bool = True           # causal LMs: end each text with EOS (the pooled position)
    markers: bool = True              # causal LMs: start with <|query|> / <|title|> when the
                                      # tokenizer has them (the embedded LM's pretraining format)
    lowercase: bool = True            # lower-case queries and titles before tokenising (cased
                                      # BPE: "Fan" in titles vs "fan" in queries are other terms)
    max_query_len: int = 32
    max_doc_len: int = 64
    # --- training
    epochs: float = 1.0
    max_steps: int | None = 300       # cap on optimiser steps (None = full epochs; 0 = no training)
    batch_size: int = 32
    lr: float = 5e-5
    head_lr: float = 1e-3             # new parameters (MLM-head transform/bias, LRN FC)
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1         # linear LR warm-up share of the steps
    lambda_q: float = 5e-3
    lambda_d: float = 1e-3
    flops_warmup_ratio: float = 0.3   # share of steps over which λ rises quadratically
    hard_negatives: int = 0           # hard negatives per query (0 = in-batch only)
    negative_sources: tuple = ("bm25", "labelled")
    bm25_depth: int = 30              # BM25 negatives: top-N non-relevant products
    mlm_warmup_steps: int = 100       # encoder backbones: fit the fresh MLM head first
    init_doc_terms: int = 256         # ... then shift its bias so a product starts this sparse
    seed: int = 0
    log_every: int = 10
    # --- retrieval
    query_top_terms: int | None = 16  # keep the top-N query terms at search (as deployed)
    encode_batch_size: int = 128
    search_batch_size: int = 256
    device: str = "auto"

    def __post_init__(self):
        for name, value, allowed in (("pooling", self.pooling, POOLINGS), ("lrn", self.lrn, LRN_MODES),
                                     ("lrn_side", self.lrn_side, LRN_SIDES), ("norm", self.norm, NORMS),
                                     ("backbone_type", self.backbone_type, ("auto", "encoder", "causal"))):
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not one of {', '.join(allowed)}")
        self.negative_sources = tuple(self.negative_sources)
        bad = set(self.negative_sources) - {"bm25", "labelled"}
        if bad:
            raise ValueError(f"negative_sources {sorted(bad)} unknown; use 'bm25' and/or 'labelled'")
        if self.k_q < 1 or self.k_d < 1:
            raise ValueError("k_q and k_d must be >= 1")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ============================================================================ building blocks

def quadratic_warmup(step: int, warmup_steps: int, target: float) -> float:
    """λ at ``step``: ``target · min(1, step / warmup_steps)²`` (SPLADE/PROSPER schedule)."""
    if warmup_steps <= 0:
        return float(target)
    return float(target) * min(1.0, step / warmup_steps) ** 2


def last_token_pool(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x[b, i_b]`` where ``i_b`` is the last position with ``mask == 1`` (works for right
    and left padding). x: (B, L, ...), mask: (B, L)."""
    pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    idx = torch.where(mask.bool(), pos, torch.full_like(pos, -1)).argmax(dim=1)
    return x[torch.arange(x.shape[0], device=x.device), idx]


def max_pool(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """max over positions with ``mask == 1`` of a non-negative x (B, L, D) -> (B, D)."""
    return (x * mask.unsqueeze(-1).to(x.dtype)).amax(dim=1)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """max over positions with ``mask == 1`` of x (B, L, D) -> (B, D)."""
    return x.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).amax(dim=1)


def saturate(x: torch.Tensor) -> torch.Tensor:
    """``log(1 + ReLU(x))`` (eq. 1 / eq. 5)."""
    return torch.log1p(torch.relu(x))


def literal_indicator(input_ids: torch.Tensor, mask: torch.Tensor, vocab_size: int,
                      special_ids=()) -> torch.Tensor:
    """I of eq. 9: 1 at the vocabulary ids of the sequence's own (non-special) tokens."""
    keep = mask.bool().clone()
    for s in special_ids:
        keep &= input_ids != s
    ind = torch.zeros(input_ids.shape[0], vocab_size, device=input_ids.device)
    ind.scatter_add_(1, torch.where(keep, input_ids, torch.zeros_like(input_ids)), keep.float())
    return ind.clamp_(max=1.0)


def lrn_combine(w: torch.Tensor, w_prime: torch.Tensor, indicator: torch.Tensor,
                mode: str = "residual") -> torch.Tensor:
    """Eq. 9: ``W = w + I ⊙ (max(w') − w')`` (max over the vocabulary, per row);
    ``mode="add"``: ``W = w + I ⊙ w'``; ``mode="none"``: ``W = w``."""
    if mode == "none":
        return w
    if mode == "add":
        return w + indicator * w_prime
    if mode == "residual":
        return w + indicator * (w_prime.amax(dim=-1, keepdim=True) - w_prime)
    raise ValueError(f"unknown LRN mode {mode!r}")


def lfw_topk(W: torch.Tensor, k: int) -> torch.Tensor:
    """Eq. 10, per row: keep the k largest weights when more than k are non-zero, else
    leave the row as it is. Exactly k survive when ``||W||_0 > k`` (ties by index)."""
    if k >= W.shape[-1]:
        return W
    nnz = (W != 0).sum(dim=-1, keepdim=True)
    idx = W.topk(k, dim=-1).indices
    keep = torch.zeros_like(W, dtype=torch.bool).scatter_(-1, idx, True)
    return torch.where((nnz <= k) | keep, W, torch.zeros_like(W))


def normalise(W: torch.Tensor, side: str, kind: str) -> torch.Tensor:
    """Score-side normalisation: ``q`` L2 on queries (eq. 11), ``d`` L2 on items, ``all``
    both (cosine), ``q-l1`` L1 on queries, ``none`` plain dot product."""
    p = None
    if kind == "all" or (kind == "q" and side == "query") or (kind == "d" and side == "item"):
        p = 2
    elif kind == "q-l1" and side == "query":
        p = 1
    if p is None:
        return W
    return W / W.norm(p=p, dim=-1, keepdim=True).clamp_min(1e-9)


class MLMHead(nn.Module):
    """BERT's MLM head: dense + GELU + LayerNorm, then a decoder tied to the input word
    embeddings plus a bias. all-MiniLM-L6-v2 ships without one, so it starts fresh (and
    :func:`mlm_warmup` fits it before sparse training)."""

    def __init__(self, hidden: int, vocab_size: int, eps: float = 1e-12):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        nn.init.normal_(self.dense.weight, std=0.02)
        nn.init.zeros_(self.dense.bias)

    def forward(self, h: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(h))) @ embeddings.T + self.bias


# ============================================================================ losses

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


# ============================================================================ encoder

def _backbone_kind(config, requested: str) -> str:
    if requested != "auto":
        return requested
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        return "causal"
    if getattr(config, "model_type", "") in ENCODER_TYPES or getattr(config, "is_encoder_decoder", False):
        return "encoder"
    return "causal"


def _resolve_backbone(name: str | None, dataset=None, preset: str = "small", seed: int = 0) -> str:
    """"minilm" -> the packaged MiniLM; None -> the embedded LM (genret.backbone's
    ``default_backbone``: pretrained on ``dataset`` on first use, then cached); else a path."""
    if name in (None, "default"):
        if dataset is None:
            raise ValueError("no backbone given and no dataset to build the embedded one from: pass "
                             "backbone=PATH (a `genret pretrain` directory or any HF causal LM)")
        from .backbone import default_backbone

        return str(default_backbone(dataset, preset, seed))
    if name == "minilm":
        return minilm_path()
    return str(name)


class SparseEncoder(nn.Module):
    """Text -> vocabulary-sized sparse representation (SPLADE or PROSPER by config).

    ``forward(batch, side)`` returns ``{"rep": W (after LRN and LFW), "basic": w}``.
    """

    def __init__(self, model: nn.Module, tokenizer, kind: str, cfg: SparseConfig,
                 identity: dict | None = None):
        super().__init__()
        self.model, self.tokenizer, self.kind, self.cfg = model, tokenizer, kind, cfg
        self.identity = identity or {}
        hidden = model.config.hidden_size
        if kind == "encoder":
            self.vocab_size = model.get_input_embeddings().weight.shape[0]
            self.mlm = MLMHead(hidden, self.vocab_size, getattr(model.config, "layer_norm_eps", 1e-12))
        else:
            self.vocab_size = model.get_output_embeddings().weight.shape[0]
            self.mlm = None
        self.fc = nn.Linear(hidden, self.vocab_size) if cfg.lrn != "none" else None
        if self.fc is not None:
            nn.init.normal_(self.fc.weight, std=0.02)
            nn.init.zeros_(self.fc.bias)
        self.special_ids = sorted({int(i) for i in tokenizer.all_special_ids if i is not None
                                   and 0 <= int(i) < self.vocab_size})
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
            (tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0)
        self.eos_id = tokenizer.eos_token_id if (kind == "causal" and cfg.append_eos) else None
        vocab = tokenizer.get_vocab()
        self.markers = {side: vocab.get(m) for side, m in (("query", "<|query|>"), ("item", "<|title|>"))} \
            if (kind == "causal" and cfg.markers) else {}

    # ---- construction
    @classmethod
    def from_pretrained(cls, cfg: SparseConfig, dataset=None) -> "SparseEncoder":
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = _resolve_backbone(cfg.backbone, dataset, cfg.preset, cfg.seed)
        try:
            hf_cfg = AutoConfig.from_pretrained(path)
        except OSError as e:
            raise ValueError(f"cannot load backbone {path!r}: {e}. No model hub is reachable here: "
                             "pass a local directory") from None
        kind = _backbone_kind(hf_cfg, cfg.backbone_type)
        if kind == "encoder":
            tok = AutoTokenizer.from_pretrained(path)
            model = AutoModel.from_pretrained(path)
        else:  # genret.backbone reads genret tokenizers exactly (AutoTokenizer would not)
            from .backbone import is_genret_backbone, load_backbone

            model, tok = load_backbone(path)
        enc = cls(model, tok, kind, cfg, identity=backbone_identity(path, hf_cfg, tok))
        if kind == "encoder":
            enc._load_mlm_head(Path(path))
        else:
            enc.identity["genret_backbone"] = is_genret_backbone(path)
        return enc

    def save_backbone(self, d: Path) -> None:
        if self.kind == "causal" and self.identity.get("genret_backbone"):
            from .backbone import save_backbone

            save_backbone(self.model, self.tokenizer, d)
        else:
            self.model.save_pretrained(d, safe_serialization=True)
            self.tokenizer.save_pretrained(d)

    @staticmethod
    def load_backbone_dir(d: Path, kind: str):
        from transformers import AutoModel, AutoTokenizer

        if kind == "encoder":
            return AutoModel.from_pretrained(d), AutoTokenizer.from_pretrained(d)
        from .backbone import load_backbone

        return load_backbone(d)

    def _load_mlm_head(self, path: Path) -> None:
        """Use the checkpoint's own MLM head when it has one (BertForMaskedLM layout)."""
        from safetensors import safe_open

        f = path / "model.safetensors"
        if not f.exists():
            return
        names = {"cls.predictions.transform.dense.weight": "dense.weight",
                 "cls.predictions.transform.dense.bias": "dense.bias",
                 "cls.predictions.transform.LayerNorm.weight": "norm.weight",
                 "cls.predictions.transform.LayerNorm.bias": "norm.bias",
                 "cls.predictions.bias": "bias"}
        with safe_open(str(f), "pt") as sf:
            keys = set(sf.keys())
            if all(k in keys for k in names):
                self.mlm.load_state_dict({v: sf.get_tensor(k) for k, v in names.items()})
                self.identity["mlm_head"] = "from checkpoint"

    # ---- tokenisation
    def tokenize(self, texts: list[str], side: str) -> dict:
        max_len = self.cfg.max_query_len if side == "query" else self.cfg.max_doc_len
        if self.cfg.lowercase:
            texts = [t.lower() for t in texts]
        if self.kind == "encoder":
            ids = self.tokenizer(list(texts), add_special_tokens=True, truncation=True,
                                 max_length=max_len)["input_ids"]
        else:  # [marker] " " + text [EOS], as genret.backbone encodes text
            marker = self.markers.get(side)
            head = [marker] if marker is not None else []
            tail = [self.eos_id] if self.eos_id is not None else []
            body = self.tokenizer([" " + t for t in texts], add_special_tokens=False)["input_ids"]
            ids = [head + x[:max(0, max_len - len(head) - len(tail))] + tail for x in body]
        ids = [x if x else [self.pad_id] for x in ids]
        width = max(map(len, ids))
        left = getattr(self.tokenizer, "padding_side", "right") == "left" and self.kind == "encoder"
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, x in enumerate(ids):
            sl = slice(width - len(x), width) if left else slice(0, len(x))
            input_ids[i, sl] = torch.tensor(x)
            mask[i, sl] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    # ---- forward
    def hidden_states(self, input_ids, attention_mask) -> torch.Tensor:
        if self.kind == "encoder":
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        base = self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model.base_model
        return base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        if self.kind == "encoder":
            return self.mlm(h, self.model.get_input_embeddings().weight)
        return self.model.get_output_embeddings()(h)

    def forward(self, batch: dict, side: str) -> dict:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        h = self.hidden_states(ids, mask)
        if self.cfg.pooling == "last":
            w = saturate(self.logits(last_token_pool(h, mask)))          # eq. 6 (lm head is per position)
            h_pool = last_token_pool(saturate(h), mask)                   # eq. 7
        else:  # eq. 1; log(1 + ReLU(.)) is monotone, so max_i sat(x_ij) = sat(max_i x_ij)
            w = saturate(masked_max(self.logits(h), mask))
            h_pool = saturate(masked_max(h, mask))
        if self.special_ids:
            w = w.index_fill(1, torch.tensor(self.special_ids, device=w.device), 0.0)
        W = w
        if self.fc is not None and self.cfg.lrn_side in ("both", side):
            I = literal_indicator(ids, mask, self.vocab_size, self.special_ids)
            W = lrn_combine(w, self.fc(h_pool), I, self.cfg.lrn)          # eq. 8-9
        if self.cfg.lfw:
            W = lfw_topk(W, self.cfg.k_q if side == "query" else self.cfg.k_d)  # eq. 10
        return {"rep": W, "basic": w}

    def score_rep(self, out: dict, side: str) -> torch.Tensor:
        return normalise(out["rep"], side, self.cfg.norm)

    @torch.inference_mode()
    def encode(self, texts: list[str], side: str, batch_size: int | None = None,
               progress: bool = False, device: torch.device | None = None) -> sp.csr_matrix:
        """Normalised, LFW-cut representations as a CSR matrix (texts × vocabulary)."""
        was_training = self.training
        self.eval()
        device = device or next(self.parameters()).device
        bs = batch_size or self.cfg.encode_batch_size
        order = np.argsort([len(t) for t in texts], kind="stable")  # little padding
        rows, cols, vals = [], [], []
        for start in tqdm(range(0, len(texts), bs), desc=f"encode {side}s", disable=not progress):
            sel = order[start:start + bs]
            b = {k: v.to(device) for k, v in self.tokenize([texts[i] for i in sel], side).items()}
            R = self.score_rep(self(b, side), side).float()
            r, c = R.nonzero(as_tuple=True)
            rows.append(torch.as_tensor(sel, device=device)[r].cpu().numpy())
            cols.append(c.cpu().numpy())
            vals.append(R[r, c].cpu().numpy())
        self.train(was_training)
        cat = (lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))
        m = sp.csr_matrix((cat(vals, np.float32), (cat(rows, np.int64), cat(cols, np.int64))),
                          shape=(len(texts), self.vocab_size))
        m.sum_duplicates()
        m.sort_indices()
        return m

    def term(self, j: int) -> str:
        """A readable form of vocabulary id j (decoded for byte-level BPE)."""
        tok = self.tokenizer.convert_ids_to_tokens(int(j))
        if self.kind == "causal":
            s = self.tokenizer.decode([int(j)])
            return s if s.strip() else repr(s)
        return tok

    def new_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.mlm, self.fc) if m is not None for p in m.parameters()]


def backbone_identity(path: str, hf_cfg, tokenizer) -> dict:
    vocab = tokenizer.get_vocab()
    h = hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode()).hexdigest()
    return {"path": str(path), "model_type": getattr(hf_cfg, "model_type", None),
            "hidden_size": getattr(hf_cfg, "hidden_size", None),
            "vocab_size": getattr(hf_cfg, "vocab_size", None), "tokenizer_sha256": h[:16]}


# ============================================================================ MLM warm-up

def mlm_warmup(enc: SparseEncoder, texts: list[str], steps: int, batch_size: int = 32,
               lr: float = 1e-3, seed: int = 0, progress: bool = True) -> list[float]:
    """Fit a fresh MLM head (backbone frozen) with BERT's masked-LM objective on ``texts``:
    15% of tokens chosen, 80% -> [MASK], 10% random, 10% kept. Returns the losses."""
    if enc.kind != "encoder" or steps <= 0 or not texts:
        return []
    tok = enc.tokenizer
    mask_id = tok.mask_token_id if tok.mask_token_id is not None else enc.pad_id
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(enc.mlm.parameters(), lr=lr, weight_decay=0.0)
    device = next(enc.parameters()).device
    special = torch.tensor(enc.special_ids or [-1])
    losses = []
    for _ in tqdm(range(steps), desc="MLM-head warm-up", disable=not progress):
        b = enc.tokenize([texts[i] for i in rng.integers(len(texts), size=batch_size)], "item")
        ids, am = b["input_ids"], b["attention_mask"]
        cand = am.bool() & ~torch.isin(ids, special)
        chosen = cand & (torch.rand(ids.shape, generator=g) < 0.15)
        if not chosen.any():
            continue
        r = torch.rand(ids.shape, generator=g)
        inp = ids.clone()
        inp[chosen & (r < 0.8)] = mask_id
        rnd = chosen & (r >= 0.8) & (r < 0.9)
        inp[rnd] = torch.randint(enc.vocab_size, (int(rnd.sum()),), generator=g)
        with torch.no_grad():
            h = enc.hidden_states(inp.to(device), am.to(device))
        logits = enc.logits(h[chosen.to(device)])
        loss = nn.functional.cross_entropy(logits, ids[chosen].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@torch.inference_mode()
def calibrate_head_bias(enc: SparseEncoder, texts: list[str], target_terms: int,
                        n: int = 256, seed: int = 0) -> float:
    """Shift a fresh MLM head's bias by one constant so that a product starts with about
    ``target_terms`` active terms (max-pooled logits > 0). Softmax cross-entropy is blind
    to a constant shift, so the head's MLM predictions do not change; only the starting
    sparsity of ``log(1 + ReLU(.))`` does. Returns the shift."""
    if enc.kind != "encoder" or not texts or target_terms <= 0:
        return 0.0
    rng = np.random.default_rng(seed)
    sample = [texts[i] for i in rng.choice(len(texts), size=min(n, len(texts)), replace=False)]
    device = next(enc.parameters()).device
    pooled = []
    for s in range(0, len(sample), 64):
        b = {k: v.to(device) for k, v in enc.tokenize(sample[s:s + 64], "item").items()}
        x = masked_max(enc.logits(enc.hidden_states(b["input_ids"], b["attention_mask"])),
                       b["attention_mask"])
        if enc.special_ids:
            x[:, enc.special_ids] = float("-inf")
        pooled.append(x.float().cpu())
    x = torch.cat(pooled)
    q = 1.0 - min(1.0, target_terms / x.shape[1])
    shift = float(torch.quantile(x[torch.isfinite(x)][:16_000_000], q))
    enc.mlm.bias.sub_(shift)
    return shift


# ============================================================================ training

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
        from .bm25 import BM25Retriever

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


def train_encoder(enc: SparseEncoder, dataset, cfg: SparseConfig, progress: bool = True) -> list[dict]:
    """Contrastive training on the train split; returns the log (named loss terms every
    ``log_every`` steps, and at the last step)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = next(enc.parameters()).device
    qids = dataset.split("train")
    pairs = _training_pairs(dataset, qids)
    if not pairs:
        raise ValueError(f"{dataset.name}: no training pairs (no train query with a relevant product)")
    steps_per_epoch = math.ceil(len(pairs) / cfg.batch_size)
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    if total <= 0 or cfg.max_steps == 0:
        return []
    pools = mine_negatives(dataset, qids, cfg, progress) if cfg.hard_negatives > 0 else {}
    catalog_ids = dataset.product_ids
    new = {id(p) for p in enc.new_parameters()}
    groups = [{"params": [p for p in enc.parameters() if id(p) not in new], "lr": cfg.lr},
              {"params": [p for p in enc.parameters() if id(p) in new], "lr": cfg.head_lr}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)
    warm = max(1, int(cfg.warmup_ratio * total))
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then linear decay
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    loss_fn = SparseLoss(cfg.lambda_q, cfg.lambda_d, int(cfg.flops_warmup_ratio * total), cfg.norm)
    enc.train()
    log: list[dict] = []
    order = rng.permutation(len(pairs))
    pos = 0
    bar = tqdm(range(total), desc=f"train {cfg.pooling}/{cfg.lrn}", disable=not progress)
    t0 = time.perf_counter()
    for step in bar:
        if pos + cfg.batch_size > len(order):
            order, pos = rng.permutation(len(pairs)), 0
        batch = [pairs[i] for i in order[pos:pos + cfg.batch_size]]
        pos += cfg.batch_size
        bq = [q for q, _ in batch]
        docs = [p for _, p in batch]
        for _ in range(cfg.hard_negatives):
            docs += [_sample_negative(q, pools, rng, catalog_ids, dataset.relevant(q)) for q in bq]
        # a column that is a known positive of q_i (other than its own) is not a negative
        mask = torch.tensor([[j != i and docs[j] in dataset.relevant(q) for j in range(len(docs))]
                             for i, q in enumerate(bq)], device=device)
        qb = {k: v.to(device) for k, v in enc.tokenize([dataset.queries[q] for q in bq], "query").items()}
        db = {k: v.to(device) for k, v in enc.tokenize([dataset.catalog[p] for p in docs], "item").items()}
        qo, do = enc(qb, "query"), enc(db, "item")
        out = loss_fn(qo, do, step, mask)
        opt.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(enc.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            nnz_q = float((qo["rep"] != 0).sum(-1).float().mean())
            nnz_d = float((do["rep"] != 0).sum(-1).float().mean())
        rec = {"step": step + 1, "loss": out["loss"].item(), "rank": out["rank"],
               "flops_q": out["flops_q"], "flops_d": out["flops_d"], "lambda_q": out["lambda_q"],
               "lambda_d": out["lambda_d"], "nnz_q": nnz_q, "nnz_d": nnz_d,
               "seconds": round(time.perf_counter() - t0, 1)}
        bar.set_postfix(loss=f"{rec['loss']:.3f}", rank=f"{rec['rank']:.3f}",
                        fq=f"{rec['flops_q']:.2f}", fd=f"{rec['flops_d']:.2f}",
                        nnz_q=f"{nnz_q:.0f}", nnz_d=f"{nnz_d:.0f}")
        if step == 0 or (step + 1) % cfg.log_every == 0 or step + 1 == total:
            log.append(rec)
    enc.eval()
    return log


# ============================================================================ inverted index

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


# ============================================================================ retriever

class SparseRetriever(Retriever):
    """fit = (MLM-head warm-up) + contrastive training on the train split + indexing the
    catalog; search = encode queries, prune to the top ``query_top_terms`` terms, score
    against the inverted index."""

    kind = "sparse"
    search_settings = ("query_top_terms", "search_batch_size", "encode_batch_size")
    version = 1
    config_class = SparseConfig

    def __init__(self, **cfg):
        self.cfg = self.config_class(**cfg)
        self.encoder: SparseEncoder | None = None
        self.index: InvertedIndex | None = None
        self.train_log: list[dict] = []
        self.info: dict = {}

    def _device(self) -> torch.device:
        return _device(self.cfg.device)

    def fit(self, dataset, progress: bool = True, out_dir=None, **cfg) -> "SparseRetriever":
        """Train on ``dataset``'s train split, then index its catalog. ``cfg`` overrides
        config fields (e.g. ``max_steps``); ``out_dir`` is accepted and unused (the CLI's
        work directory: nothing is written until :meth:`save`)."""
        if cfg:
            known = {f.name for f in fields(self.cfg)}
            bad = sorted(set(cfg) - known)
            if bad:
                raise ValueError(f"unknown {self.kind} setting(s) {bad}; known: {sorted(known)}")
            self.cfg = replace(self.cfg, **cfg)
        torch.manual_seed(self.cfg.seed)
        self._fitted_on(dataset)
        self.encoder = SparseEncoder.from_pretrained(self.cfg, dataset).to(self._device())
        t0 = time.perf_counter()
        if self.encoder.kind == "encoder" and self.encoder.identity.get("mlm_head") != "from checkpoint":
            texts = dataset.titles + [dataset.queries[q] for q in dataset.split("train")]
            mlm = mlm_warmup(self.encoder, texts, self.cfg.mlm_warmup_steps, self.cfg.batch_size,
                             self.cfg.head_lr, self.cfg.seed, progress)
            shift = calibrate_head_bias(self.encoder, dataset.titles, self.cfg.init_doc_terms,
                                        seed=self.cfg.seed)
            self.info["mlm_warmup"] = {"steps": len(mlm), "first_loss": mlm[0] if mlm else None,
                                       "last_loss": float(np.mean(mlm[-10:])) if mlm else None,
                                       "bias_shift": shift}
        self.train_log = train_encoder(self.encoder, dataset, self.cfg, progress)
        self.info["train_seconds"] = round(time.perf_counter() - t0, 1)
        self.index_catalog(dataset, progress)
        return self

    @property
    def product_ids(self) -> list[str]:
        return self.index.product_ids if self.index is not None else []

    def _reindex(self, dataset, progress: bool) -> None:
        """The trained encoder over the new catalog: product representations and the
        inverted index are rebuilt."""
        self._check()
        self.index_catalog(dataset, progress)

    def index_catalog(self, dataset, progress: bool = True) -> None:
        t0 = time.perf_counter()
        D = self.encoder.encode(dataset.titles, "item", progress=progress)
        self.index = InvertedIndex.from_documents(D, dataset.product_ids, self.cfg.seed)
        self.info["index_seconds"] = round(time.perf_counter() - t0, 1)
        self.info["index"] = self.index.stats()

    def _check(self):
        if self.encoder is None or self.index is None:
            raise RuntimeError(f"{type(self).__name__}.search before fit() or load()")

    def encode_queries(self, texts: list[str], prune: bool = True) -> sp.csr_matrix:
        self._check()
        Q = self.encoder.encode(texts, "query")
        return prune_top_terms(Q, self.cfg.query_top_terms) if prune else Q

    def search(self, queries, k: int = 1000, progress: bool = False) -> Run:
        self._check()
        queries = as_queries(queries)
        qids = list(queries)
        run = Run()
        bs = self.cfg.search_batch_size
        for s in tqdm(range(0, len(qids), bs), desc=self.kind, disable=not progress):
            chunk = qids[s:s + bs]
            Q = self.encode_queries([queries[q] for q in chunk])
            for q, (idx, scores) in zip(chunk, self.index.search(Q, k)):
                run.add(q, [self.index.product_ids[i] for i in idx], scores)
        return run

    def explain_batch(self, queries: list[str], k: int = 10, n_terms: int = 15) -> list[dict]:
        """Per query: its ``n_terms`` heaviest terms (``literal``: a token of the query, else
        an expansion) and the products."""
        out = super().explain_batch(queries, k)
        for detail, rec in zip(out, term_case_study(self, queries, n_terms, with_top_product=False)):
            detail["terms"] = rec["terms"]
        return out

    def flops(self, queries) -> float:
        """The # FLOPS figure of these queries (after pruning) against the index."""
        self._check()
        queries = as_queries(queries)
        return flops_figure(self.encode_queries(list(queries.values())), self.index.documents)

    # ---- persistence
    def save(self, path, overwrite: bool = False) -> None:
        self._check()
        from safetensors.torch import save_file

        enc = self.encoder
        heads = {f"mlm.{k}": v for k, v in (enc.mlm.state_dict().items() if enc.mlm else [])}
        heads.update({f"fc.{k}": v for k, v in (enc.fc.state_dict().items() if enc.fc else [])})
        with atomic_dir(path, self.kind, self.version, overwrite, config=asdict(self.cfg),
                        backbone=enc.identity, backbone_kind=enc.kind,
                        index_shape=list(self.index.postings.shape),
                        n_products=len(self.index.product_ids), **self.catalog_info(), info=self.info,
                        train_log=self.train_log) as tmp:
            enc.save_backbone(tmp / "backbone")
            save_file({k: v.detach().contiguous().cpu() for k, v in heads.items()} or
                      {"_empty": torch.zeros(1)}, str(tmp / "heads.safetensors"))
            self.index.save(tmp)

    @classmethod
    @reads_artifact
    def _load(cls, path: Path) -> "SparseRetriever":
        from safetensors.torch import load_file

        manifest = json.loads((path / "manifest.json").read_text())
        known = {f.name for f in fields(cls.config_class)}
        self = cls(**{k: v for k, v in manifest["config"].items() if k in known})
        kind = manifest["backbone_kind"]
        try:
            model, tok = SparseEncoder.load_backbone_dir(path / "backbone", kind)
        except (OSError, ValueError) as e:
            raise ArtifactError(f"{path}: cannot load the saved backbone/tokenizer ({e}); rebuild it") from None
        enc = SparseEncoder(model, tok, kind, self.cfg, identity=manifest.get("backbone", {}))
        heads = load_file(str(path / "heads.safetensors"))
        if enc.mlm is not None:
            enc.mlm.load_state_dict({k[4:]: v for k, v in heads.items() if k.startswith("mlm.")})
        if enc.fc is not None:
            enc.fc.load_state_dict({k[3:]: v for k, v in heads.items() if k.startswith("fc.")})
        self.encoder = enc.to(self._device()).eval()
        self.index = InvertedIndex.load(path, manifest["index_shape"], self.cfg.seed)
        self.train_log = manifest.get("train_log", [])
        self.info = manifest.get("info", {})
        return self


def train_sparse(retriever_cls, dataset, out_dir, progress: bool = True, **cfg) -> SparseRetriever:
    """Fit a sparse retriever on ``dataset`` and save it to ``out_dir``."""
    r = retriever_cls(**cfg).fit(dataset, progress=progress)
    r.save(out_dir)
    return r


# ============================================================================ case study

def term_case_study(retriever: SparseRetriever, queries, n_terms: int = 15,
                    catalog: dict[str, str] | None = None, with_top_product: bool = True) -> list[dict]:
    """Tables 7-8 of seed 002: per query, the top-weighted terms (literal = a token of the
    query itself, else expansion) and the rank-1 product with its top-weighted terms
    (literal = a token of its title; ``catalog`` gives the titles)."""
    retriever._check()
    enc = retriever.encoder
    queries = as_queries(queries)
    qtexts = list(queries.values())
    Q = retriever.encode_queries(qtexts, prune=False)
    run = retriever.search(queries, k=1) if with_top_product else {}
    id_row = {p: i for i, p in enumerate(retriever.index.product_ids)}
    D = retriever.index.documents if with_top_product else None

    def terms_of(row: sp.csr_matrix, text: str, side: str) -> list[dict]:
        lit = set(enc.tokenize([text], side)["input_ids"][0].tolist()) - set(enc.special_ids)
        order = np.lexsort((row.indices, -row.data))[:n_terms]
        return [{"term": enc.term(int(row.indices[i])), "weight": round(float(row.data[i]), 4),
                 "literal": int(row.indices[i]) in lit} for i in order]

    out = []
    for i, (qid, text) in enumerate(queries.items()):
        row = Q[i]
        rec = {"query_id": qid, "query": text, "n_terms": int(row.nnz),
               "terms": terms_of(row, text, "query")}
        rec["n_literal"] = sum(t["literal"] for t in rec["terms"])
        if with_top_product and qid in run and run[qid].ids:
            pid = run[qid].ids[0]
            title = (catalog or {}).get(pid, "")
            drow = D[id_row[pid]]
            rec["top_product"] = {"product_id": pid, "title": title, "n_terms": int(drow.nnz),
                                  "terms": terms_of(drow, title, "item") if title else
                                  [{"term": enc.term(int(j)), "weight": round(float(v), 4), "literal": None}
                                   for j, v in sorted(zip(drow.indices, drow.data), key=lambda x: -x[1])[:n_terms]]}
        out.append(rec)
    return out


def case_study_markdown(study: list[dict], title: str = "Term weights") -> str:
    """Markdown in the manner of seed 002's Tables 7-8: literal terms in **bold**,
    expansion terms in _italics_, weights in parentheses."""
    def fmt(ts):
        return ", ".join((f"**{t['term']}**" if t["literal"] else f"_{t['term']}_" if t["literal"] is False
                          else t["term"]) + f" ({t['weight']:.2f})" for t in ts)
    lines = [f"### {title}", "", "Literal terms (tokens of the text itself) in **bold**, expansion "
             "terms in _italics_; weights in parentheses, highest first.", "",
             "| query | top-weighted query terms | rank-1 product | its top-weighted terms |",
             "|---|---|---|---|"]
    for r in study:
        tp = r.get("top_product") or {}
        cell = lambda s: s.replace("|", "\\|")
        lines.append(f"| {cell(r['query'])} | {cell(fmt(r['terms']))} | "
                     f"{cell(tp.get('title', ''))} | {cell(fmt(tp.get('terms', [])))} |")
    return "\n".join(lines) + "\n"


def write_case_study(retriever: SparseRetriever, queries, out: str | os.PathLike,
                     catalog: dict[str, str] | None = None, n_terms: int = 15,
                     title: str | None = None) -> list[dict]:
    """:func:`term_case_study` written as ``out.json`` and ``out.md``."""
    study = term_case_study(retriever, queries, n_terms, catalog)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(study, indent=2, ensure_ascii=False))
    out.with_suffix(".md").write_text(case_study_markdown(study, title or f"{retriever.kind} term weights"))
    return study
