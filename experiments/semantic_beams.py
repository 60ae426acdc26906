"""Beam width vs recall and decode cost for a saved semantic-ID model (dev split: the width
is a tuning knob). A run holds at most ``num_beams`` products, so R@100 needs >= 100
beams and R@1000 needs 1000; this measures what each width costs on this machine.

    python experiments/semantic_beams.py --model results/semantic-sft/models/gr-sid-sft \\
        --beams 10 50 100 200 1000 --queries 100 --out results/semantic-beams

Writes OUT/beams.json (per width: ms/query, valid beams, R@K overall and tail), OUT/beams.md
and OUT/beams.png. Queries: a seeded sample of the evaluated dev queries. Widths already in
OUT/beams.json for the same model and queries are kept unless re-run (to re-time a few).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genret.data import load_dataset  # noqa: E402
from genret.eval import Run, evaluate  # noqa: E402
from genret.harness import _sample  # noqa: E402
from genret.semantic import SemanticIDRetriever  # noqa: E402

KS = (10, 50, 100, 200, 1000)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = [r["num_beams"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for k in KS:
        a1.plot(b, [r["overall"][f"R@{k}"] for r in rows], marker="o", label=f"R@{k}")
    a1.set(xscale="log", xlabel="beams", ylabel="recall", title=title)
    a1.legend()
    a2.plot(b, [r["decode_ms_per_query"] for r in rows], marker="o")
    a2.set(xscale="log", yscale="log", xlabel="beams", ylabel="decode ms / query", title="cost")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--data")
    p.add_argument("--beams", type=int, nargs="+", default=[10, 50, 100])
    p.add_argument("--queries", type=int, default=100, help="seeded sample of N dev queries")
    p.add_argument("--batch-size", type=int, default=8, help="queries decoded together")
    args = p.parse_args(argv)
    if min(args.beams) < 1:
        p.error("--beams must all be >= 1")
    out = Path(args.out)
    ds = load_dataset(args.data)
    qids = _sample(ds.split("dev"), args.queries, 0)
    r = SemanticIDRetriever.load(args.model)
    r.cfg.decode_batch_size = args.batch_size
    rows = []
    for beams in sorted(args.beams):
        r.cfg.num_beams = beams
        t0 = time.perf_counter()
        hyps = r.decode([ds.queries[q] for q in qids], progress=True)
        ms = 1000 * (time.perf_counter() - t0) / len(qids)
        run, valid = Run(), []
        for q, hs in zip(qids, hyps):
            ids, scores, _ = r._rank(hs, max(KS))
            run.add(q, ids, scores)
            valid.append(len(ids))
        res = evaluate(run, ds, qids, metrics=[f"R@{k}" for k in KS] + ["MRR@10"])
        rows.append({"num_beams": beams, "decode_ms_per_query": ms, "mean_products": float(np.mean(valid)),
                     "overall": res["overall"], "tail": res["buckets"]["tail"]})
        print(json.dumps({"num_beams": beams, "ms/q": round(ms), **{k: round(v, 4) for k, v in
                          res["overall"].items() if k.startswith("R@")}}), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    head = {"model": args.model, "split": "dev", "n_queries": len(qids)}
    if (out / "beams.json").exists():
        old = json.loads((out / "beams.json").read_text())
        if {k: old.get(k) for k in head} == head:
            rows += [x for x in old["rows"] if x["num_beams"] not in args.beams]
            rows.sort(key=lambda x: x["num_beams"])
    (out / "beams.json").write_text(json.dumps({**head, "rows": rows}, indent=1))
    lines = ["| beams | products/q | " + " | ".join(f"R@{k}" for k in KS) + " | tail R@100 | decode ms/q |",
             "|---" * (len(KS) + 4) + "|"]
    lines += [f"| {x['num_beams']} | {x['mean_products']:.0f} | " + " | ".join(f"{x['overall'][f'R@{k}']:.4f}" for k in KS)
              + f" | {x['tail']['R@100']:.4f} | {x['decode_ms_per_query']:.0f} |" for x in rows]
    (out / "beams.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / "beams.png", f"{Path(args.model).name}, {len(qids)} dev queries")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
