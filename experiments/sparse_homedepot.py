"""Train and evaluate a learned-sparse retriever (SPLADE / PROSPER / an ablation) on Home
Depot: train split for training, the full 54,667-product catalog indexed, metrics on dev and
test, the # FLOPS figure and a term-weight case study.

    .venv/bin/python experiments/sparse_homedepot.py splade --out results/sparse/splade \\
        --set max_steps=200 batch_size=32
    .venv/bin/python experiments/sparse_homedepot.py prosper --out results/sparse/prosper-minilm \\
        --set max_steps=400 batch_size=32            # MiniLM, the default backbone
    .venv/bin/python experiments/sparse_homedepot.py prosper --out results/sparse/prosper \\
        --set preset=small max_steps=400 batch_size=32   # the embedded 6.2M LM

Writes ``OUT/model`` (the saved retriever), ``OUT/metrics.json``, ``OUT/case_study.{md,json}``
and TREC runs. Values after ``--set`` are parsed as JSON when they can be (numbers, true,
null), else kept as strings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genret.data import load_dataset  # noqa: E402
from genret.eval import evaluate  # noqa: E402
from genret.retriever import load_retriever, make_retriever  # noqa: E402
from genret.sparse import write_case_study  # noqa: E402

CASE_QUERIES = 8


def _parse_set(items: list[str]) -> dict:
    out = {}
    for it in items:
        k, _, v = it.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("retriever", help="registry name: splade, prosper, prosper-minilm, ...")
    p.add_argument("--out", required=True)
    p.add_argument("--data", default=None)
    p.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    p.add_argument("--model", help="evaluate a saved model instead of training")
    p.add_argument("--k", type=int, default=1000)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(args.data)
    cfg = _parse_set(args.set)
    t0 = time.perf_counter()
    if args.model:
        r = load_retriever(args.model)
    else:
        r = make_retriever(args.retriever, **cfg).fit(ds, progress=True)
        r.save(out / "model")
    fit_s = time.perf_counter() - t0
    result = {"retriever": args.retriever, "config": r.cfg.__dict__ | {"negative_sources": list(r.cfg.negative_sources)},
              "fit_seconds": round(fit_s, 1), "info": r.info, "train_log_last": r.train_log[-1:] or None}
    for split in ("dev", "test"):
        qids = ds.split(split)
        qs = {q: ds.queries[q] for q in qids}
        t1 = time.perf_counter()
        run = r.search(qs, args.k, progress=True)
        ms = 1000 * (time.perf_counter() - t1) / len(qids)
        run.write_trec(out / f"{split}.trec", tag=args.retriever)
        res = evaluate(run, ds, qids)
        r_full = r.cfg.query_top_terms
        r.cfg.query_top_terms = None
        flops_full = r.flops(qs)
        r.cfg.query_top_terms = r_full
        result[split] = {"metrics": res, "ms_per_query": round(ms, 2), "flops": r.flops(qs),
                         "flops_unpruned": flops_full}
        print(split, json.dumps({k: round(v, 4) for k, v in res["overall"].items()}),
              f"flops={result[split]['flops']:.2f}", flush=True)
    test = ds.split("test")[:CASE_QUERIES]
    write_case_study(r, {q: ds.queries[q] for q in test}, out / "case_study", catalog=ds.catalog,
                     title=f"{args.retriever}: term weights on Home Depot test queries")
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({s: result[s]["metrics"]["overall"] for s in ("dev", "test")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
