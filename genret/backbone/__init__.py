"""The causal-LM backbone: load any HF causal LM, or pretrain the embedded default.

:mod:`.tokenizer` holds the tokenizer conventions (markers, ``" " + title`` encoding,
word starts and spans, tokenizer identity), :mod:`.loading` loading and saving
(``genret_backbone.json`` + manifest; why never ``AutoTokenizer`` on our directories),
:mod:`.pretraining` the embedded default (presets, :func:`pretrain`, the cached
:func:`default_backbone`).
"""

from .loading import (FORMAT_VERSION, KIND, MARKER_FILE, backbone_info, is_genret_backbone,
                      load_backbone, load_tokenizer, save_backbone)
from .pretraining import (EMBEDDED, PRESETS, Preset, data_hash, default_backbone, get_preset, model_config,
                          pretrain, resolve_backbone, sequences, train_tokenizer, training_texts)
from .tokenizer import (EOS, ID, MARKERS, QUERY, SEP, SPECIAL_TOKENS, TITLE, BackboneError,
                        SpecialIds, add_markers, encode_text, encode_title, special_ids,
                        tokenizer_identity, word_spans, word_starts)

__all__ = ["EMBEDDED", "EOS", "FORMAT_VERSION", "ID", "KIND", "MARKERS", "MARKER_FILE", "PRESETS", "QUERY",
           "SEP", "SPECIAL_TOKENS", "TITLE", "BackboneError", "Preset", "SpecialIds",
           "add_markers", "backbone_info", "data_hash", "default_backbone", "encode_text",
           "encode_title", "get_preset", "is_genret_backbone", "load_backbone", "load_tokenizer",
           "model_config", "pretrain", "resolve_backbone", "save_backbone", "sequences",
           "special_ids", "tokenizer_identity", "train_tokenizer", "training_texts",
           "word_spans", "word_starts"]
