"""Tune the lexical GR decoding on the dev split (never test): beam width, the cap on
P(n|q) in the span weights and ``max_occurrences``, for a saved multispan model. Each beam width is decoded once; the
scoring variants reuse the beams.

    python experiments/lexical_dev.py --model results/lexical/models/gr-multispan-sft \\
        --beams 10 20 --prob-caps 0.999999 0.99 0.9 0.5 --out results/lexical-dev

Writes OUT/dev.json (metrics per setting, decode ms/query, and a paired randomisation test
of each setting's per-query R@100 against the first setting's, overall and on the tail) and
OUT/dev.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genret.data import load_dataset  # noqa: E402
from genret.eval import Run, evaluate, paired_test, query_metrics  # noqa: E402
from genret.lexical import MultispanRetriever  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--data")
    p.add_argument("--beams", type=int, nargs="+", default=[10])
    p.add_argument("--max-occurrences", type=int, nargs="+", default=[20000])
    p.add_argument("--prob-caps", type=float, nargs="+", default=[1 - 1e-6])
    p.add_argument("--queries", type=int, help="first N dev queries only")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(args.data)
    qids = [q for q in ds.split("dev") if ds.relevant(q)][: args.queries]
    tail = np.array([ds.buckets().get(q) == "tail" for q in qids])
    r = MultispanRetriever.load(args.model)
    rows, per_query = [], []
    for beams in args.beams:
        r.cfg.num_beams = beams
        t0 = time.perf_counter()
        hyps = r.decode([ds.queries[q] for q in qids], progress=True)
        ms = 1000 * (time.perf_counter() - t0) / len(qids)
        for mo, cap in itertools.product(args.max_occurrences, args.prob_caps):
            r.cfg.max_occurrences, r.cfg.span_prob_cap = mo, cap
            run = Run()
            for q, hs in zip(qids, hyps):
                ids, scores, _ = r._rank(hs, 1000)
                run.add(q, ids, scores)
            res = evaluate(run, ds, qids)
            per_query.append(np.array([query_metrics(run[q].ids, ds.relevant(q), ["R@100"])["R@100"] for q in qids]))
            vs_first = {"p_R@100": paired_test(per_query[-1], per_query[0])["p_value"],
                        "p_tail_R@100": paired_test(per_query[-1][tail], per_query[0][tail])["p_value"]}
            rows.append({"num_beams": beams, "max_occurrences": mo, "span_prob_cap": cap,
                         "decode_ms_per_query": ms, **res["overall"], "tail": res["buckets"]["tail"],
                         "vs_first": vs_first})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "tail"}), flush=True)
    (out / "dev.json").write_text(json.dumps({"model": args.model, "n_queries": len(qids), "rows": rows}, indent=1))
    lines = ["| beams | max_occ | P(n|q) cap | R@10 | R@100 | R@1000 | MRR@10 | tail R@100 | decode ms/q "
             "| p R@100 / tail vs row 1 |", "|---" * 10 + "|"]
    lines += [f"| {x['num_beams']} | {x['max_occurrences']} | {x['span_prob_cap']:g} | {x['R@10']:.4f} | {x['R@100']:.4f} | "
              f"{x['R@1000']:.4f} | {x['MRR@10']:.4f} | {x['tail']['R@100']:.4f} | {x['decode_ms_per_query']:.0f} "
              f"| {x['vs_first']['p_R@100']:.3f} / {x['vs_first']['p_tail_R@100']:.3f} |" for x in rows]
    (out / "dev.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
