"""Semantic IDs for generative retrieval: embeddings -> residual-quantised codes -> pruned,
unique, prefix-free token IDs, sand-glass diagnostics and a prefix trie. Standalone."""

from .artifact import SemanticIDError
from .core import SemanticIDConfig, SemanticIDs, build_from_embeddings, build_semantic_ids, sandglass_report
from .encoders import Encoder, embed_texts
from .ids import EOS, EOS_TOKEN, TokenSpace
from .quantizers import RQVAE, ResidualKMeans, make_quantizer
from .trie import PrefixTrie

__all__ = ["SemanticIDConfig", "SemanticIDs", "build_semantic_ids", "build_from_embeddings",
           "sandglass_report", "PrefixTrie", "TokenSpace", "Encoder", "embed_texts",
           "ResidualKMeans", "RQVAE", "make_quantizer", "SemanticIDError", "EOS", "EOS_TOKEN"]
