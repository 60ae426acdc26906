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

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see genret.backbone

import numpy as np  # noqa: E402
import torch  # noqa: E402

from .artifact import ArtifactError, atomic_dir, read_manifest, reads_artifact  # noqa: E402
from .decoding import TrieConstraint, constrained_beam_search  # noqa: E402
from .eval import Run, tiebreak_keys, top_k  # noqa: E402
from .retriever import Retriever, as_queries  # noqa: E402
from .training import TrainConfig, check_config, dpo, sft, work_dir  # noqa: E402

PROMPT = "<|query|> {query}<|id|>"
TITLE_PROMPT = "<|title|> {title}<|id|>"
PRUNE_MODES = ("none", "drop", "adaptive")
ID_INITS = ("auto", "content", "mean", "random")


def embedding_cache() -> Path:
    """Where title embeddings are cached: ``$GENRET_CACHE/semantic_id`` (else ``.cache/``)."""
    return Path(os.environ.get("GENRET_CACHE") or Path.cwd() / ".cache") / "semantic_id"


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
    backbone: str | None = None  # HF name/path; None = the embedded default, pretrained here
    preset: str = "small"
    seed: int = 0
    num_beams: int = 20
    max_new_tokens: int | None = None
    decode_batch_size: int = 8
    indexing_examples: bool = True  # title -> ID for every product
    id_init: str = "auto"  # new ID-token embeddings: auto | content | mean | random (init_id_embeddings)
    dpo_queries: int = 2000  # train queries whose beams are mined for preference pairs
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.prune is not None and self.prune not in PRUNE_MODES:
            raise ValueError(f"prune must be one of {', '.join(PRUNE_MODES)} (or None), got {self.prune!r}")
        if self.id_init not in ID_INITS:
            raise ValueError(f"id_init must be one of {', '.join(ID_INITS)}, got {self.id_init!r}")
        check_config(self, "", num_beams=">= 1", max_new_tokens=">= 1", decode_batch_size=">= 1",
                     dpo_queries=">= 1", seed=">= 0")


class SemanticIDRetriever(Retriever):
    """Query -> trie-constrained beam search over semantic IDs -> one product per beam."""

    kind = "gr-sid"
    search_settings = ("num_beams", "max_new_tokens", "decode_batch_size")

    def __init__(self, stage: str = "sft", init: str | None = None, **cfg):
        if stage not in ("sft", "dpo"):
            raise ValueError(f"stage must be 'sft' or 'dpo', got {stage!r}")
        train = cfg.pop("train", {}) or {}
        self.cfg = SemanticConfig(**cfg, train=train if isinstance(train, TrainConfig) else TrainConfig(**train))
        self.stage, self.init = stage, init
        self.model = self.tokenizer = self.sids = self.constraint = None
        self.token_map = np.zeros(0, dtype=np.int64)
        self.titles: dict[str, str] = {}
        self.info: dict = {}

    # -- setup ---------------------------------------------------------------
    @property
    def tokenizer_identity(self) -> str:
        from .backbone import tokenizer_identity

        return tokenizer_identity(self.tokenizer)

    @property
    def product_ids(self) -> list[str]:
        return self.sids.item_ids

    def _semantic_ids(self, dataset):
        from semantic_id import SemanticIDs

        c = self.cfg
        if c.sid:
            sids = SemanticIDs.load(c.sid)
            if c.prune is not None and (c.prune != sids.config.prune
                                        or (c.prune == "adaptive" and c.top_k != sids.config.top_k)):
                sids = sids.with_pruning(c.prune, c.top_k)
        else:
            sids = build_ids(dataset, c.quantizer, c.levels, c.codebook, c.prune or "none", c.top_k,
                             c.encoder, c.seed, progress=c.train.progress)
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
        "auto": content for full fine-tuning, random for LoRA. Measured in
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
            mode = "content" if self.cfg.train.full else "random"
        with torch.no_grad():
            ref = emb[old]
            vec = torch.zeros(len(rows), emb.shape[1], dtype=emb.dtype)
            if mode == "random":
                g = torch.Generator().manual_seed(self.cfg.seed)
                vec = torch.randn(len(rows), emb.shape[1], generator=g, dtype=emb.dtype)
            new = ref.mean(0) + vec * ref.std(0)
            if mode == "content" and titles is not None:
                sums, counts = self._content_sums(titles, emb)
                pos = {int(t): j for j, t in enumerate(self.token_map) if j > 0}
                sel = torch.as_tensor([pos[r] for r in rows])
                held = counts[sel] > 0
                cen = sums[sel][held] / counts[sel][held, None]
                new[held] = cen * (ref.norm(dim=1).mean() / cen.norm(dim=1, keepdim=True).clamp_min(1e-9))
            emb[rows_t] = new
            out = self.model.get_output_embeddings()
            if out is not None and out.weight.data_ptr() != emb.data_ptr():
                out.weight[rows_t] = emb[rows_t]

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
        self.max_new_tokens = self.cfg.max_new_tokens or int(self.sids.lengths.max()) + 1
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
    def _load_start(self, dataset) -> None:
        from .backbone import default_backbone, load_backbone

        if self.init:
            other = SemanticIDRetriever.load(self.init)
            self.model, self.tokenizer, self.sids = other.model, other.tokenizer, other.sids
            self.info = dict(other.info)
            sc = self.sids.config
            if self.cfg.prune is not None and self.cfg.prune != sc.prune:
                raise ValueError(f"--init {self.init} was trained on IDs with prune={sc.prune!r}, not "
                                 f"{self.cfg.prune!r}; start from a model trained with the same pruning")
            # the IDs come with the model: record what they are
            self.cfg.prune, self.cfg.levels, self.cfg.codebook = sc.prune, sc.levels, sc.codebook
            self.cfg.quantizer, self.cfg.top_k = sc.quantizer, sc.top_k
        else:
            path = self.cfg.backbone or default_backbone(dataset, self.cfg.preset, self.cfg.seed,
                                                         progress=self.cfg.train.progress)
            self.model, self.tokenizer = load_backbone(path)
            self.info = {"backbone": str(path)}
            self.sids = self._semantic_ids(dataset)

    def fit(self, dataset, out_dir: str | None = None, **_) -> "SemanticIDRetriever":
        """SFT (stage 'sft'), or SFT-then-DPO / DPO on ``init`` (stage 'dpo'). Training
        state goes to ``out_dir`` (its ``sft``/``dpo`` folders; a re-run with the same
        settings and data resumes there), else to a temporary folder."""
        torch.manual_seed(self.cfg.seed)
        rng = np.random.default_rng(self.cfg.seed)
        self._fitted_on(dataset)
        self._load_start(dataset)
        self._check_catalog(dataset)
        self._index_ids(dataset, "id_tokens_added")
        with work_dir(out_dir, "genret-sid-") as work:
            if not (self.init and self.info.get("stage") in ("sft", "dpo")):
                ex = self.examples(dataset, rng)
                t0 = time.perf_counter()
                trainable = None if self.cfg.train.full else self.token_map[1:].tolist()
                self.model = sft(self.model, self.tokenizer, ex, work / "sft", self.cfg.train,
                                 trainable_tokens=trainable)
                self.info.update(stage="sft", sft_examples=len(ex), sft_seconds=time.perf_counter() - t0)
            if self.stage == "dpo":
                t0 = time.perf_counter()
                pairs, stats = self.mine_pairs(dataset, rng)
                self.model = dpo(self.model, self.tokenizer, pairs, work / "dpo", self.cfg.train)
                self.info.update(stage="dpo", dpo_pairs=len(pairs), dpo_seconds=time.perf_counter() - t0, **stats)
        self.model.eval()
        return self

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

    def mine_pairs(self, dataset, rng: np.random.Generator) -> tuple[list[dict], dict]:
        """Preference pairs from the model's own beams on train queries: chosen = the best
        beam that is a relevant product (else the gold ID of the query's best-graded
        relevant product), rejected = the best beam that is a non-relevant product."""
        qids = [q for q in dataset.split("train") if dataset.relevant(q)]
        qids = [qids[i] for i in rng.permutation(len(qids))[: self.cfg.dpo_queries]]
        hyps = self.decode([dataset.queries[q] for q in qids], progress=self.cfg.train.progress)
        pairs, from_beams = [], 0
        for q, hs in zip(qids, hyps):
            rel = dataset.relevant(q)
            beams = self.beams(hs)[0]
            chosen = next((i for i, _, _ in beams if self.sids.item_ids[i] in rel), None)
            rejected = next((i for i, _, _ in beams if self.sids.item_ids[i] not in rel), None)
            if rejected is None:
                continue
            if chosen is None:
                gold = [self.index[p] for p in rel]
                chosen = min(gold, key=lambda i: (-rel[self.sids.item_ids[i]], self.keys[i]))
            else:
                from_beams += 1
            pairs.append({"prompt": PROMPT.format(query=dataset.queries[q]),
                          "chosen": self.id_text(chosen), "rejected": self.id_text(rejected)})
        return pairs, {"dpo_queries_mined": len(qids), "dpo_chosen_from_beams": from_beams}

    # -- search --------------------------------------------------------------
    def decode(self, texts: list[str], prompt: str = PROMPT, progress: bool = False):
        """Trie-constrained beam search; ``prompt`` is PROMPT (queries) or TITLE_PROMPT."""
        if self.model is None:
            raise RuntimeError("SemanticIDRetriever used before fit() or load()")
        return constrained_beam_search(self.model, self.tokenizer, texts, self.constraint,
                                       num_beams=self.cfg.num_beams, max_new_tokens=self.max_new_tokens,
                                       prompt=prompt.replace("{title}", "{query}"),
                                       batch_size=self.cfg.decode_batch_size, progress=progress)

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

    def _rank(self, hyps, k: int) -> tuple[list[str], np.ndarray]:
        best: dict[int, float] = {}
        for i, s, _ in self.beams(hyps)[0]:
            best[i] = max(s, best.get(i, -np.inf))
        items = np.fromiter(best, dtype=np.int64, count=len(best))
        scores = np.fromiter(best.values(), dtype=np.float64, count=len(best))
        order = top_k(scores, k, self.keys[items])
        return [self.sids.item_ids[i] for i in items[order]], scores[order]

    def search(self, queries, k: int = 1000, progress: bool = False, prompt: str = PROMPT) -> Run:
        queries = as_queries(queries)
        run = Run()
        for qid, hs in zip(queries, self.decode(list(queries.values()), prompt, progress)):
            ids, scores = self._rank(hs, k)
            run.add(qid, ids, scores)
        return run

    def explain_batch(self, queries: list[str], k: int = 10) -> list[dict]:
        """Per query: the decoded IDs with their products, and the ranked products; one
        decode for all."""
        out = []
        for query, hs in zip(queries, self.decode(list(as_queries(queries).values()))):
            beams = self.beams(hs)[0]
            ids, scores = self._rank(hs, k)
            out.append({"query": query,
                        "beams": [{"id": self.id_text(i), "score": s, "product": self.sids.item_ids[i]}
                                  for i, s, _ in beams],
                        "ids": {self.id_text(i): self.sids.item_ids[i] for i, _, _ in beams},
                        "products": self._products(ids, scores)})
        return out

    # -- storage -------------------------------------------------------------
    def save(self, path, overwrite: bool = False) -> None:
        from .backbone import save_backbone

        if self.model is None:
            raise RuntimeError("SemanticIDRetriever.save before fit()")
        with atomic_dir(path, self.kind, self.version, overwrite, config=asdict(self.cfg), info=self.info,
                        tokenizer=self.tokenizer_identity, n_products=len(self.sids), **self.catalog_info(),
                        id_tokens=len(self.token_map) - 1) as tmp:
            save_backbone(self.model, self.tokenizer, tmp / "model", preset=self.cfg.preset)
            self.sids.save(tmp / "sid")
            np.save(tmp / "token_map.npy", self.token_map)
            (tmp / "titles.json").write_text(json.dumps([self.titles.get(p, "") for p in self.sids.item_ids]))

    @classmethod
    @reads_artifact
    def _load(cls, path: Path) -> "SemanticIDRetriever":
        from semantic_id import SemanticIDError, SemanticIDs

        from .backbone import load_backbone

        manifest = read_manifest(path, verify=False)  # Retriever.load verified every file below
        self = cls(**manifest["config"])
        self.info = manifest.get("info", {})
        self.stage = self.info.get("stage", "sft")
        try:
            self.sids = SemanticIDs.load(path / "sid", verify=False)
        except SemanticIDError as e:
            raise ArtifactError(str(e)) from None
        self.model, self.tokenizer = load_backbone(path / "model", verify=False)
        if self.tokenizer_identity != manifest["tokenizer"]:
            raise ArtifactError(f"{path}: the model's tokenizer differs from the one the "
                                "retriever was built with; retrain it")
        self.token_map = self._token_map()
        saved = np.load(path / "token_map.npy", allow_pickle=False)
        if not np.array_equal(saved, self.token_map):
            raise ArtifactError(f"{path}: the semantic-ID tokens map to other tokenizer ids than "
                                "at training time; retrain the retriever")
        self.titles = dict(zip(self.sids.item_ids, json.loads((path / "titles.json").read_text())))
        self._prepare()
        self.model.eval()
        return self
