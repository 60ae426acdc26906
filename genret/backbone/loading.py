"""Loading and saving backbones: any HF causal LM, or a genret backbone directory
(HF layout plus a ``genret_backbone.json`` marker and a checksummed manifest).

Tokenizer pitfall (measured): ``AutoTokenizer`` maps a directory whose ``config.json``
says ``qwen2`` to ``Qwen2Tokenizer``, which rebuilds the pre-tokenizer (single digits,
another regex) and silently changes the ids. :func:`load_backbone` therefore loads our
own directories with ``PreTrainedTokenizerFast`` (exactly what ``tokenizer.json`` says);
never use ``AutoTokenizer`` on them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..artifact import ArtifactError, artifact_kind, atomic_dir, loading, read_manifest
from .tokenizer import BackboneError, _set_specials, add_markers, tokenizer_identity


MARKER_FILE = "genret_backbone.json"
KIND = "backbone"
FORMAT_VERSION = 1


def is_genret_backbone(path: str | os.PathLike) -> bool:
    p = Path(path)
    if (p / MARKER_FILE).is_file():
        return True
    cfg = p / "tokenizer_config.json"
    if cfg.is_file():
        try:
            return bool(json.loads(cfg.read_text()).get("genret_tokenizer"))
        except (ValueError, OSError):  # a damaged file (JSON or UTF-8): not ours to trust
            return False
    return False


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer of a genret backbone directory, exactly as ``tokenizer.json`` defines
    it (``PreTrainedTokenizerFast``; see the module docstring for why not AutoTokenizer)."""
    from transformers import PreTrainedTokenizerFast

    p = Path(path)
    if not (p / "tokenizer.json").is_file():
        raise BackboneError(f"{p}: no tokenizer.json; the backbone directory is incomplete, "
                            "rebuild it with `genret pretrain`")
    tok = PreTrainedTokenizerFast.from_pretrained(str(p))
    return _set_specials(tok)


def load_backbone(name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                  markers: bool = True, verify: bool = True):
    """Load ``(model, tokenizer)``: a genret backbone directory (from :func:`pretrain` or
    :func:`save_backbone`), or any HF causal LM by local path or hub name.

    A genret directory is checked against its manifest first: file sizes, and sha256 unless
    ``verify=False`` (for a directory whose files were checked already); a damaged one is
    a one-line BackboneError naming the file. Foreign tokenizers get the genret markers
    (and pad = EOS) with ``markers=True``, the model's embeddings resized to match. The
    model is in eval mode.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .. import minilm  # registers the MiniLM prefix-LM with the Auto classes

    if not str(name_or_path):
        raise BackboneError("no backbone given: pass a directory from `genret pretrain` or an HF model name")
    if str(name_or_path) in minilm.FORMS:
        return minilm.load_minilm(str(name_or_path))
    p = Path(name_or_path)
    looks_local = p.is_absolute() or str(name_or_path).startswith((".", "~")) or p.exists() \
        or len(p.parts) > 2
    if looks_local and not p.exists():
        raise BackboneError(f"{p}: no such directory; build the embedded backbone with "
                            f"`genret pretrain --out {p}` or pass an HF model path")
    if p.exists() and not p.is_dir():
        raise BackboneError(f"{p}: is a file; pass the backbone directory (holding config.json)")
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise BackboneError(f"{p}: no config.json, so not a model directory; build one with "
                                f"`genret pretrain --out {p}`")
        if artifact_kind(p) == KIND or is_genret_backbone(p):  # a damaged marker is checked too
            try:
                if (p / "manifest.json").is_file():
                    read_manifest(p, kind=KIND, verify=verify)
                with loading(p, artifact_kind(p)):  # a model inside another artifact has no kind
                    tokenizer = load_tokenizer(p)
                    model = AutoModelForCausalLM.from_pretrained(str(p), dtype=dtype)
            except ArtifactError as e:
                raise BackboneError(str(e)) from None
            rows = model.get_input_embeddings().num_embeddings
            if len(tokenizer) > rows:
                raise BackboneError(f"{p}: the tokenizer has {len(tokenizer)} tokens but the model only "
                                    f"{rows} embeddings; save model and tokenizer together with "
                                    "save_backbone after resize_token_embeddings")
            model.eval()
            return model, tokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=dtype)
    except OSError as e:
        raise BackboneError(f"cannot load {name_or_path!r}: {e}. No model hub is reachable here: pass a "
                            "local directory, e.g. one built by `genret pretrain`") from None
    if markers:
        add_markers(model, tokenizer)
    model.eval()
    return model, tokenizer


def save_backbone(model, tokenizer, out_dir: str | os.PathLike, overwrite: bool = False, **info) -> Path:
    """Save model + tokenizer atomically as a genret backbone directory (HF layout plus
    ``genret_backbone.json`` with ``info`` and ``manifest.json`` with checksums). Use it
    for fine-tuned models too, so :func:`load_backbone` keeps reading the tokenizer right.
    ``out_dir`` must be absent, empty or a backbone (another genret artifact only with
    ``overwrite``), never a user's folder."""
    if hasattr(model, "merge_and_unload"):
        raise BackboneError("save_backbone got a PEFT model (only the adapter would be saved); "
                            "call model.merge_and_unload() first")
    out = Path(out_dir)
    ident = tokenizer_identity(tokenizer)
    with atomic_dir(out, KIND, FORMAT_VERSION, overwrite, tokenizer=ident,
                    preset=info.get("preset")) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        _mark_tokenizer_config(tmp)
        specials = {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token,
                    "pad_token": tokenizer.pad_token,
                    "additional_special_tokens": _extra_specials(tokenizer)}
        (tmp / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
        marker = {"genret_backbone": FORMAT_VERSION, "tokenizer": ident,
                  "vocab_size": len(tokenizer), **info}
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2, default=str))
    return out


def _extra_specials(tokenizer) -> list[str]:
    extra = getattr(tokenizer, "extra_special_tokens", None)  # transformers 5
    if not isinstance(extra, (list, tuple)):
        extra = getattr(tokenizer, "additional_special_tokens", None) or []
    return [str(t) for t in extra]


def _mark_tokenizer_config(d: Path) -> None:
    """Tag tokenizer_config.json so a copy without genret_backbone.json is still detected."""
    cfg_path = d / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    cfg["genret_tokenizer"] = True
    cfg["clean_up_tokenization_spaces"] = False
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))


def backbone_info(path: str | os.PathLike) -> dict:
    """The ``genret_backbone.json`` of a backbone directory."""
    f = Path(path) / MARKER_FILE
    if not f.is_file():
        raise BackboneError(f"{path}: no {MARKER_FILE}; not a genret backbone directory")
    return json.loads(f.read_text())
