"""The ``genret`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .data import BUCKETS, DataError, load_dataset
from .eval import DEFAULT_METRICS, evaluate


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="dataset file or directory (default: $GENRET_DATA, else "
                                  "../shared/data/homedepot/train.csv.zip)")
    p.add_argument("--threshold", type=float, help="relevance threshold (default: the dataset's)")


def cmd_eval(args) -> int:
    from .retriever import load_retriever, make_retriever

    ds = load_dataset(args.data, args.threshold)
    qids = ds.split(args.split)
    t0 = time.perf_counter()
    retriever = load_retriever(args.model) if args.model else make_retriever(args.retriever).fit(ds)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    run = retriever.search({q: ds.queries[q] for q in qids}, args.k, progress=not args.json)
    search_s = time.perf_counter() - t0
    res = evaluate(run, ds, qids)
    if args.json:
        print(json.dumps({"retriever": args.retriever, "split": args.split, **res["overall"],
                          "buckets": res["buckets"], "fit_seconds": fit_s,
                          "ms_per_query": 1000 * search_s / len(qids)}))
        return 0
    ms = DEFAULT_METRICS
    print(f"{args.retriever} on {ds.name} {args.split} ({len(qids)} queries, "
          f"{len(ds.catalog)} products; fit {fit_s:.1f}s, {1000 * search_s / len(qids):.1f} ms/query)")
    print(f"| bucket | n | " + " | ".join(ms) + " |")
    print("|---" * (len(ms) + 2) + "|")
    for name, m in [("all", res["overall"])] + [(b, res["buckets"][b]) for b in BUCKETS]:
        print(f"| {name} | {m['n_queries']} | " + " | ".join(f"{m[x]:.4f}" for x in ms) + " |")
    return 0


def cmd_compare(args) -> int:
    from .data import synthetic_dataset
    from .harness import CompareConfig, compare

    cfg = CompareConfig.from_yaml(args.config)
    cfg.data = args.data or cfg.data
    try:
        ds = load_dataset(cfg.data, args.threshold)
    except DataError:
        if cfg.data:
            raise
        print("genret: the Home Depot data is not here (put train.csv.zip in "
              "../shared/data/homedepot/ or set GENRET_DATA); showing the pipeline on a "
              "small generated catalog instead.", file=sys.stderr)
        ds = synthetic_dataset()
    out = Path(args.out)
    compare(cfg, ds, out)
    print((out / "table.md").read_text())
    print(f"results written to {out}/ (metrics.json, table.md, table.csv, runs/, *.png)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="genret", description="generative retrieval for product search")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="evaluate one retriever on a split")
    _add_data(p)
    p.add_argument("--retriever", required=True, help="registry name, e.g. bm25, bm25-stem")
    p.add_argument("--model", help="a saved retriever directory (skips fitting)")
    p.add_argument("--split", default="test", choices=["train", "dev", "test", "all"])
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="run the retrievers of a YAML config and tabulate")
    p.add_argument("--config", required=True)
    _add_data(p)
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=cmd_compare)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, ValueError, FileNotFoundError) as e:
        print(f"genret {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
