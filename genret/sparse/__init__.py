"""Learned sparse retrieval shared by SPLADE and PROSPER (seed 002 is the spec).

Modules along the seams: :mod:`.encoder` (settings, building blocks, encoder, MLM-head
warm-up), :mod:`.training` (losses, negatives, the HF Trainer run), :mod:`.index` (the
torch-free inverted index), :mod:`.retriever`, :mod:`.case_study`, :mod:`.presets` (SPLADE,
PROSPER); everything is importable from ``genret.sparse``.

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

from .case_study import case_study_markdown, term_case_study, write_case_study
from .encoder import (ENCODER_TYPES, LRN_MODES, LRN_SIDES, NORMS, POOLINGS, MLMHead, SparseConfig,
                      SparseEncoder, backbone_identity, calibrate_head_bias, last_token_pool, lfw_topk,
                      literal_indicator, lrn_combine, masked_max, mlm_warmup, normalise, quadratic_warmup,
                      saturate)
from .index import InvertedIndex, flops_figure, prune_top_terms
from .presets import ProsperConfig, ProsperRetriever, SpladeConfig, SpladeRetriever
from .retriever import SparseRetriever
from .training import FlopsRegularizer, InfoNCE, SparseLoss, mine_negatives, train_encoder

__all__ = ["ENCODER_TYPES", "LRN_MODES", "LRN_SIDES", "NORMS", "POOLINGS", "FlopsRegularizer", "InfoNCE",
           "InvertedIndex", "MLMHead", "ProsperConfig", "ProsperRetriever", "SparseConfig", "SparseEncoder",
           "SparseLoss", "SparseRetriever", "SpladeConfig", "SpladeRetriever", "backbone_identity",
           "calibrate_head_bias", "case_study_markdown", "flops_figure", "last_token_pool", "lfw_topk",
           "literal_indicator", "lrn_combine", "masked_max", "mine_negatives", "mlm_warmup", "normalise",
           "prune_top_terms", "quadratic_warmup", "saturate", "term_case_study", "train_encoder",
           "write_case_study"]
