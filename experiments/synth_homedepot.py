"""Long-tail data synthesis on Home Depot (seed 000): synthesise (query, product) pairs for
train queries (tail bucket first), then retrain the dense channel with and without them and
compare on the test split, overall and per bucket.

    # the default size: ~20-30 min on 2 CPU cores (small backbone from the cache)
    .venv/bin/python experiments/synth_homedepot.py --out results/synth
    # a smoke run in a few minutes
    .venv/bin/python experiments/synth_homedepot.py --out results/synth-tiny --preset tiny \\
        --queries 20 --candidates 4 --dpo-queries 20 --max-test-queries 100 \\
        --max-train-queries 400 --n-products 3000 --dense-steps 10
    # the rewriter on the pretrained MiniLM prefix-LM (LoRA)
    .venv/bin/python experiments/synth_homedepot.py --out results/synth-minilm --backbone minilm

Writes ``OUT/synth/`` (pairs.tsv, candidates.tsv, report.json, synth.png), and through the
comparison harness ``OUT/metrics.json``, ``table.md``, ``table.csv``, TREC runs and plots
for the rows bm25-stem, dense-zeroshot, dense (fine-tuned) and dense+synth (the same
fine-tune, same number of steps, with the synthetic pairs as extra train labels), plus
``OUT/summary.json`` (synthesis counts and the dense+synth minus dense deltas).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genret.backbone import default_backbone  # noqa: E402
from genret.data import BUCKETS, load_dataset  # noqa: E402
from genret.harness import CompareConfig, RowConfig, claim_results_dir, compare, prepare  # noqa: E402
from genret.synth import synth_config, synthesize  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/synth")
    p.add_argument("--data", default=None)
    p.add_argument("--preset", default="small", help="embedded backbone size (tiny, small)")
    p.add_argument("--backbone", help="rewriter backbone: minilm, an HF directory or a saved rewriter "
                   "(default: the embedded LM)")
    p.add_argument("--tuning", choices=["full", "lora"],
                   help="rewriter SFT/DPO: full fine-tuning (default for the embedded LM) or LoRA (default otherwise)")
    p.add_argument("--channels", default="bm25-stem,dense-zeroshot")
    p.add_argument("--queries", type=int, default=300, help="train queries to rewrite, tail first")
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--dpo-queries", type=int, default=150)
    p.add_argument("--sft-pairs", type=int, default=10000, help="0: no SFT (--backbone is a saved rewriter)")
    p.add_argument("--sft-epochs", type=float, default=2.0)
    p.add_argument("--dense-steps", type=int, default=250, help="optimiser steps of both dense fine-tunes")
    p.add_argument("--max-test-queries", type=int, help="seeded sample of the evaluated test queries")
    p.add_argument("--max-train-queries", type=int, help="seeded sample of train/dev queries")
    p.add_argument("--n-products", type=int, help="catalog slice (keeps the labelled products)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    t0 = time.perf_counter()
    full = load_dataset(args.data)
    # pretrained on the full data (cached), so the sliced runs reuse the same backbone
    backbone = args.backbone or str(default_backbone(full, args.preset, args.seed))
    cfg = CompareConfig(name="synth", split="test", k=1000, seed=args.seed,
                        max_queries=args.max_test_queries, max_train_queries=args.max_train_queries,
                        n_products=args.n_products)
    ds, _ = prepare(cfg, full)
    scfg = synth_config(backbone=backbone, channels=args.channels, queries=args.queries,
                        candidates=args.candidates, dpo_queries=args.dpo_queries,
                        sft_pairs=args.sft_pairs, seed=args.seed,
                        train={"full": (args.tuning or ("lora" if args.backbone else "full")) == "full",
                               "epochs": args.sft_epochs})
    claim_results_dir(out)  # compare refuses a folder it did not claim, after a 30-min synthesis
    report = synthesize(ds, scfg, out / "synth")
    dense = {"max_steps": args.dense_steps, "seed": args.seed}
    rows = [RowConfig("bm25-stem"), RowConfig("dense-zeroshot", batch_size=32),
            RowConfig("dense", params=dense, batch_size=32),
            RowConfig("dense+synth", retriever="dense", params=dense, batch_size=32,
                      extra_pairs=str(out / "synth" / "pairs.tsv"))]
    entries = compare(replace(cfg, max_queries=None, max_train_queries=None, n_products=None,
                              retrievers=rows), ds, out)
    by = {e["name"]: e for e in entries}
    pick = lambda e, b: e["metrics"] if b == "all" else e["buckets"][b]  # noqa: E731
    delta = {b: {m: pick(by["dense+synth"], b)[m] - pick(by["dense"], b)[m]
                 for m in ("R@10", "R@100", "R@1000", "MRR@10")} for b in ("all", *BUCKETS)}
    summary = {"args": vars(args), "dataset": ds.summary(), "synth_counts": report["counts"],
               "synth_shift": report["shift"], "synth_timings": report["timings"],
               "delta_dense_synth_minus_dense": delta,
               "total_seconds": round(time.perf_counter() - t0, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print((out / "table.md").read_text())
    print("dense+synth minus dense:", json.dumps(delta, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
