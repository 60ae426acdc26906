"""The comparison harness: run every configured retriever on the same protocol, fuse,
and write metrics, tables, TREC runs and plots to ``results/<run>/``."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml
from tqdm.auto import tqdm

from .artifact import dir_bytes
from .data import BUCKETS, Dataset, load_dataset, synthetic_dataset, with_extra_pairs
from .eval import DEFAULT_METRICS, Run, evaluate, exclusive_recall, rrf
from .retriever import load_retriever, make_retriever

CURVE_KS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


@dataclass
class RowConfig:
    """One row of the table: a registry retriever (fitted here) or a saved model."""

    name: str
    retriever: str | None = None  # registry name; defaults to ``name``
    params: dict = field(default_factory=dict)  # constructor config
    fit: dict = field(default_factory=dict)  # extra fit() arguments
    model: str | None = None  # load a saved retriever instead of fitting (params: search-time settings)
    extra_pairs: str | None = None  # TSV of extra train labels for this row's fit (genret synth)
    # strings in params/fit/model/extra_pairs may say {out}: the run's output directory
    batch_size: int = 1  # queries per search() call; latency = call time / batch


@dataclass
class FusionConfig:
    name: str
    members: list[str]
    c: float = 60.0


@dataclass
class CompareConfig:
    name: str = "compare"
    data: str | None = None
    split: str = "test"
    k: int = 1000
    max_queries: int | None = None  # seeded sample of the split's evaluated queries
    max_train_queries: int | None = None  # seeded sample of train queries kept for fitting
    n_products: int | None = None  # catalog subset (keeps the labelled products)
    seed: int = 0
    exclusive_k: int = 100
    retrievers: list[RowConfig] = field(default_factory=list)
    fusion: list[FusionConfig] = field(default_factory=list)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "CompareConfig":
        raw = yaml.safe_load(Path(path).read_text()) or {}
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}; known: "
                             f"{sorted(cls.__dataclass_fields__)}")
        try:
            raw["retrievers"] = [RowConfig(**r) for r in raw.get("retrievers", [])]
            raw["fusion"] = [FusionConfig(**f) for f in raw.get("fusion", [])]
        except TypeError as e:
            raise ValueError(f"{path}: bad retriever/fusion entry ({e})") from None
        if not raw["retrievers"]:
            raise ValueError(f"{path}: lists no retrievers")
        return cls(**raw)


def _sample(qids: list[str], n: int | None, seed: int) -> list[str]:
    if n is None or n >= len(qids):
        return qids
    return sorted(qids, key=lambda q: hashlib.sha1(f"{seed}:{q}".encode()).digest())[:n]


def prepare(cfg: CompareConfig, dataset: Dataset) -> tuple[Dataset, list[str]]:
    """The dataset the rows see (possibly subsampled) and the evaluated query ids."""
    eval_q = _sample(dataset.split(cfg.split), cfg.max_queries, cfg.seed)
    if cfg.max_queries is None and cfg.max_train_queries is None and cfg.n_products is None:
        return dataset, eval_q
    keep = set(eval_q)
    for s in ("train", "dev"):
        if s != cfg.split:
            keep |= set(_sample(dataset.split(s, evaluated_only=False),
                                cfg.max_train_queries, cfg.seed))
    return dataset.subset(sorted(keep), cfg.n_products, cfg.seed), eval_q


def _subst(value, out: Path):
    """``{out}`` in config strings -> the run's output directory (e.g. a DPO row's
    ``init: "{out}/models/gr-multispan-sft"``)."""
    if isinstance(value, str):
        return value.replace("{out}", str(out))
    if isinstance(value, dict):
        return {k: _subst(v, out) for k, v in value.items()}
    return value


def run_row(row: RowConfig, dataset: Dataset, qids: list[str], k: int, out: Path) -> tuple[Run, dict]:
    """Fit (or load), search with timing, and save one row's retriever."""
    if row.model and row.extra_pairs:
        raise ValueError(f"row {row.name!r}: extra_pairs apply to a fitted row, not to a saved model")
    t0 = time.perf_counter()
    if row.model:
        retriever = load_retriever(_subst(row.model, out)).configure(**_subst(row.params, out))
    else:
        retriever = make_retriever(row.retriever or row.name, **_subst(row.params, out))
        fit_ds = with_extra_pairs(dataset, _subst(row.extra_pairs, out)) if row.extra_pairs else dataset
        retriever.fit(fit_ds, **_subst(row.fit, out))
    fit_s = time.perf_counter() - t0
    run, lat = Run(), []
    batches = [qids[i:i + row.batch_size] for i in range(0, len(qids), row.batch_size)]
    for batch in tqdm(batches, desc=row.name, leave=False):
        t = time.perf_counter()
        run.update(retriever.search({q: dataset.queries[q] for q in batch}, k))
        lat += [(time.perf_counter() - t) * 1000 / len(batch)] * len(batch)
    model_dir = out / "models" / row.name
    retriever.save(model_dir)
    return run, {"fit_seconds": fit_s, "latency_ms_p50": float(np.percentile(lat, 50)),
                 "latency_ms_p95": float(np.percentile(lat, 95)),
                 "index_bytes": dir_bytes(model_dir)}


def recall_curve(run: Run, dataset: Dataset, qids: list[str]) -> list[float]:
    return [float(np.mean([len(set(run[q].ids[:k] if q in run else []) & set(dataset.relevant(q)))
                           / len(dataset.relevant(q)) for q in qids])) for k in CURVE_KS]


PROTOCOL_KEYS = ("split", "k", "max_queries", "max_train_queries", "n_products", "seed")
COST_KEYS = ("fit_seconds", "latency_ms_p50", "latency_ms_p95", "index_bytes")


def _record(row: dict, config: dict, qids: list[str]) -> dict:
    """What a row's saved run depends on: its own config and the evaluation protocol."""
    rec = {"row": row, "protocol": {k: config.get(k) for k in PROTOCOL_KEYS},
           "queries": hashlib.sha256("\n".join(qids).encode()).hexdigest()}
    return json.loads(json.dumps(rec))


def _saved_rows(out: Path, cfg: CompareConfig, qids: list[str]) -> dict[str, dict]:
    """Rows of an earlier run in ``out`` that can be reused: name -> cost, from the
    per-row records (``runs/<row>.json``) and, for a run finished before those existed,
    from its ``metrics.json``."""
    saved: dict[str, dict] = {}
    try:
        old = json.loads((out / "metrics.json").read_text())
        meta = old["meta"]
        rows = {r["name"]: r for r in meta["config"]["retrievers"]}
        for e in old["retrievers"]:
            if e["name"] in rows:
                saved[e["name"]] = {"record": _record(rows[e["name"]], meta["config"], meta["query_ids"]),
                                    "cost": {k: e.get(k) for k in COST_KEYS}}
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        pass
    for path in (out / "runs").glob("*.json"):
        try:
            saved[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
    want = {r.name: _record(asdict(r), asdict(cfg), qids) for r in cfg.retrievers}
    return {name: s["cost"] for name, s in saved.items()
            if name in want and s.get("record") == want[name] and (out / "runs" / f"{name}.trec").is_file()}


def compare(cfg: CompareConfig, dataset: Dataset | None = None, out: str | Path = "results/compare",
            resume: bool = False) -> list[dict]:
    """Run the comparison; write ``metrics.json``, ``table.md``, ``table.csv``,
    ``runs/*.trec`` and plots under ``out``; return the metric entries.

    Each row's run and cost are saved as soon as it finishes (``runs/<row>.trec``,
    ``runs/<row>.json``). ``resume``: reuse the saved run of every row whose config and
    protocol are unchanged (fit time and latency are the saved ones), and re-run the
    others, plus any row whose ``{out}/models/<row>`` input was re-run."""
    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    dataset = dataset or load_dataset(cfg.data)
    view, qids = prepare(cfg, dataset)
    reusable = _saved_rows(out, cfg, qids) if resume else {}
    runs: dict[str, Run] = {}
    entries, redone = [], []
    for row in cfg.retrievers:
        needs = [n for n in redone if f"{{out}}/models/{n}" in json.dumps(asdict(row))]
        if row.name in reusable and not needs:
            run, cost = Run.read_trec(out / "runs" / f"{row.name}.trec"), reusable[row.name]
            tqdm.write(f"{row.name}: reusing its saved run ({out}/runs/{row.name}.trec)")
        else:
            run, cost = run_row(row, view, qids, cfg.k, out)
            run.write_trec(out / "runs" / f"{row.name}.trec", row.name)
            tmp = out / "runs" / f".{row.name}.json.tmp"
            tmp.write_text(json.dumps({"record": _record(asdict(row), asdict(cfg), qids), "cost": cost}, indent=1))
            tmp.replace(out / "runs" / f"{row.name}.json")
            redone.append(row.name)
        runs[row.name] = run
        entries.append({"name": row.name, **cost})
    for fu in cfg.fusion:
        missing = [m for m in fu.members if m not in runs]
        if missing:
            raise ValueError(f"fusion {fu.name!r} names rows {missing} that the config does not run")
        runs[fu.name] = rrf([runs[m] for m in fu.members], cfg.k, fu.c)
        entries.append({"name": fu.name, "members": fu.members, **dict.fromkeys(COST_KEYS)})
    for e in entries:
        runs[e["name"]].write_trec(out / "runs" / f"{e['name']}.trec", e["name"])
    score_entries(entries, runs, view, qids, cfg.exclusive_k)
    meta = {"config": asdict(cfg), "dataset": view.summary(), "n_queries": len(qids),
            "query_ids": qids}
    write_results(entries, meta, out)
    return entries


def score_entries(entries: list[dict], runs: dict[str, Run], view: Dataset, qids: list[str],
                  exclusive_k: int) -> None:
    """Add metrics, per-bucket metrics, the recall curve and exclusive recall (channels
    only, not fusion rows) to each entry, from its run."""
    excl = exclusive_recall({e["name"]: runs[e["name"]] for e in entries if "members" not in e},
                            view, qids, exclusive_k)
    for e in entries:
        ev = evaluate(runs[e["name"]], view, qids)
        e.update(metrics=ev["overall"], buckets=ev["buckets"],
                 recall_curve=dict(zip(map(str, CURVE_KS), recall_curve(runs[e["name"]], view, qids))),
                 exclusive_recall=excl.get(e["name"]))


def report(out: str | Path, dataset: Dataset | None = None) -> str:
    """Re-render a finished comparison from what it saved (``metrics.json`` and
    ``runs/*.trec``): re-evaluate every run on the same queries and rewrite the tables and
    plots. Nothing is loaded or trained. Returns the markdown table."""
    out = Path(out)
    try:
        saved = json.loads((out / "metrics.json").read_text())
        meta, entries = saved["meta"], saved["retrievers"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{out}: not a finished comparison (metrics.json missing or unreadable: {e}); "
                         "run `genret compare` first") from None
    raw = dict(meta["config"])
    cfg = CompareConfig(**{**raw, "retrievers": [RowConfig(**r) for r in raw["retrievers"]],
                           "fusion": [FusionConfig(**f) for f in raw["fusion"]]})
    if dataset is None:
        dataset = synthetic_dataset() if meta["dataset"]["name"] == "synthetic" else load_dataset(cfg.data)
    view, _ = prepare(cfg, dataset)
    qids = meta["query_ids"]
    missing = [q for q in qids if q not in view.queries]
    if missing:
        raise ValueError(f"{out}: {len(missing)} of its queries (e.g. {missing[0]!r}) are not in this "
                         "dataset; give the --data the comparison ran on")
    runs = {}
    for e in entries:
        path = out / "runs" / f"{e['name']}.trec"
        if not path.exists():
            raise ValueError(f"{path}: missing; the comparison directory is incomplete")
        runs[e["name"]] = Run.read_trec(path)
    score_entries(entries, runs, view, qids, cfg.exclusive_k)
    meta["dataset"] = view.summary()
    return write_results(entries, meta, out)


def table_markdown(entries: list[dict], meta: dict) -> str:
    ms = DEFAULT_METRICS
    lines = [f"### {meta['config']['name']}: {meta['dataset']['name']}, split "
             f"{meta['config']['split']}, {meta['n_queries']} queries, "
             f"{meta['dataset']['products']} products",
             "",
             "| retriever | " + " | ".join(ms) + " | excl.R@" + str(meta["config"]["exclusive_k"])
             + " | ms/q p50 | ms/q p95 | index MB | fit s |",
             "|---" * (len(ms) + 6) + "|"]
    fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
    for e in entries:
        lines.append(f"| {e['name']} | " + " | ".join(f"{e['metrics'][m]:.4f}" for m in ms)
                     + f" | {fmt(e['exclusive_recall'], '.4f')} | {fmt(e['latency_ms_p50'], '.1f')}"
                     f" | {fmt(e['latency_ms_p95'], '.1f')}"
                     f" | {fmt(None if e['index_bytes'] is None else e['index_bytes'] / 1e6, '.1f')}"
                     f" | {fmt(e['fit_seconds'], '.1f')} |")
    lines += ["", "Per bucket (R@10 / R@100 / R@1000, n queries):", "",
              "| retriever | " + " | ".join(f"{b} (n={entries[0]['buckets'][b]['n_queries']})"
                                          for b in BUCKETS) + " |",
              "|---" * 4 + "|"]
    for e in entries:
        cells = [" / ".join(f"{e['buckets'][b][m]:.3f}" for m in ("R@10", "R@100", "R@1000"))
                 for b in BUCKETS]
        lines.append(f"| {e['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(entries: list[dict], meta: dict, out: Path) -> str:
    """Write metrics.json, table.md, table.csv and the plots; return the markdown."""
    (out / "metrics.json").write_text(json.dumps({"meta": meta, "retrievers": entries}, indent=2))
    md = table_markdown(entries, meta)
    (out / "table.md").write_text(md)
    buf = io.StringIO()
    w = csv.writer(buf)
    cols = list(DEFAULT_METRICS)
    w.writerow(["retriever", "bucket", *cols, "n_queries", "exclusive_recall", "latency_ms_p50",
                "latency_ms_p95", "index_bytes", "fit_seconds"])
    for e in entries:
        for b, m in [("all", e["metrics"])] + [(b, e["buckets"][b]) for b in BUCKETS]:
            w.writerow([e["name"], b, *(m[c] for c in cols), m["n_queries"], e["exclusive_recall"],
                        e["latency_ms_p50"], e["latency_ms_p95"], e["index_bytes"], e["fit_seconds"]])
    (out / "table.csv").write_text(buf.getvalue())
    plot_results(entries, out)
    return md


def plot_results(entries: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.cm.tab20(np.linspace(0, 1, 20))
    for i, e in enumerate(entries):  # 20 distinct colours; fusion rows dashed
        ax.plot(CURVE_KS, [e["recall_curve"][str(k)] for k in CURVE_KS], marker="o", ms=3, label=e["name"],
                color=colors[(2 * i) % 20 + (2 * i) // 20 % 2], ls="--" if "members" in e else "-")
    ax.set(xscale="log", xlabel="K", ylabel="Recall@K", title="Recall@K")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "recall_at_k.png", dpi=120)
    plt.close(fig)
    timed = [e for e in entries if e["latency_ms_p50"] is not None]
    if timed:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for e in timed:
            ax.scatter(e["latency_ms_p50"], e["metrics"]["R@100"])
            ax.annotate(e["name"], (e["latency_ms_p50"], e["metrics"]["R@100"]), fontsize=8)
        ax.set(xscale="log", xlabel="latency ms/query (p50)", ylabel="R@100", title="Recall vs latency")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "recall_vs_latency.png", dpi=120)
        plt.close(fig)
