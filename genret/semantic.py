"""Semantic-ID generative retrieval (seed 001, the SemanticID-based approach).

Every product gets a semantic ID from :mod:`semantic_id` (residual-quantised codes of its
title embedding, optionally pruned against the sand-glass effect, made unique by a
disambiguation level, closed by an end-of-ID token). The ID tokens (``<L1_23>``, ...)
become new special tokens of the backbone's tokenizer; a causal LM is fine-tuned (LoRA
plus trainable embeddings for the new tokens, or full) on two tasks:

- indexing: ``<|title|> {title}<|id|>`` -> the product's ID, for every catalog product;
- retrieval: ``<|query|> {query}<|id|>`` -> the ID of each relevant product of every
  train-split query;

then optionally preference-optimised with DPO on pairs mined from its own beams. Search
is beam search constrained by the ID trie (:class:`genret.decoding.TrieConstraint`):
every finished beam is exactly one product, scored by the beam's log-probability under
the constraint; products are ranked by that score, ties by a seeded hash of the product
id (never catalog order). A run therefore holds at most ``num_beams`` products.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import cache_dir
from .artifact import ArtifactError
from .decoding import TrieConstraint
from .eval import tiebreak_keys, top_k
from .generative import GenerativeRetriever, preference_pair
from .training import TrainConfig, check_config

PROMPT = "<|query|> {query}<|id|>"
TITLE_PROMPT = "<|title|> {title}<|id|>"
PRUNE_MODES = ("none", "drop", "adaptive")
ID_INITS = ("auto", "codebook", "content", "mean", "random")
DPO_PAIR_RULES = ("mistakes", "all")
CENTRE_PROMPTS = 256  # title prompts whose mean output state centres the "codebook" init


def embedding_cache() -> Path:
    """Where title embeddings are cached: ``$GENRET_CACHE/semantic_id`` (else ``.cache/``)."""
    return cache_dir("semantic_id")


def build_ids(dataset, quantizer: str = "rkmeans", levels: int = 3, codebook: int = 256,
              prune: str = "none", top_k: int = 16, encoder: str | None = None, seed: int = 0,
              progress: bool = True):
    """Semantic IDs of a dataset's catalog from its titles (embeddings cached)."""
    from semantic_id import SemanticIDConfig, build_semantic_ids

    cfg = SemanticIDConfig(quantizer=quantizer, levels=levels, codebook=codebook, prune=prune,
                           top_k=top_k, encoder=encoder, seed=seed)
    return build_semantic_ids(dataset.product_ids, dataset.titles, cfg, cache_dir=embedding_cache(),
                              progress=progress)


@dataclass
class SemanticConfig:
    """Settings of :class:`SemanticIDRetriever`; defaults fit a CPU.

    ``sid``: a directory from ``genret sid build`` (or ``SemanticIDs.save``); without it
    the IDs are built from the titles with ``quantizer``/``levels``/``codebook``/``encoder``.
    ``prune`` None keeps the pruning of the ``sid`` directory ("none" when building);
    a mode re-prunes the same codes (no refit) with ``top_k`` for "adaptive".
    ``max_new_tokens`` None = the longest ID + 1 (its end-of-ID token).
    """

    sid: str | None = None
    quantizer: str = "rkmeans"
    levels: int = 3
    codebook: int = 256
    prune: str | None = None
    top_k: int = 16
    encoder: str | None = None
    backbone: str | None = None  # HF name/path, "minilm" or "embedded"; None = MiniLM unless preset is given
    preset: str | None = None  # tiny | small: genret's embedded LM of this size (genret.backbone.resolve_backbone)
    seed: int = 0
    num_beams: int = 20
    max_new_tokens: int | None = None
    decode_batch_size: int = 8
    indexing_examples: bool = True  # title -> ID for every product
    id_init: str = "auto"  # new ID-token rows: auto | codebook | content | mean | random (init_id_embeddings)
    dpo_queries: int = 2000  # train queries whose beams are mined for preference pairs
    dpo_pairs: str = "mistakes"  # which mined queries give a pair (SemanticIDRetriever._pair); dev choice
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.dpo_pairs not in DPO_PAIR_RULES:
            raise ValueError(f"dpo_pairs must be one of {', '.join(DPO_PAIR_RULES)}, got {self.dpo_pairs!r}")
        if self.prune is not None and self.prune not in PRUNE_MODES:
            raise ValueError(f"prune must be one of {', '.join(PRUNE_MODES)} (or None), got {self.prune!r}")
        if self.id_init not in ID_INITS:
            raise ValueError(f"id_init must be one of {', '.join(ID_INITS)}, got {self.id_init!r}")
        check_config(self, "", num_beams=">= 1", max_new_tokens=">= 1", decode_batch_size=">= 1",
                     dpo_queries=">= 1", seed=">= 0")


class SemanticIDRetriever(GenerativeRetriever):
    """Query -> trie-constrained beam search over semantic IDs -> one product per beam."""

    kind = "gr-sid"
    config_class = SemanticConfig
    prompt = PROMPT
    search_settings = ("num_beams", "max_new_tokens", "decode_batch_size")

    def __init__(self, stage: str = "sft", init: str | None = None, **cfg):
        super().__init__(stage, init, **cfg)
        self.sids = None
        self.token_map = np.zeros(0, dtype=np.int64)

    # -- setup ---------------------------------------------------------------
    @property
    def product_ids(self) -> list[str]:
        return self.sids.item_ids

    def _semantic_ids(self, dataset, progress: bool = False):
        from semantic_id import SemanticIDs

        c = self.cfg
        if c.sid:
            sids = SemanticIDs.load(c.sid)
            if c.prune is not None and (c.prune != sids.config.prune
                                        or (c.prune == "adaptive" and c.top_k != sids.config.top_k)):
                sids = sids.with_pruning(c.prune, c.top_k)
        else:
            sids = build_ids(dataset, c.quantizer, c.levels, c.codebook, c.prune or "none", c.top_k,
                             c.encoder, c.seed, progress=progress)
        return sids

    def _check_catalog(self, dataset) -> None:
        have, want = set(self.sids.item_ids), set(dataset.product_ids)
        if have != want:
            missing, extra = len(want - have), len(have - want)
            raise ValueError(f"the semantic IDs cover another catalog ({missing} of the dataset's "
                             f"{len(want)} products have no ID, {extra} IDs name unknown products); "
                             "rebuild them with `genret sid build --data` on this dataset")

    def add_id_tokens(self, titles: list[str] | None = None) -> list[str]:
        """Make the ID tokens special tokens of the tokenizer (resizing the embeddings) and
        set ``token_map`` (ID token -> tokenizer id; the end-of-ID token -> EOS). New rows
        are initialised by :meth:`init_id_embeddings` (``titles``: one per ID item, for the
        "content" init). Returns the tokens that were new."""
        if self.cfg.id_init == "codebook":
            self._codebooks()  # refused before the tokenizer or the model change
        tokens = self.sids.space.tokens()[1:]
        vocab = self.tokenizer.get_vocab()
        new = [t for t in tokens if t not in vocab]
        if new:
            self.tokenizer.add_special_tokens({"additional_special_tokens": new},
                                              replace_extra_special_tokens=False)
        if len(self.tokenizer) > self.model.get_input_embeddings().num_embeddings:
            self.model.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        self.token_map = self._token_map()
        if new:
            self.init_id_embeddings(self.tokenizer.convert_tokens_to_ids(new), titles)
        return new

    def init_id_embeddings(self, rows: list[int], titles: list[str] | None = None) -> None:
        """Initialise the embedding rows ``rows`` of new ID tokens.

        "content": each ID token starts at the mean bag-of-tokens embedding of the titles
        of the items whose ID holds it (so ``<L1_23>`` starts where its cluster's titles
        are), rescaled to the mean norm of the existing rows; tokens no item holds, and
        all of them without ``titles``, fall back to "mean". "mean": every row at the mean
        of the existing rows (what HF's mean resizing amounts to: it samples with 1e-9 x
        their covariance). "random": normal with the mean and per-dimension spread of the
        existing rows, so ID tokens start distinct and on the scale of real tokens.
        "codebook": a level-l token starts at its code's residual k-means centroid (the ID
        encoder's space; it must have the backbone's hidden size, as MiniLM IDs on MiniLM
        do), scaled by one factor (mean old row norm / mean level-1 centroid norm), and
        its output bias (where the head has one) is minus the row's dot product with the
        mean output state of up to ``CENTRE_PROMPTS`` title prompts, so a first ID token's
        logit starts as (state - mean state) . centroid; dedup tokens get the mean row.
        "auto": content for full fine-tuning; for LoRA codebook where it fits (residual
        k-means IDs of the backbone's width: MiniLM IDs on MiniLM, chosen on dev in
        docs/semantic_gr.md), else random. Measured in
        docs/semantic_gr.md: full FT learns faster from mean than from random rows, and
        faster still from content rows; LoRA + trainable tokens barely learns from mean
        rows (the frozen final norm caps the logit scale) and learns from random ones.
        """
        emb = self.model.get_input_embeddings().weight
        rows_t = torch.as_tensor(rows, dtype=torch.long)
        old = torch.ones(emb.shape[0], dtype=torch.bool)
        old[rows_t] = False
        mode = self.cfg.id_init
        if mode == "auto":
            mode = "content" if self.cfg.train.full else "codebook" if self._codebook_fits() else "random"
        with torch.no_grad():
            ref = emb[old]
            vec = torch.zeros(len(rows), emb.shape[1], dtype=emb.dtype)
            if mode == "random":
                g = torch.Generator().manual_seed(self.cfg.seed)
                vec = torch.randn(len(rows), emb.shape[1], generator=g, dtype=emb.dtype)
            new = ref.mean(0) + vec * ref.std(0)
            pos = {int(t): j for j, t in enumerate(self.token_map) if j > 0}  # tokenizer id -> ID-space index
            sel = [pos[int(r)] for r in rows]
            held = None
            if mode == "codebook":
                held = self._codebook_rows(sel, new, ref)
            if mode == "content" and titles is not None:
                sums, counts = self._content_sums(titles, emb)
                sel_t = torch.as_tensor(sel)
                kept = counts[sel_t] > 0
                cen = sums[sel_t][kept] / counts[sel_t][kept, None]
                new[kept] = cen * (ref.norm(dim=1).mean() / cen.norm(dim=1, keepdim=True).clamp_min(1e-9))
            emb[rows_t] = new
            out = self.model.get_output_embeddings()
            if out is not None and out.weight.data_ptr() != emb.data_ptr():
                out.weight[rows_t] = emb[rows_t]
            if held is not None and held.any() and titles and getattr(out, "bias", None) is not None:
                out.bias[rows_t[held]] = -(new[held] @ self._mean_output_state(titles))

    def _codebook_fits(self) -> bool:
        try:
            return self._codebooks() is not None
        except ValueError:
            return False

    def _codebooks(self) -> np.ndarray:
        """The quantiser's (levels, codebook, dim) centroids, refused where they cannot seed
        the ID-token rows."""
        books = getattr(self.sids.quantizer, "codebooks", None)
        if books is None:
            raise ValueError(f"id_init='codebook' needs residual k-means IDs (codebooks in the encoder's "
                             f"space); these IDs use {self.sids.config.quantizer!r}: use id_init='content'")
        width = self.model.get_input_embeddings().weight.shape[1]
        if books.shape[-1] != width:
            raise ValueError(f"id_init='codebook' needs the ID encoder's dimension ({books.shape[-1]}) to "
                             f"equal the backbone's hidden size ({width}); use id_init='content'")
        return books

    def _codebook_rows(self, sel: list[int], new: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """The "codebook" rows of :meth:`init_id_embeddings`: ID-space indices ``sel`` of
        levels 1..L set in ``new`` to their scaled centroids (dedup tokens keep the mean
        row); returns which were set."""
        books = torch.as_tensor(np.asarray(self._codebooks()), dtype=new.dtype)
        scale = ref.norm(dim=1).mean() / books[0].norm(dim=1).mean().clamp_min(1e-9)
        pairs = [self.sids.space.pair(j) for j in sel]
        held = torch.tensor([lv <= books.shape[0] for lv, _ in pairs])
        if held.any():  # (a re-index may add dedup tokens only)
            new[held] = scale * torch.stack([books[lv - 1, c] for lv, c in pairs if lv <= books.shape[0]])
        return held

    def _mean_output_state(self, titles: list[str]) -> torch.Tensor:
        """Mean input of the output layer at the last position of up to ``CENTRE_PROMPTS``
        title prompts (a seeded sample): what every next-token state shares."""
        rng = np.random.default_rng(self.cfg.seed)
        pick = rng.choice(len(titles), min(CENTRE_PROMPTS, len(titles)), replace=False)
        states = []
        hook = self.model.get_output_embeddings().register_forward_pre_hook(
            lambda _m, args: states.append(args[0][:, -1]))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for i in pick:  # one at a time: no padding, the last position is the prompt's end
                    ids = self.tokenizer(TITLE_PROMPT.format(title=titles[i]), add_special_tokens=False)["input_ids"]
                    self.model(input_ids=torch.tensor([ids]))
        finally:
            hook.remove()
            self.model.train(was_training)
        return torch.cat(states).mean(0)

    def _content_sums(self, titles: list[str], emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per token of the ID space: the sum of its items' mean title-token embeddings,
        and how many items hold it (items with an empty title count for nothing)."""
        if len(titles) != len(self.sids):
            raise ValueError(f"content init needs one title per ID item ({len(self.sids)}), got {len(titles)}")
        enc = self.tokenizer(list(titles), add_special_tokens=False)["input_ids"]
        sizes = torch.tensor([len(ids) for ids in enc])
        flat = torch.tensor([t for ids in enc for t in ids], dtype=torch.long)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)[:-1]])
        title_vecs = torch.nn.functional.embedding_bag(flat, emb, offsets, mode="mean")
        item = np.repeat(np.arange(len(self.sids)), self.sids.lengths + 1)
        keep = (self.sids.tokens != 0) & (sizes.numpy()[item] > 0)  # no end-of-ID token, no empty title
        toks = torch.as_tensor(self.sids.tokens[keep], dtype=torch.long)
        sums = torch.zeros(self.sids.space.vocab_size, emb.shape[1], dtype=emb.dtype)
        sums.index_add_(0, toks, title_vecs[torch.as_tensor(item[keep])])
        counts = torch.bincount(toks, minlength=len(sums)).to(emb.dtype)
        return sums, counts

    def _token_map(self) -> np.ndarray:
        ids = self.tokenizer.convert_tokens_to_ids(self.sids.space.tokens()[1:])
        unk = self.tokenizer.unk_token_id
        if any(i is None or (unk is not None and i == unk) for i in ids):
            raise ArtifactError("the tokenizer lacks some semantic-ID tokens; rebuild the retriever")
        return np.array([self.tokenizer.eos_token_id, *ids], dtype=np.int64)

    def _prepare(self) -> None:
        self.constraint = TrieConstraint(self.sids.trie, self.token_map, self.tokenizer.eos_token_id)
        self.keys = tiebreak_keys(self.sids.item_ids, self.cfg.seed)
        self.index = {p: i for i, p in enumerate(self.sids.item_ids)}

    def id_text(self, i: int) -> str:
        """The ID of item ``i`` as a string of its tokens (no end-of-ID token)."""
        return "".join(self.sids.token_strings(i)[:-1])

    def id_token_ids(self, i: int) -> list[int]:
        """Tokenizer ids of item ``i``'s ID (no end-of-ID / EOS)."""
        return self.token_map[self.sids.ids[i][:-1]].tolist()

    # -- training data -------------------------------------------------------
    def examples(self, dataset, rng: np.random.Generator) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, ID token ids): train-split queries x relevant products, plus one
        title -> ID indexing example per product."""
        enc = lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        out = []
        for q in dataset.split("train"):
            prompt = enc(PROMPT.format(query=dataset.queries[q]))
            for p in sorted(dataset.relevant(q)):
                out.append((prompt, self.id_token_ids(self.index[p])))
        if self.cfg.indexing_examples:
            for p, title in dataset.catalog.items():
                out.append((enc(TITLE_PROMPT.format(title=title)), self.id_token_ids(self.index[p])))
        rng.shuffle(out)
        return out

    # -- fit -----------------------------------------------------------------
    def _start(self, dataset, init, progress: bool) -> None:
        """The IDs: from ``init`` (a different ``prune`` refused; the config records the
        IDs' settings), else loaded from ``sid`` or built from the titles."""
        if init is None:
            self.sids = self._semantic_ids(dataset, progress)
            return
        self.sids = init.sids
        sc = self.sids.config
        if self.cfg.prune is not None and self.cfg.prune != sc.prune:
            raise ValueError(f"--init {self.init} was trained on IDs with prune={sc.prune!r}, not "
                             f"{self.cfg.prune!r}; start from a model trained with the same pruning")
        self.cfg.prune, self.cfg.levels, self.cfg.codebook = sc.prune, sc.levels, sc.codebook
        self.cfg.quantizer, self.cfg.top_k = sc.quantizer, sc.top_k

    def _setup_catalog(self, dataset) -> None:
        self._check_catalog(dataset)
        self._index_ids(dataset, "id_tokens_added")

    def _trainable_tokens(self) -> list[int] | None:
        return None if self.cfg.train.full else self.token_map[1:].tolist()

    def _index_ids(self, dataset, counter: str) -> None:
        """Titles, ID tokens (new ones initialised by :meth:`init_id_embeddings`; their number
        goes to ``info[counter]``), trie constraint and ID statistics for ``self.sids``."""
        self.titles = dict(dataset.catalog)
        new = self.add_id_tokens([self.titles[p] for p in self.sids.item_ids])
        self._prepare()
        rep = self.sids.report()
        self.info.update(sid={k: rep[k] for k in ("n_items", "quantizer", "levels_x_codebook", "prune",
                                                   "pruned_level", "collision_rate", "mean_length",
                                                   "max_length", "vocab_size")})
        self.info[counter] = len(new)

    def _reindex(self, dataset, progress: bool) -> None:
        """The trained model over the new catalog: products it was trained on keep their
        IDs (a retitled product too: the model learned it); new ones get IDs from the saved
        quantiser with its codebooks frozen (:meth:`semantic_id.SemanticIDs.reindex`:
        same encoder, same pruning rule, collisions resolved on the disambiguation level);
        the trie is rebuilt and ID tokens the new IDs need are added to the tokenizer and
        the model, initialised as at training time."""
        self.sids = self.sids.reindex(dataset.product_ids, dataset.titles, cache_dir=embedding_cache(),
                                      progress=progress)
        self._index_ids(dataset, "id_tokens_added_by_reindex")
        self.model.eval()

    def _pair(self, hyps, relevant: dict) -> tuple[str, str, bool] | None:
        """``dpo_pairs="all"``: chosen = the best beam that is a relevant product (else the
        gold ID of the query's best-graded relevant product), rejected = the best beam that
        is a non-relevant product; no pair without one. ``"mistakes"``: the multispan rule
        (:func:`preference_pair`): only a query whose top beam is not relevant and a lower
        beam is gives a pair (that beam over the top one)."""
        beams = self.beams(hyps)[0]
        if self.cfg.dpo_pairs == "mistakes":
            pair = preference_pair(beams, [self.sids.item_ids[i] in relevant for i, _, _ in beams])
            return None if pair is None else (self.id_text(pair[0][0]), self.id_text(pair[1][0]), True)
        chosen = next((i for i, _, _ in beams if self.sids.item_ids[i] in relevant), None)
        rejected = next((i for i, _, _ in beams if self.sids.item_ids[i] not in relevant), None)
        if rejected is None:
            return None
        from_beams = chosen is not None
        if not from_beams:
            gold = [self.index[p] for p in relevant]
            chosen = min(gold, key=lambda i: (-relevant[self.sids.item_ids[i]], self.keys[i]))
        return self.id_text(chosen), self.id_text(rejected), from_beams

    # -- search --------------------------------------------------------------
    def _max_new_tokens(self) -> int:
        return self.cfg.max_new_tokens or int(self.sids.lengths.max()) + 1

    def beams(self, hyps) -> tuple[list[tuple[int, float, object]], int]:
        """(item index, score, hypothesis) per valid beam, best first, and the number of
        beams dropped: beam-search filler with a -inf/-1e9 score (fewer valid IDs than
        beams) or, which the trie constraint rules out, output that is no complete ID."""
        out, dropped = [], 0
        for h in hyps:
            items = self.constraint.items(h.tokens)
            if not np.isfinite(h.score) or h.score <= -1e8 or len(items) == 0:
                dropped += 1
                continue
            out.extend((int(i), float(h.score), h) for i in items)  # one item after dedup
        return out, dropped

    def _rank(self, hyps, k: int) -> tuple[list[str], np.ndarray, list]:
        """Products by their best beam's score; the evidence is :meth:`beams`."""
        beams = self.beams(hyps)[0]
        best: dict[int, float] = {}
        for i, s, _ in beams:
            best[i] = max(s, best.get(i, -np.inf))
        items = np.fromiter(best, dtype=np.int64, count=len(best))
        scores = np.fromiter(best.values(), dtype=np.float64, count=len(best))
        order = top_k(scores, k, self.keys[items])
        return [self.sids.item_ids[i] for i in items[order]], scores[order], beams

    def _explain(self, hyps, beams: list) -> dict:
        """The decoded IDs with their products."""
        return {"beams": [{"id": self.id_text(i), "score": s, "product": self.sids.item_ids[i]}
                          for i, s, _ in beams],
                "ids": {self.id_text(i): self.sids.item_ids[i] for i, _, _ in beams}}

    # -- storage -------------------------------------------------------------
    def _manifest(self) -> dict:
        return {"id_tokens": len(self.token_map) - 1}

    def _save_files(self, tmp: Path) -> None:
        self.sids.save(tmp / "sid")
        np.save(tmp / "token_map.npy", self.token_map)

    def _load_files(self, path: Path, manifest: dict) -> None:
        from semantic_id import SemanticIDError, SemanticIDs

        try:
            self.sids = SemanticIDs.load(path / "sid", verify=False)
        except SemanticIDError as e:
            raise ArtifactError(str(e)) from None
        self.token_map = self._token_map()
        saved = np.load(path / "token_map.npy", allow_pickle=False)
        if not np.array_equal(saved, self.token_map):
            raise ArtifactError(f"{path}: the semantic-ID tokens map to other tokenizer ids than "
                                "at training time; retrain the retriever")
        self._prepare()
