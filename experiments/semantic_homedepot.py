"""Semantic-ID GR on a documented Home Depot subset (CPU-feasible), with BM25 on the same subset.

Subset: a seeded sample of ``--test-queries`` evaluated test queries and ``--train-queries``
train queries; the catalog keeps every labelled product of those queries plus seeded random
others up to ``--products`` (``Dataset.subset``). The semantic IDs are the full-catalog
3x256 residual k-means codes (``genret sid build`` on all 54,667 titles) restricted to the
subset, re-deduplicated within it. The backbone is the embedded "small" one pretrained on
all titles + train queries (cached under .cache/backbones).

    python experiments/semantic_homedepot.py --prune none --epochs 6 --out results/semantic/hd-subset
    python experiments/semantic_homedepot.py --prune none --stage dpo --out results/semantic/hd-subset

``--stage dpo`` starts from the SFT model the first command saved in ``--out`` (else it runs
SFT first). ``--table`` writes ``table.md`` from the summaries in ``--out`` (no training).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from genret.backbone import default_backbone
from genret.bm25 import BM25Retriever
from genret.data import load_dataset
from genret.eval import evaluate
from genret.semantic import TITLE_PROMPT, SemanticIDRetriever, build_ids


def sample(qids, n, seed=0):
    return sorted(qids, key=lambda q: hashlib.sha1(f"{seed}:{q}".encode()).digest())[:n]


def table(out: Path) -> str:
    """Markdown table of every summary-<prune>-<stage>.json in ``out``, with BM25 on the subset."""
    head = ("| IDs | mean len | collisions | stage | R@10 | R@50 | MRR@10 | tail R@10 | tail R@50 "
            "| Hit@10 from title | fit s | ms/q | DPO pairs (chosen in beams) |")
    lines, s = [head, "|---" * 13 + "|"], None
    for prune in ("none", "drop", "adaptive"):
        for stage in ("sft", "dpo"):
            f = out / f"summary-{prune}-{stage}.json"
            if not f.exists():
                continue
            s = json.loads(f.read_text())
            g, t, i = s["gr_sid"], s["gr_sid_buckets"]["tail"], s["info"]
            pairs = f"{i['dpo_pairs']} ({i['dpo_chosen_from_beams']})" if stage == "dpo" else ""
            lines.append(f"| {prune} | {s['sid']['mean_length']:.2f} | {s['sid']['collision_rate_after_pruning']:.3f} "
                         f"| {stage} | {g['R@10']:.4f} | {g['R@50']:.4f} | {g['MRR@10']:.4f} | {t['R@10']:.4f} "
                         f"| {t['R@50']:.4f} | {s['title_hit@10']:.3f} | {s['fit_seconds']:.0f} "
                         f"| {s['ms_per_query']:.0f} | {pairs} |")
    if s is None:
        raise SystemExit(f"{out}: no summary-*.json; run the experiment first")
    b = s["bm25_stem"]
    lines.append(f"| BM25 (English stemmer), same subset | | | | {b['R@10']:.4f} | {b['R@50']:.4f} "
                 f"| {b['MRR@10']:.4f} | | | | | | |")
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/semantic/hd-subset")
    ap.add_argument("--prune", default="none", choices=["none", "drop", "adaptive"])
    ap.add_argument("--top-k", type=int, default=16)
    ap.add_argument("--test-queries", type=int, default=200)
    ap.add_argument("--train-queries", type=int, default=800)
    ap.add_argument("--products", type=int, default=6000)
    ap.add_argument("--epochs", type=float, default=6)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--beams", type=int, default=50)
    ap.add_argument("--stage", default="sft", choices=["sft", "dpo"])
    ap.add_argument("--dpo-queries", type=int, default=800)
    ap.add_argument("--id-init", default="auto", help="ID-token embedding init: auto|content|mean|random")
    ap.add_argument("--table", action="store_true", help="only write table.md from the saved summaries")
    args = ap.parse_args()
    out = Path(args.out)
    if args.table:
        print(table(out))
        return
    out.mkdir(parents=True, exist_ok=True)

    full = load_dataset()
    test, train = sample(full.split("test"), args.test_queries), sample(full.split("train"), args.train_queries)
    ds = full.subset(test + train, n_products=args.products)
    print(f"subset: {len(ds.catalog)} products, {len(test)} test + {len(train)} train queries", flush=True)

    from semantic_id import SemanticIDs

    sid_full = Path(f"results/semantic/hd-3x256-{args.prune}")
    if sid_full.exists():
        sids = SemanticIDs.load(sid_full)
    else:
        sids = build_ids(full, prune=args.prune, top_k=args.top_k)
        sids.save(sid_full)
    pos = {p: i for i, p in enumerate(sids.item_ids)}
    idx = np.array([pos[p] for p in ds.product_ids])
    sub = SemanticIDs(ds.product_ids, sids.codes[idx], sids.config, sids.encoder, sids.quantizer, sids.info)
    sub.save(out / f"sid-{args.prune}")
    rep = sub.report()

    backbone = default_backbone(full, "small", 0)
    train_cfg = {"full": True, "epochs": args.epochs, "batch_size": 32, "learning_rate": args.lr, "dpo_epochs": 2,
                 "dpo_learning_rate": 5e-4, "save_steps": 10**9}
    t0 = time.perf_counter()
    # DPO starts from this script's SFT model of the same pruning when there is one
    sft_model = out / f"model-{args.prune}-sft"
    init = str(sft_model) if args.stage == "dpo" and sft_model.is_dir() else None
    r = SemanticIDRetriever(stage=args.stage, init=init, sid=str(out / f"sid-{args.prune}"), backbone=str(backbone),
                            preset="small", num_beams=args.beams, dpo_queries=args.dpo_queries, id_init=args.id_init,
                            dpo_pairs="all", train=train_cfg)
    r.fit(ds, out_dir=str(out / f"work-{args.prune}-{args.stage}"), progress=True)
    fit_s = time.perf_counter() - t0
    r.save(out / f"model-{args.prune}-{args.stage}")

    t0 = time.perf_counter()
    run = r.search({q: ds.queries[q] for q in test}, k=args.beams)
    ms = 1000 * (time.perf_counter() - t0) / len(test)
    metrics = ("R@10", f"R@{args.beams}", "Hit@10", "MRR@10", "NDCG@10")
    res = evaluate(run, ds, test, metrics=metrics)
    titles = sample(ds.product_ids, 300)
    trun = r.search({p: ds.catalog[p] for p in titles}, k=10, prompt=TITLE_PROMPT)
    title_hit = float(np.mean([p in trun[p].ids for p in titles]))
    bm = BM25Retriever(stemmer="english").fit(ds)
    bres = evaluate(bm.search({q: ds.queries[q] for q in test}, k=args.beams), ds, test, metrics=metrics)
    summary = {"subset": {"products": len(ds.catalog), "test_queries": len(test), "train_queries": len(train)},
               "prune": args.prune, "stage": args.stage, "beams": args.beams,
               "sid": {k: rep[k] for k in ("collision_rate_after_pruning", "mean_length", "max_length",
                                           "vocab_size", "pruned_level")},
               "gr_sid": res["overall"], "gr_sid_buckets": res["buckets"], "title_hit@10": title_hit,
               "ms_per_query": ms, "fit_seconds": fit_s, "info": r.info,
               "bm25_stem": bres["overall"], "id_init": args.id_init}
    (out / f"summary-{args.prune}-{args.stage}.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps({k: summary[k] for k in ("gr_sid", "title_hit@10", "ms_per_query", "fit_seconds",
                                              "bm25_stem")}, indent=1, default=str))


if __name__ == "__main__":
    main()
