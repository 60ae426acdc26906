"""The high-level API: ``SemanticIDConfig``, ``build_semantic_ids``, ``SemanticIDs``, ``sandglass_report``."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from pathlib import Path

import numpy as np

from .artifact import SemanticIDError, atomic_dir, load_npy, read_manifest
from .diagnostics import (conditional_entropies, dominant_level, level_counts, level_stats, path_sparsity,
                          plot_levels)
from .encoders import embed_texts
from .ids import (PRUNE_MODES, TokenSpace, check_top_k, disambiguate, extend_dedup, id_sequences, prune_mask,
                  pruned_codes, tiebreak_keys)
from .quantizers import QUANTIZERS, check_embeddings, check_shape, make_quantizer, quantizer_from_arrays
from .trie import PrefixTrie

KIND, VERSION = "semantic_id.ids", 1


@dataclasses.dataclass
class SemanticIDConfig:
    """How to build semantic IDs. ``prune_level`` (1-based) overrides the dominant level;
    ``top_k`` is used by ``prune="adaptive"``, ``prune_codes`` (set by
    :meth:`SemanticIDs.reindex`) fixes the codes it prunes; ``encoder`` None = packaged
    all-MiniLM-L6-v2."""

    quantizer: str = "rkmeans"
    levels: int = 3
    codebook: int = 256
    prune: str = "none"
    top_k: int = 16
    prune_level: int | None = None
    prune_codes: tuple[int, ...] | None = None
    seed: int = 0
    encoder: str | None = None
    encode_batch_size: int = 64
    kmeans_iters: int = 20
    rqvae_hidden: tuple[int, ...] = (256, 128)
    rqvae_latent: int = 64
    rqvae_epochs: int = 30
    rqvae_batch_size: int = 512
    rqvae_lr: float = 1e-3
    rqvae_beta: float = 0.25

    def __post_init__(self):
        if self.quantizer not in QUANTIZERS:
            raise SemanticIDError(f"unknown quantizer {self.quantizer!r}; choose one of {', '.join(QUANTIZERS)}")
        if self.prune not in PRUNE_MODES:
            raise SemanticIDError(f"unknown prune mode {self.prune!r}; choose one of {', '.join(PRUNE_MODES)}")
        check_shape(self.levels, self.codebook)
        if self.prune == "adaptive":
            check_top_k(self.top_k, self.codebook)
        if self.prune_level is not None and not 1 <= self.prune_level <= self.levels:
            raise SemanticIDError(f"prune_level must be in 1..{self.levels}, got {self.prune_level}")
        if self.prune == "drop" and self.levels == 1:
            raise SemanticIDError("cannot drop the only level; use levels >= 2 or prune='adaptive'")
        self.rqvae_hidden = tuple(int(h) for h in self.rqvae_hidden)
        if self.prune_codes is not None:
            self.prune_codes = tuple(int(c) for c in self.prune_codes)
            if self.prune != "adaptive" or not all(0 <= c < self.codebook for c in self.prune_codes):
                raise SemanticIDError(f"prune_codes {list(self.prune_codes)} need prune='adaptive' and codes "
                                      f"in 0..{self.codebook - 1}")

    def quantizer_options(self) -> dict:
        if self.quantizer == "rkmeans":
            return {"niter": self.kmeans_iters}
        return {"hidden": self.rqvae_hidden, "latent": self.rqvae_latent, "epochs": self.rqvae_epochs,
                "batch_size": self.rqvae_batch_size, "lr": self.rqvae_lr, "beta": self.rqvae_beta}

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["rqvae_hidden"] = list(self.rqvae_hidden)
        d["prune_codes"] = None if self.prune_codes is None else list(self.prune_codes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SemanticIDConfig:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise SemanticIDError(f"unknown SemanticIDConfig field(s) {sorted(unknown)}")
        return cls(**d)


class SemanticIDs:
    """Codes of a catalog and the IDs derived from them (pruning, dedup, flat tokens, trie).

    ``codes`` (n, L): quantiser codes before pruning. ``keep`` (n, L): the (item, level)
    pairs the IDs keep. ``dedup`` (n,): disambiguation code, -1 where none (computed from
    the codes unless given, as :meth:`reindex` does). ``tokens`` / ``offsets``: flat IDs in
    CSR form, each ending with ``<eos_id>`` (index 0).
    """

    def __init__(self, item_ids: list[str], codes: np.ndarray, config: SemanticIDConfig,
                 encoder: str = "", quantizer=None, info: dict | None = None, dedup: np.ndarray | None = None):
        self.item_ids = [str(i) for i in item_ids]
        self.codes = np.ascontiguousarray(codes, dtype=np.int32)
        self.config, self.encoder, self.quantizer, self.info = config, encoder, quantizer, dict(info or {})
        if self.codes.ndim != 2 or len(self.codes) == 0:
            raise SemanticIDError(f"codes must be a non-empty (n_items, levels) array, got shape {self.codes.shape}")
        n, L = self.codes.shape
        if n != len(self.item_ids) or L != config.levels:
            raise SemanticIDError(f"codes shape {self.codes.shape} does not match {len(self.item_ids)} "
                                  f"items x {config.levels} levels")
        if self.codes.min() < 0 or self.codes.max() >= config.codebook:
            raise SemanticIDError(f"codes outside 0..{config.codebook - 1}")
        self.keep, self.pruned_level = prune_mask(self.codes, config.codebook, config.prune,
                                                  config.top_k, config.prune_level, config.prune_codes)
        ties = tiebreak_keys(self.item_ids, config.seed)
        self.collision_rate = disambiguate(self.codes, np.ones_like(self.keep), ties)[1]
        self.dedup, self.collision_rate_pruned = disambiguate(self.codes, self.keep, ties)
        if dedup is not None:
            self.dedup = _check_dedup(dedup, self.codes, self.keep)
        self.space = TokenSpace(L, config.codebook, int(self.dedup.max()) + 1)
        self.tokens, self.offsets = id_sequences(self.codes, self.keep, self.dedup, self.space)
        self.tokens.flags.writeable = self.offsets.flags.writeable = False
        self.trie = PrefixTrie.build(self.ids)

    def __len__(self) -> int:
        return len(self.item_ids)

    @functools.cached_property
    def ids(self) -> list[np.ndarray]:
        """Per item, its flat token sequence (pruned, disambiguated, ending with ``<eos_id>``)."""
        return np.split(self.tokens, self.offsets[1:-1])

    @property
    def lengths(self) -> np.ndarray:
        """ID length per item, not counting ``<eos_id>``."""
        return np.diff(self.offsets) - 1

    def token_strings(self, i: int) -> list[str]:
        return [self.space.token(t) for t in self.tokens[self.offsets[i]:self.offsets[i + 1]]]

    def lookup(self, id_tokens) -> list[str]:
        """Item ids under a flat ID or ID prefix."""
        return [self.item_ids[i] for i in self.trie.items(id_tokens)]

    def with_pruning(self, prune: str, top_k: int | None = None, prune_level: int | None = None) -> SemanticIDs:
        """The same codes with another pruning (no refit)."""
        cfg = dataclasses.replace(self.config, prune=prune, top_k=self.config.top_k if top_k is None else top_k,
                                  prune_level=prune_level, prune_codes=None)
        return SemanticIDs(self.item_ids, self.codes, cfg, self.encoder, self.quantizer, self.info)

    def frozen_config(self) -> SemanticIDConfig:
        """This config with its pruning rule fixed (the pruned level and, for adaptive, the
        pruned codes), so that items added later are pruned the way these were."""
        c = self.config
        if c.prune == "none":
            return c
        codes = c.prune_codes
        if c.prune == "adaptive" and codes is None:
            codes = pruned_codes(self.codes, c.codebook, c.top_k, self.pruned_level)
        return dataclasses.replace(c, prune_level=self.pruned_level, prune_codes=codes)

    def reindex(self, item_ids: list[str], texts: list[str], cache_dir: str | os.PathLike | None = None,
                progress: bool = True) -> SemanticIDs:
        """IDs for the catalog ``item_ids`` (``texts``: one per item) with the codebooks
        frozen. Items of this set keep their IDs; new items are encoded with the same
        encoder, quantised by the saved quantiser, pruned by the same rule
        (:meth:`frozen_config`) and, where their kept codes are taken, given the next free
        code of the disambiguation level (:func:`extend_dedup`); items not in ``item_ids``
        are dropped. ``info["reindexed"]`` counts the items added, removed and kept."""
        _check_catalog(item_ids, len(texts))
        item_ids = [str(i) for i in item_ids]
        pos = {p: i for i, p in enumerate(self.item_ids)}
        new = np.array([p not in pos for p in item_ids])
        codes = np.zeros((len(item_ids), self.config.levels), dtype=np.int32)
        old_rows = np.flatnonzero(~new)
        codes[old_rows] = self.codes[[pos[item_ids[j]] for j in old_rows]]
        dedup = np.full(len(item_ids), -1, dtype=np.int32)
        dedup[old_rows] = self.dedup[[pos[item_ids[j]] for j in old_rows]]
        if new.any():
            codes[new] = self._quantize_new([texts[j] for j in np.flatnonzero(new)], cache_dir, progress)
        cfg = self.frozen_config()
        keep = prune_mask(codes, cfg.codebook, cfg.prune, cfg.top_k, cfg.prune_level, cfg.prune_codes)[0]
        dedup = extend_dedup(codes, keep, dedup, new, tiebreak_keys(item_ids, cfg.seed))
        info = {**self.info, "reindexed": {"added": int(new.sum()), "removed": len(self) - len(old_rows),
                                           "kept": len(old_rows)}}
        return SemanticIDs(item_ids, codes, cfg, self.encoder, self.quantizer, info, dedup)

    def _quantize_new(self, texts: list[str], cache_dir, progress: bool) -> np.ndarray:
        """Codes of new items' texts: the IDs' encoder, then the saved quantiser."""
        from .encoders import Encoder

        if self.quantizer is None:
            raise SemanticIDError("these semantic IDs were saved without their quantiser, so new items "
                                  "cannot get IDs; rebuild them with `genret sid build`")
        enc = Encoder(self.config.encoder, batch_size=self.config.encode_batch_size)
        emb, identity = embed_texts(list(texts), enc, cache_dir, progress)
        if self.encoder and identity != self.encoder:
            raise SemanticIDError(f"the encoder here ({identity}) is not the one the IDs were built with "
                                  f"({self.encoder}); install that encoder or rebuild the IDs")
        return self.quantizer.encode(emb)

    def report(self) -> dict:
        return sandglass_report(self)

    def plot(self, path: str | os.PathLike) -> None:
        """PNG of the sorted token-frequency curve of each level."""
        plot_levels(level_counts(self.codes, self.config.codebook), path,
                    f"{self.config.quantizer} {self.config.levels}x{self.config.codebook}, "
                    f"{len(self)} items")

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        info = {"encoder": self.encoder, "config": self.config.to_dict(),
                "quantizer": self.quantizer.config() if self.quantizer is not None else None,
                "n_items": len(self), "levels": self.config.levels, "codebook": self.config.codebook,
                "vocab_size": self.space.vocab_size, "n_tokens": len(self.tokens), "info": self.info}
        with atomic_dir(path, KIND, VERSION, overwrite, **info) as tmp:
            (tmp / "item_ids.json").write_text(json.dumps(self.item_ids))
            np.save(tmp / "codes.npy", self.codes)
            np.save(tmp / "dedup.npy", self.dedup)
            np.save(tmp / "tokens.npy", self.tokens)
            np.save(tmp / "offsets.npy", self.offsets)
            if self.quantizer is not None:
                (tmp / "quantizer").mkdir()
                for name, arr in self.quantizer.arrays().items():
                    np.save(tmp / "quantizer" / f"{name}.npy", arr)

    @classmethod
    def load(cls, path: str | os.PathLike, encoder: str | None = None, verify: bool = True) -> SemanticIDs:
        """Load and check a saved directory; ``encoder`` (an identity) must match if given.
        Sizes are always checked, sha256 too unless ``verify=False`` (files checked already)."""
        path = Path(path)
        m = read_manifest(path, KIND, VERSION, verify=verify,
                          rebuild=f"rebuild it with `genret sid build ... --out {path}`")
        if encoder is not None and m.get("encoder") != encoder:
            raise SemanticIDError(f"{path}: built with encoder {m.get('encoder')!r}, not {encoder!r}; "
                                  "rebuild it with the same encoder")
        try:
            item_ids = json.loads((path / "item_ids.json").read_text())
        except (OSError, json.JSONDecodeError):
            raise SemanticIDError(f"{path / 'item_ids.json'}: unreadable; rebuild the artifact") from None
        codes = load_npy(path / "codes.npy")
        if codes.shape != (m["n_items"], m["levels"]) or len(item_ids) != m["n_items"]:
            raise SemanticIDError(f"{path}: arrays do not match the manifest sizes; rebuild it")
        quantizer = None
        if m.get("quantizer"):
            arrays = {f.stem: load_npy(f) for f in sorted((path / "quantizer").glob("*.npy"))}
            quantizer = quantizer_from_arrays(m["quantizer"], arrays)
        dedup = load_npy(path / "dedup.npy") if (path / "dedup.npy").exists() else None  # older saves: recomputed
        sids = cls(item_ids, codes, SemanticIDConfig.from_dict(m["config"]), m.get("encoder", ""),
                   quantizer, m.get("info"), dedup)
        if not (np.array_equal(sids.tokens, load_npy(path / "tokens.npy"))
                and np.array_equal(sids.offsets, load_npy(path / "offsets.npy"))):
            raise SemanticIDError(f"{path}: stored IDs differ from the ones recomputed from its codes "
                                  "(built by another semantic_id version?); rebuild it")
        return sids


def _check_dedup(dedup, codes: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Given disambiguation codes, checked: one per item, >= -1, and IDs that stay unique."""
    dedup = np.asarray(dedup)
    if dedup.shape != (len(codes),) or dedup.dtype.kind not in "iu" or (len(dedup) and dedup.min() < -1):
        raise SemanticIDError(f"dedup must be one integer >= -1 per item ({len(codes)}), got shape {dedup.shape}")
    rows = np.column_stack([np.where(keep, codes, -1), dedup])
    if len(np.unique(rows, axis=0)) != len(rows):
        raise SemanticIDError("the disambiguation codes leave two items with the same ID; rebuild the IDs")
    return dedup.astype(np.int32)


def _check_catalog(item_ids: list[str], n: int) -> None:
    if len(item_ids) == 0:
        raise SemanticIDError("the catalog is empty: give at least one item")
    if len(item_ids) != n:
        raise SemanticIDError(f"{len(item_ids)} item ids but {n} texts/embeddings; give one per item")
    if len(set(map(str, item_ids))) != len(item_ids):
        raise SemanticIDError("item ids are not unique; give one row per item")


def build_from_embeddings(item_ids: list[str], embeddings: np.ndarray, cfg: SemanticIDConfig | None = None,
                          encoder: str = "", progress: bool = False) -> SemanticIDs:
    """Quantise precomputed embeddings (one row per item) into semantic IDs."""
    cfg = cfg or SemanticIDConfig()
    _check_catalog(item_ids, len(embeddings))
    x = check_embeddings(embeddings)
    check_shape(cfg.levels, cfg.codebook, len(x))
    q = make_quantizer(cfg.quantizer, cfg.levels, cfg.codebook, cfg.seed, **cfg.quantizer_options())
    t0 = time.perf_counter()
    q.fit(x, progress=progress)
    codes = q.encode(x)
    info = {"fit_seconds": round(time.perf_counter() - t0, 3),
            "reconstruction_mse": float(((q.decode(codes) - x) ** 2).sum(1).mean())}
    return SemanticIDs(item_ids, codes, cfg, encoder, q, info)


def build_semantic_ids(item_ids: list[str], texts: list[str], cfg: SemanticIDConfig | None = None,
                       cache_dir: str | os.PathLike | None = None, progress: bool = True) -> SemanticIDs:
    """Encode ``texts`` (cached in ``cache_dir`` if given), quantise, prune and disambiguate."""
    cfg = cfg or SemanticIDConfig()
    _check_catalog(item_ids, len(texts))
    from .encoders import Encoder

    enc = Encoder(cfg.encoder, batch_size=cfg.encode_batch_size)
    emb, identity = embed_texts(list(texts), enc, cache_dir, progress)
    return build_from_embeddings(item_ids, emb, cfg, identity, progress)


def sandglass_report(sids: SemanticIDs) -> dict:
    """Per-level concentration of the codes, collisions, ID lengths and path sparsity."""
    cfg = sids.config
    counts = level_counts(sids.codes, cfg.codebook)
    cond = conditional_entropies(sids.codes, cfg.codebook)
    lengths = sids.lengths
    return {
        "n_items": len(sids), "quantizer": cfg.quantizer, "levels_x_codebook": [cfg.levels, cfg.codebook],
        "encoder": sids.encoder,
        "levels": [{"level": lv, **level_stats(c), "conditional_entropy": h}
                   for lv, (c, h) in enumerate(zip(counts, cond), start=1)],
        "dominant_level": dominant_level(sids.codes, cfg.codebook),
        "collision_rate": sids.collision_rate,
        "prune": cfg.prune, "pruned_level": sids.pruned_level,
        "top_k": cfg.top_k if cfg.prune == "adaptive" else None,
        "pruned_fraction": float((~sids.keep).any(1).mean()),
        "collision_rate_after_pruning": sids.collision_rate_pruned,
        "disambiguation_codes": sids.space.dedup_size,
        "mean_length": float(lengths.mean()), "max_length": int(lengths.max()),
        "vocab_size": sids.space.vocab_size,
        "path_sparsity": path_sparsity(sids.codes, cfg.codebook),
        **sids.info,
    }
