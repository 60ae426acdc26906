"""Markdown table of the learned-sparse runs written by experiments/sparse_homedepot.py
(results/sparse/<row>/metrics.json), next to BM25 on the same split.

    python experiments/sparse_table.py [--split test] [--root results/sparse] > results/sparse/table.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genret.data import BUCKETS, load_dataset  # noqa: E402
from genret.eval import evaluate  # noqa: E402
from genret.retriever import make_retriever  # noqa: E402

ORDER = ["splade", "prosper", "prosper-no-lrn", "prosper-lrn-add", "prosper-no-lfw",
         "prosper-maxpool", "prosper-no-norm", "prosper-cased"]


def row(name: str, overall: dict, buckets: dict, extra: str) -> str:
    cells = [f"{overall[m]:.4f}" for m in ("R@10", "R@100", "R@1000", "MRR@10")]
    cells += [f"{buckets[b]['R@100']:.3f} / {buckets[b]['R@1000']:.3f}" for b in BUCKETS]
    return f"| {name} | " + " | ".join(cells) + f" | {extra} |"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", default="test")
    p.add_argument("--root", default="results/sparse")
    p.add_argument("--data")
    args = p.parse_args(argv)
    ds = load_dataset(args.data)
    qids = ds.split(args.split)
    lines = ["| row | R@10 | R@100 | R@1000 | MRR@10 | " + " | ".join(f"{b} R@100 / R@1000" for b in BUCKETS)
             + " | # FLOPS (top-16 q) · steps · train s |", "|---" * (6 + len(BUCKETS)) + "|"]
    for name in ("bm25", "bm25-stem"):
        r = make_retriever(name).fit(ds, progress=True)
        res = evaluate(r.search({q: ds.queries[q] for q in qids}, 1000), ds, qids)
        lines.append(row(name, res["overall"], res["buckets"], "–"))
    found = {d.name: d for d in Path(args.root).iterdir() if (d / "metrics.json").exists()}
    for name in [n for n in ORDER if n in found] + sorted(set(found) - set(ORDER)):
        m = json.loads((found[name] / "metrics.json").read_text())
        s = m[args.split]
        steps = (m.get("train_log_last") or [{}])[0].get("step", "?")
        lines.append(row(name, s["metrics"]["overall"], s["metrics"]["buckets"],
                         f"{s['flops']:.2f} · {steps} · {m['info'].get('train_seconds', 0):.0f}"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
