"""The sparse retriever: fit (MLM-head warm-up, training, indexing), search, explain, save/load."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from ..artifact import ArtifactError, atomic_dir, reads_artifact
from ..eval import Run
from ..retriever import Retriever, as_queries
from .case_study import term_case_study
from .encoder import SparseConfig, SparseEncoder, _device, calibrate_head_bias, mlm_warmup
from .index import InvertedIndex, flops_figure, prune_top_terms
from .training import train_encoder


class SparseRetriever(Retriever):
    """fit = (MLM-head warm-up) + contrastive training on the train split + indexing the
    catalog; search = encode queries, prune to the top ``query_top_terms`` terms, score
    against the inverted index."""

    kind = "sparse"
    search_settings = ("query_top_terms", "search_batch_size", "encode_batch_size")
    version = 1
    config_class = SparseConfig

    def __init__(self, **cfg):
        self.cfg = self.config_class(**cfg)
        self.encoder: SparseEncoder | None = None
        self.index: InvertedIndex | None = None
        self.titles: dict[str, str] = {}  # what each indexed product was encoded from
        self.train_log: list[dict] = []
        self.info: dict = {}

    def _device(self) -> torch.device:
        return _device(self.cfg.device)

    def _fit(self, dataset, *, out_dir, progress: bool) -> None:
        """Train on ``dataset``'s train split (training state in ``out_dir``), then index its catalog."""
        from ..training import work_dir

        self._fitted_on(dataset)
        with work_dir(out_dir, f"genret-{self.kind}-") as work:
            torch.manual_seed(self.cfg.seed)  # the heads' initial weights
            self.encoder = SparseEncoder.from_pretrained(self.cfg, dataset).to(self._device())
            t0 = time.perf_counter()
            if self.encoder.kind == "encoder" and self.encoder.identity.get("mlm_head") != "from checkpoint":
                texts = dataset.titles + [dataset.queries[q] for q in dataset.split("train")]
                mlm = mlm_warmup(self.encoder, texts, self.cfg.mlm_warmup_steps, self.cfg.batch_size,
                                 self.cfg.head_lr, self.cfg.seed, progress)
                shift = calibrate_head_bias(self.encoder, dataset.titles, self.cfg.init_doc_terms,
                                            seed=self.cfg.seed)
                self.info["mlm_warmup"] = {"steps": len(mlm), "first_loss": mlm[0] if mlm else None,
                                           "last_loss": float(np.mean(mlm[-10:])) if mlm else None,
                                           "bias_shift": shift}
            self.train_log = train_encoder(self.encoder, dataset, self.cfg, work, progress)
        self.info["train_seconds"] = round(time.perf_counter() - t0, 1)
        self.index_catalog(dataset, progress)

    @property
    def product_ids(self) -> list[str]:
        return self.index.product_ids if self.index is not None else []

    def _reindex(self, dataset, progress: bool) -> None:
        """The trained encoder over the new catalog: the vectors of kept products with
        unchanged titles are reused, only new or retitled ones are encoded (an artifact
        saved without its titles re-encodes all); the inverted index is rebuilt."""
        self._check()
        old = {p: i for i, p in enumerate(self.index.product_ids)
               if p in self.titles and self.titles[p] == dataset.catalog.get(p)}
        self.index_catalog(dataset, progress, reuse=(old, self.index.documents) if old else None)

    def index_catalog(self, dataset, progress: bool = True, reuse=None) -> None:
        """Encode ``dataset``'s titles and build the inverted index; ``reuse`` = (row of a
        product in ``D_old``, ``D_old``): those products' vectors are taken from it."""
        t0 = time.perf_counter()
        ids = dataset.product_ids
        row, D_old = reuse or ({}, None)
        fresh = [i for i, p in enumerate(ids) if p not in row]
        D_new = self.encoder.encode([dataset.catalog[ids[i]] for i in fresh], "item", progress=progress)
        if D_old is None:
            D = D_new
        else:  # stack the reused and the new rows, then put them in catalog order
            kept = [i for i, p in enumerate(ids) if p in row]
            D_all = sp.vstack([D_old[[row[ids[i]] for i in kept]], D_new]).tocsr()
            order = np.empty(len(ids), dtype=np.int64)
            order[kept + fresh] = np.arange(len(ids))
            D = D_all[order]
        self.index = InvertedIndex.from_documents(D, ids, self.cfg.seed)
        self.titles = {p: dataset.catalog[p] for p in ids}
        self.info["index_seconds"] = round(time.perf_counter() - t0, 1)
        self.info["index"] = self.index.stats() | {"encoded": len(fresh), "reused": len(ids) - len(fresh)}

    def _check(self):
        if self.encoder is None or self.index is None:
            raise RuntimeError(f"{type(self).__name__}.search before fit() or load()")

    def encode_queries(self, texts: list[str], prune: bool = True) -> sp.csr_matrix:
        self._check()
        Q = self.encoder.encode(texts, "query")
        return prune_top_terms(Q, self.cfg.query_top_terms) if prune else Q

    def search(self, queries, k: int = 1000, progress: bool = False) -> Run:
        self._check()
        queries = as_queries(queries)
        qids = list(queries)
        run = Run()
        bs = self.cfg.search_batch_size
        for s in tqdm(range(0, len(qids), bs), desc=self.kind, disable=not progress):
            chunk = qids[s:s + bs]
            Q = self.encode_queries([queries[q] for q in chunk])
            for q, (idx, scores) in zip(chunk, self.index.search(Q, k)):
                run.add(q, [self.index.product_ids[i] for i in idx], scores)
        return run

    def explain_batch(self, queries: list[str], k: int = 10, n_terms: int = 15) -> list[dict]:
        """Per query: its ``n_terms`` heaviest terms (``literal``: a token of the query, else
        an expansion) and the products."""
        out = super().explain_batch(queries, k)
        for detail, rec in zip(out, term_case_study(self, queries, n_terms, with_top_product=False)):
            detail["terms"] = rec["terms"]
        return out

    def flops(self, queries) -> float:
        """The # FLOPS figure of these queries (after pruning) against the index."""
        self._check()
        queries = as_queries(queries)
        return flops_figure(self.encode_queries(list(queries.values())), self.index.documents)

    # ---- persistence
    def save(self, path, overwrite: bool = False) -> None:
        self._check()
        from safetensors.torch import save_file

        enc = self.encoder
        heads = {f"mlm.{k}": v for k, v in (enc.mlm.state_dict().items() if enc.mlm else [])}
        heads.update({f"fc.{k}": v for k, v in (enc.fc.state_dict().items() if enc.fc else [])})
        with atomic_dir(path, self.kind, self.version, overwrite, config=asdict(self.cfg),
                        backbone=enc.identity, backbone_kind=enc.kind,
                        index_shape=list(self.index.postings.shape),
                        n_products=len(self.index.product_ids), **self.catalog_info(), info=self.info,
                        train_log=self.train_log) as tmp:
            enc.save_backbone(tmp / "backbone")
            save_file({k: v.detach().contiguous().cpu() for k, v in heads.items()} or
                      {"_empty": torch.zeros(1)}, str(tmp / "heads.safetensors"))
            self.index.save(tmp)
            (tmp / "titles.json").write_text(json.dumps([self.titles[p] for p in self.index.product_ids]))

    @classmethod
    @reads_artifact
    def _load(cls, path: Path) -> "SparseRetriever":
        from safetensors.torch import load_file

        manifest = json.loads((path / "manifest.json").read_text())
        known = {f.name for f in fields(cls.config_class)}
        self = cls(**{k: v for k, v in manifest["config"].items() if k in known})
        kind = manifest["backbone_kind"]
        try:
            model, tok = SparseEncoder.load_backbone_dir(path / "backbone", kind)
        except (OSError, ValueError) as e:
            raise ArtifactError(f"{path}: cannot load the saved backbone/tokenizer ({e}); rebuild it") from None
        enc = SparseEncoder(model, tok, kind, self.cfg, identity=manifest.get("backbone", {}))
        heads = load_file(str(path / "heads.safetensors"))
        if enc.mlm is not None:
            enc.mlm.load_state_dict({k[4:]: v for k, v in heads.items() if k.startswith("mlm.")})
        if enc.fc is not None:
            enc.fc.load_state_dict({k[3:]: v for k, v in heads.items() if k.startswith("fc.")})
        self.encoder = enc.to(self._device()).eval()
        self.index = InvertedIndex.load(path, manifest["index_shape"], self.cfg.seed)
        titles = path / "titles.json"  # absent in artifacts saved before re-indexing reused vectors
        self.titles = dict(zip(self.index.product_ids, json.loads(titles.read_text()))) if titles.exists() else {}
        self.train_log = manifest.get("train_log", [])
        self.info = manifest.get("info", {})
        return self
