"""The sparse encoder and its settings: text -> vocabulary-sized representation (SPLADE or
PROSPER by :class:`SparseConfig`), the equations' building blocks, the MLM head MiniLM lacks
and its warm-up."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from tqdm.auto import tqdm

from ..minilm import minilm_path


POOLINGS = ("max", "last")
LRN_MODES = ("none", "residual", "add")
LRN_SIDES = ("both", "query", "item")
NORMS = ("none", "q", "d", "all", "q-l1")
ENCODER_TYPES = ("bert", "roberta", "distilbert", "xlm-roberta", "electra", "mpnet", "albert",
                 "deberta", "deberta-v2", "camembert", "modernbert")



@dataclass
class SparseConfig:
    """Every switch of the sparse encoders, their training and their retrieval.

    SPLADE and PROSPER subclass this with their own defaults (:mod:`.presets`); the
    fields are the same, so any ablation is a keyword away.
    """

    # --- model
    backbone: str | None = None       # HF path, "minilm" (the packaged all-MiniLM-L6-v2) or
                                      # "embedded"; None = MiniLM unless preset is given
    preset: str | None = None         # tiny | small: genret's embedded LM of this size, pretrained
                                      # on first use and cached (genret.backbone.resolve_backbone)
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
    save_steps: int = 500             # checkpoint every this many steps (into fit's out_dir)
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
        if self.batch_size < 1 or self.log_every < 1 or self.save_steps < 1:
            raise ValueError("batch_size, log_every and save_steps must be >= 1")


# config fields that change no trained weight (a checkpoint is resumed across them)
UNKEYED = ("log_every", "save_steps", "query_top_terms", "encode_batch_size", "search_batch_size", "device")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)



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



def _backbone_kind(config, requested: str) -> str:
    if requested != "auto":
        return requested
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        return "causal"
    if getattr(config, "model_type", "") in ENCODER_TYPES or getattr(config, "is_encoder_decoder", False):
        return "encoder"
    return "causal"


def _resolve_backbone(name: str | None, dataset=None, preset: str | None = None, seed: int = 0) -> str:
    """A loadable path: :func:`genret.backbone.resolve_backbone`, "minilm" mapped to the
    packaged weights."""
    from ..backbone import resolve_backbone

    path = resolve_backbone(name, preset, dataset, seed)
    return minilm_path() if path == "minilm" else path


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
            from ..backbone import is_genret_backbone, load_backbone

            model, tok = load_backbone(path)
        enc = cls(model, tok, kind, cfg, identity=backbone_identity(path, hf_cfg, tok))
        if kind == "encoder":
            enc._load_mlm_head(Path(path))
        else:
            enc.identity["genret_backbone"] = is_genret_backbone(path)
        return enc

    def save_backbone(self, d: Path) -> None:
        if self.kind == "causal" and self.identity.get("genret_backbone"):
            from ..backbone import save_backbone

            save_backbone(self.model, self.tokenizer, d)
        else:
            self.model.save_pretrained(d, safe_serialization=True)
            self.tokenizer.save_pretrained(d)

    @staticmethod
    def load_backbone_dir(d: Path, kind: str):
        from transformers import AutoModel, AutoTokenizer

        if kind == "encoder":
            return AutoModel.from_pretrained(d), AutoTokenizer.from_pretrained(d)
        from ..backbone import load_backbone

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
