"""Paired randomisation tests between rows of a `genret compare` run (per-query metric,
sign-flip test, `genret.eval.paired_test`), overall and on the tail bucket.

    python experiments/significance.py --run results/homedepot --metric R@50 \\
        gr-sid-adaptive-sft:gr-sid-sft gr-sid-drop-sft:gr-sid-sft gr-sid-dpo:gr-sid-sft

Reads RUN/runs/<row>.trec, the queries the comparison evaluated (RUN/metrics.json: a
``max_queries`` sample when it had one) and the dataset; writes RUN/significance-<metric>.json
and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genret.data import load_dataset  # noqa: E402
from genret.eval import Run, paired_test, query_metrics  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pairs", nargs="+", help="A:B row names (A is compared with B)")
    p.add_argument("--run", required=True, help="a `genret compare` output directory")
    p.add_argument("--metric", default="R@100")
    p.add_argument("--split", help="the split (default: the comparison's)")
    p.add_argument("--data")
    p.add_argument("--resamples", type=int, default=10000)
    args = p.parse_args(argv)
    run_dir = Path(args.run)
    pairs = [x.split(":") for x in args.pairs]
    if any(len(x) != 2 for x in pairs):
        p.error("pairs are A:B, e.g. gr-sid-adaptive-sft:gr-sid-sft")
    missing = sorted({n for x in pairs for n in x if not (run_dir / "runs" / f"{n}.trec").exists()})
    if missing:
        p.error(f"no saved run for {missing} in {run_dir / 'runs'}; run `genret compare` first")
    meta_file = run_dir / "metrics.json"
    if not meta_file.exists():
        p.error(f"no {meta_file}: run `genret compare` first")
    meta = json.loads(meta_file.read_text())["meta"]
    split = meta["config"]["split"]
    if args.split and args.split != split:
        p.error(f"{run_dir} was run on the {split} split, not {args.split}")
    ds = load_dataset(args.data)
    qids = meta.get("query_ids")  # the evaluated queries: all of the split, or the comparison's sample
    if not qids:
        p.error(f"{meta_file} does not list its queries (an older genret wrote it): re-run `genret compare`")
    buckets = ds.buckets()
    tail = [q for q in qids if buckets.get(q) == "tail"]
    cache: dict[str, dict[str, float]] = {}

    def scores(name: str) -> dict[str, float]:
        if name not in cache:
            run = Run.read_trec(run_dir / "runs" / f"{name}.trec")
            cache[name] = {q: query_metrics(run[q].ids if q in run else [], ds.relevant(q), [args.metric])[args.metric]
                           for q in qids}
        return cache[name]

    rows = []
    for a, b in pairs:
        sa, sb = scores(a), scores(b)
        res = {"a": a, "b": b, "metric": args.metric}
        for part, qs in (("overall", qids), ("tail", tail)):
            res[part] = paired_test([sa[q] for q in qs], [sb[q] for q in qs], args.resamples)
        rows.append(res)
    (run_dir / f"significance-{args.metric}.json").write_text(json.dumps(
        {"split": split, "n_queries": len(qids), "rows": rows}, indent=1))
    print(f"| A | B | {args.metric} A | B | p | tail A | tail B | tail p |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        o, t = r["overall"], r["tail"]
        print(f"| {r['a']} | {r['b']} | {o['mean_a']:.4f} | {o['mean_b']:.4f} | {o['p_value']:.2g} "
              f"| {t['mean_a']:.4f} | {t['mean_b']:.4f} | {t['p_value']:.2g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
