"""Catalog churn: how each channel handles products it was never trained on (issue 18).

    python experiments/catalog_churn.py                                  # bm25, bm25-stem, dense-zeroshot, dense
    python experiments/catalog_churn.py --channels prosper,gr-multispan-sft,gr-sid-sft
    python experiments/catalog_churn.py --channels dense --set dense.max_steps=242

Holds out 10% of the Home Depot products (the lowest seeded sha1 hashes of their ids)
and every train query whose relevant products are all held out; labels naming a held-out
product are dropped from the rest. Each channel (a registry name, with the settings of
``CHANNELS`` and ``--set NAME.KEY=VALUE``) is trained on that reduced dataset, then
re-indexed on the full catalog (``Retriever.reindex``: no retraining), and the same
channel is trained on the full dataset. Test recall (R@10/100/1000) is reported
separately for relevant products *seen* in training (in the reduced catalog) and
*unseen* (held out): per query, recall over its seen (or unseen) relevant products,
averaged over the test queries that have any.

Results merge into ``<out>.json`` channel by channel (a later run adds channels; the
hold-out, seed and data must match), and ``<out>.md`` / ``<out>.png`` are re-rendered from
all of them. Each model trains under ``--work/<channel>-<churn|full>``, which is kept: a
re-run of the same command resumes an interrupted training from its last checkpoint
(checkpoints resume only when the config is the same).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from genret.cli import parse_overrides  # noqa: E402
from genret.data import Dataset, load_dataset  # noqa: E402
from genret.eval import query_metrics  # noqa: E402
from genret.retriever import make_retriever  # noqa: E402

KS = (10, 100, 1000)
# dense: 60 optimiser steps (not the default 1 epoch = 242) for both of its models, to fit
# the shared 2-core box (docs/dense.md: 242 steps + encoding took 45 min per model there)
CHANNELS: dict[str, dict] = {
    "bm25": {}, "bm25-stem": {}, "dense-zeroshot": {}, "dense": {"max_steps": 60, "threads": 1},
    "splade": {}, "prosper": {}, "gr-multispan-sft": {}, "gr-sid-sft": {},
}


def held_out(ds: Dataset, fraction: float, seed: int) -> set[str]:
    """The ``fraction`` of products with the lowest seeded sha1 of their id."""
    order = sorted(ds.catalog, key=lambda p: hashlib.sha1(f"{seed}:{p}".encode()).digest())
    return set(order[: round(fraction * len(order))])


def reduced(ds: Dataset, hidden: set[str]) -> Dataset:
    """``ds`` without the ``hidden`` products, their labels, and the train queries whose
    relevant products are all hidden."""
    drop = {q for q in ds.split("train") if set(ds.relevant(q)) <= hidden}
    queries = {q: t for q, t in ds.queries.items() if q not in drop}
    return Dataset(ds.name, {p: t for p, t in ds.catalog.items() if p not in hidden}, queries,
                   {q: {p: g for p, g in rel.items() if p not in hidden}
                    for q, rel in ds.qrels.items() if q in queries},
                   ds.threshold, {q: s for q, s in ds.query_split.items() if q in queries},
                   query_freq=ds.query_freq, encoding=ds.encoding)


def seen_unseen(run, ds: Dataset, qids: list[str], hidden: set[str]) -> dict:
    """Mean R@K over each test query's seen and unseen relevant products (and overall)."""
    metrics = [f"R@{k}" for k in KS]
    out = {}
    for part, keep in (("all", lambda p: True), ("seen", lambda p: p not in hidden),
                       ("unseen", lambda p: p in hidden)):
        per_q = []
        for q in qids:
            rel = {p: g for p, g in ds.relevant(q).items() if keep(p)}
            if rel:
                per_q.append(query_metrics(run[q].ids if q in run else [], rel, metrics))
        out[part] = {m: float(np.mean([r[m] for r in per_q])) if per_q else 0.0 for m in metrics}
        out[part]["n_queries"] = len(per_q)
    return out


def run_channel(name: str, cfg: dict, full: Dataset, part: Dataset, hidden: set[str], work: Path) -> dict:
    qids = full.split("test")
    queries = {q: full.queries[q] for q in qids}
    out = {"config": cfg}
    for label, train_ds in (("churn", part), ("full", full)):
        print(f"[{name}] {label}: training on {len(train_ds.catalog)} products", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        r = make_retriever(name, **cfg).fit(train_ds, out_dir=str(work / f"{name}-{label}"), progress=True)
        entry = {"train_seconds": round(time.perf_counter() - t0, 1)}
        if label == "churn":
            t0 = time.perf_counter()
            r.reindex(full, progress=False)
            entry |= {"reindex_seconds": round(time.perf_counter() - t0, 1), "reindexed": r.reindexed}
        t0 = time.perf_counter()
        run = r.search(queries, max(KS))
        entry |= {"ms_per_query": round(1000 * (time.perf_counter() - t0) / len(qids), 1),
                  **seen_unseen(run, full, qids, hidden)}
        out[label] = entry
        print(f"[{name}] {label}: {json.dumps(entry)}", file=sys.stderr, flush=True)
    return out


def _write(path: Path, text: str | bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(text if isinstance(text, bytes) else text.encode())
    tmp.replace(path)


def render(results: dict) -> str:
    m = results["meta"]
    lines = [f"Catalog churn on {m['dataset']} (test, {m['test_queries']} queries): {m['hidden']} of "
             f"{m['products']} products ({m['fraction']:.0%}, seed {m['seed']}) and {m['dropped_train_queries']} "
             "train queries held out of training; *churn* = trained without them, then re-indexed on the full "
             "catalog; *full* = trained on everything. Seen / unseen: recall over each query's relevant "
             f"products that were / were not in the training catalog ({m['seen_queries']} / "
             f"{m['unseen_queries']} queries have any).", "",
             "| channel | model | seen R@10 | seen R@100 | seen R@1000 | unseen R@10 | unseen R@100 "
             "| unseen R@1000 | all R@100 | train s | reindex s |", "|---" * 11 + "|"]
    for name, r in results["channels"].items():
        for label in ("churn", "full"):
            e = r[label]
            cells = [f"{e[part][f'R@{k}']:.4f}" for part in ("seen", "unseen") for k in KS]
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + f" | {e['all']['R@100']:.4f} | "
                         f"{e['train_seconds']:.0f} | {e.get('reindex_seconds', '')} |")
    settings = {n: r["config"] for n, r in results["channels"].items() if r["config"]}
    if settings:
        lines += ["", "Settings beyond the registry defaults: "
                  + "; ".join(f"{n}: {json.dumps(c)}" for n, c in settings.items())]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["channels"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    x = np.arange(len(names))
    for ax, part in zip(axes, ("seen", "unseen")):
        for j, label in enumerate(("churn", "full")):
            ax.bar(x + (j - 0.5) * 0.4, [results["channels"][n][label][part]["R@100"] for n in names], 0.4,
                   label=f"{label} (re-indexed)" if label == "churn" else "trained on all")
        ax.set_xticks(x, names, rotation=20)
        ax.set_title(f"test R@100, {part} products")
    axes[0].set_ylabel("R@100")
    axes[0].legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="dataset (default: the Home Depot data)")
    ap.add_argument("--channels", default="bm25,bm25-stem,dense-zeroshot,dense",
                    help="comma-separated registry names")
    ap.add_argument("--set", action="extend", nargs="+", metavar="NAME.KEY=VALUE",
                    help="a channel setting, e.g. dense.max_steps=242 or gr-sid-sft.train.epochs=2")
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/results/catalog_churn", help="output path without extension")
    ap.add_argument("--work", default="results/catalog_churn", help="where the models train (kept, to resume)")
    args = ap.parse_args(argv)
    full = load_dataset(args.data)
    hidden = held_out(full, args.fraction, args.seed)
    part = reduced(full, hidden)
    qids = full.split("test")
    seen = seen_unseen({}, full, qids, hidden)
    meta = {"dataset": full.name, "fingerprint": full.fingerprint(), "products": len(full.catalog),
            "hidden": len(hidden), "fraction": args.fraction, "seed": args.seed, "test_queries": len(qids),
            "dropped_train_queries": len(full.split("train")) - len(part.split("train")),
            "seen_queries": seen["seen"]["n_queries"], "unseen_queries": seen["unseen"]["n_queries"]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    jpath = out.with_suffix(".json")
    results = json.loads(jpath.read_text()) if jpath.exists() else {"meta": meta, "channels": {}}
    if results["meta"] != meta:
        sys.exit(f"{jpath} holds a run with another hold-out or dataset ({results['meta']}); use another --out")
    overrides = parse_overrides(args.set)
    for name in [c.strip() for c in args.channels.split(",") if c.strip()]:
        cfg = {**CHANNELS.get(name, {}), **overrides.get(name, {})}
        results["channels"][name] = run_channel(name, cfg, full, part, hidden, Path(args.work))
        _write(jpath, json.dumps(results, indent=2))
        _write(out.with_suffix(".md"), render(results))
        plot(results, out.with_suffix(".png"))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
