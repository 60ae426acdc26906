"""Sand-glass measurements of semantic IDs on the Home Depot catalog (all 54,667 titles).

For residual k-means and RQ-VAE (levels x codebook, default 3 x 256): per-level
concentration, collisions and ID length with no pruning, dropping the dominant level, and
adaptive top-K pruning. Writes results/sandglass/{summary.json,summary.md,<quantizer>.png}.

    python experiments/sandglass.py [--data PATH] [--out results/sandglass] [--top-k 16 64]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import genret  # first: sets OMP_WAIT_POLICY=PASSIVE before torch loads
import numpy as np
import pandas as pd

from semantic_id import SemanticIDConfig, build_from_embeddings, embed_texts

DATA = Path(__file__).resolve().parents[1] / "../shared/data/homedepot/train.csv.zip"


def load_catalog(path: Path) -> tuple[list[str], list[str]]:
    """One product per product_uid, its first title variant in file order."""
    df = pd.read_csv(path, encoding="latin-1", usecols=["product_uid", "product_title"])
    cat = df.drop_duplicates("product_uid", keep="first")
    return cat["product_uid"].astype(str).tolist(), cat["product_title"].astype(str).tolist()


def row(rep: dict, label: str) -> str:
    lv = rep["levels"]
    cells = [label, f"{rep['mean_length']:.2f}", f"{rep['collision_rate']:.4f}",
             f"{rep['collision_rate_after_pruning']:.4f}", f"{rep['pruned_fraction']:.3f}"]
    cells += ["/".join(f"{x[k]:.3f}" for x in lv)
              for k in ("entropy", "conditional_entropy", "gini", "top1_share", "top10_share")]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=Path("results/sandglass"))
    ap.add_argument("--cache", type=Path, default=genret.cache_dir("semantic_id"))
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--codebook", type=int, default=256)
    ap.add_argument("--top-k", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--quantizers", nargs="+", default=["rkmeans", "rqvae"])
    ap.add_argument("--rqvae-epochs", type=int, default=30)
    args = ap.parse_args()

    item_ids, titles = load_catalog(args.data)
    t0 = time.perf_counter()
    emb, encoder = embed_texts(titles, None, args.cache)
    print(f"{len(titles)} titles encoded/loaded in {time.perf_counter() - t0:.1f}s ({encoder})")
    args.out.mkdir(parents=True, exist_ok=True)
    results, lines = [], [
        "| quantizer / pruning | mean length | collision rate (codes) | collision rate (pruned) "
        "| pruned items | H/logK per level | H(level given prefix)/logK | Gini per level "
        "| top-1 share per level | top-10 share per level |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for q in args.quantizers:
        cfg = SemanticIDConfig(quantizer=q, levels=args.levels, codebook=args.codebook,
                               rqvae_epochs=args.rqvae_epochs)
        sids = build_from_embeddings(item_ids, emb, cfg, encoder, progress=True)
        sids.plot(args.out / f"{q}.png")
        # the dominant level by the library's criterion; the middle level explicitly, for comparison
        variants = [("none", None, None)]
        if args.levels > 1:
            variants += [("drop", None, None)]
            if sids.report()["dominant_level"] != (args.levels + 1) // 2:
                variants += [("drop", None, (args.levels + 1) // 2)]
        variants += [("adaptive", k, None) for k in args.top_k]
        for prune, k, level in variants:
            rep = sids.with_pruning(prune, k, level).report()
            if q == "rqvae":
                rep["rqvae_history"] = sids.quantizer.history
            results.append(rep)
            label = f"{q} / {prune}" + (f" top-{k}" if k else "") + (
                f" (level {rep['pruned_level']}{', given' if level else ''})" if rep["pruned_level"] else "")
            lines.append(row(rep, label))
            print(lines[-1], flush=True)
        rep = results[-1]
        lines.append(f"| {q}: fit {sids.info['fit_seconds']:.1f}s, reconstruction MSE "
                     f"{sids.info['reconstruction_mse']:.4f}, utilisation "
                     f"{'/'.join(f'{x:.3f}' for x in (lv['utilization'] for lv in rep['levels']))}, "
                     f"distinct paths per depth {'/'.join(str(p['distinct']) for p in rep['path_sparsity'])} "
                     "| | | | | | | | | |")
        print(lines[-1], flush=True)
    (args.out / "summary.json").write_text(json.dumps(results, indent=2))
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
