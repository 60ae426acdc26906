"""The comparison harness: run every configured retriever on the same protocol, fuse,
and write metrics, tables, TREC runs and plots to ``results/<run>/``."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml
from tqdm.auto import tqdm

from .artifact import dir_bytes, sha256
from .data import BUCKETS, Dataset, load_dataset, synthetic_dataset, with_extra_pairs
from .eval import DEFAULT_METRICS, Run, evaluate, exclusive_recall, rrf
from .retriever import load_retriever, make_retriever, override_config

CURVE_KS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
# bump when the per-row record, the run files or metrics.json change meaning: saved runs of
# another format are re-run, never reused
RECORD_FORMAT = 2
MARKER = "compare.json"  # marks a results directory as a genret comparison
LOCK = "compare.lock"  # held (flock) by the one process writing into a results directory


@dataclass
class RowConfig:
    """One row of the table: a registry retriever (fitted here) or a saved model."""

    name: str
    retriever: str | None = None  # registry name; defaults to ``name``
    params: dict = field(default_factory=dict)  # constructor config
    fit: dict = field(default_factory=dict)  # fit(): out_dir, progress, config overrides (checked)
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

    def __post_init__(self) -> None:
        """Refuse row names that would share a table row or a file: duplicates, names
        that are not plain file names, fusions of rows the config does not run."""
        seen: set[str] = set()
        named = [("retriever", r.name) for r in self.retrievers] + [("fusion", f.name) for f in self.fusion]
        for what, name in named:
            if not isinstance(name, str) or not re.fullmatch(r"[^/\s.][^/\s]*", name):
                raise ValueError(f"{what} name {name!r}: use a file name without '/' or spaces, "
                                 "not starting with '.' (it names runs/<name>.trec)")
            if name in seen:
                raise ValueError(f"config {self.name!r}: two rows are named {name!r}; give each "
                                 "retriever and fusion its own name")
            seen.add(name)
        known: set[str] = {r.name for r in self.retrievers}
        for fu in self.fusion:
            missing = [m for m in fu.members if m not in known]
            if missing:
                raise ValueError(f"fusion {fu.name!r} names rows {missing} that the config does not run "
                                 "(before it)")
            known.add(fu.name)

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

    def only(self, names: list[str]) -> "CompareConfig":
        """This config with only the rows ``names`` (in the config's order) and the fusions
        whose members are all among them: a long comparison run a part at a time (with
        ``--resume``, the rows a part ran are reused by the next)."""
        rows = {r.name for r in self.retrievers}
        unknown = [n for n in names if n not in rows]
        if unknown:
            raise ValueError(f"--only: {', '.join(unknown)} is not a retriever row of config "
                             f"{self.name!r} (its rows: {', '.join(sorted(rows))})")
        keep = set(names)
        fusion = []
        for fu in self.fusion:
            if set(fu.members) <= keep:
                fusion.append(fu)
                keep.add(fu.name)
        return replace(self, retrievers=[r for r in self.retrievers if r.name in keep],
                                   fusion=fusion)


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


FIT_KEYWORDS = ("out_dir", "progress")  # the fit: keys that are fit() arguments, not config overrides


def check_row(row: RowConfig, out: Path):
    """The fresh retriever of a fitted row, once its params and ``fit:`` block (config
    overrides, validated like :meth:`Retriever.fit`'s) are checked; None for a saved-model
    row, which takes no ``fit:`` or ``extra_pairs``. A bad setting is one ValueError."""
    if row.model:
        if row.extra_pairs or row.fit:
            what = "extra_pairs apply" if row.extra_pairs else "a fit: block applies"
            raise ValueError(f"row {row.name!r}: {what} to a fitted row, not to a saved model")
        return None
    retriever = make_retriever(row.retriever or row.name, **_subst(row.params, out))
    overrides = {k: v for k, v in _subst(row.fit, out).items() if k not in FIT_KEYWORDS}
    override_config(retriever.cfg, f"row {row.name!r} fit", overrides)
    return retriever


def run_row(row: RowConfig, dataset: Dataset, qids: list[str], k: int, out: Path) -> tuple[Run, dict]:
    """Fit (or load), search with timing, and save one row's retriever. Fitting shows
    progress bars unless the row's ``fit:`` says ``progress: false``."""
    retriever = check_row(row, out)
    t0 = time.perf_counter()
    if retriever is None:
        retriever = load_retriever(_subst(row.model, out)).configure(**_subst(row.params, out))
    else:
        fit_ds = with_extra_pairs(dataset, _subst(row.extra_pairs, out)) if row.extra_pairs else dataset
        retriever.fit(fit_ds, **{"progress": True, **_subst(row.fit, out)})
    fit_s = time.perf_counter() - t0
    run, lat = Run(), []
    batches = [qids[i:i + row.batch_size] for i in range(0, len(qids), row.batch_size)]
    for batch in tqdm(batches, desc=row.name, leave=False):
        t = time.perf_counter()
        run.update(retriever.search({q: dataset.queries[q] for q in batch}, k))
        lat += [(time.perf_counter() - t) * 1000 / len(batch)] * len(batch)
    model_dir = out / "models" / row.name
    retriever.save(model_dir, overwrite=True)  # out/models/ is the comparison's own
    return run, {"fit_seconds": fit_s, "latency_ms_p50": float(np.percentile(lat, 50)),
                 "latency_ms_p95": float(np.percentile(lat, 95)),
                 "index_bytes": dir_bytes(model_dir)}


def recall_curve(run: Run, dataset: Dataset, qids: list[str]) -> list[float]:
    return [float(np.mean([len(set(run[q].ids[:k] if q in run else []) & set(dataset.relevant(q)))
                           / len(dataset.relevant(q)) for q in qids])) for k in CURVE_KS]


PROTOCOL_KEYS = ("split", "k", "max_queries", "max_train_queries", "n_products", "seed")
COST_KEYS = ("fit_seconds", "latency_ms_p50", "latency_ms_p95", "index_bytes")


def _notice(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


def _read_json(path: Path):
    """The JSON value in ``path``; None when the file is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``path`` whole or not at all: a temp file beside it, then ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _is_comparison(out: Path) -> bool:
    """Whether ``out`` holds a genret comparison: our marker or, from a genret before the
    marker, a metrics.json or per-row run record of ours."""
    marker = _read_json(out / MARKER)
    if isinstance(marker, dict) and marker.get("kind") == "genret-compare":
        return True
    old = _read_json(out / "metrics.json")
    if isinstance(old, dict) and {"meta", "retrievers"} <= set(old):
        return True
    return any(isinstance(rec := _read_json(p), dict) and "record" in rec for p in (out / "runs").glob("*.json"))


def claim_results_dir(out: str | Path) -> None:
    """Create and mark ``out`` as a comparison's results directory, or fail fast (before
    any work) when ``compare`` could not write there: a file, a user's non-empty folder
    (left untouched) or a comparison another process is writing. For callers that put
    their own files in ``out`` before ``compare`` (experiments/synth_homedepot.py)."""
    with _results_dir(Path(out)):
        pass


@contextlib.contextmanager
def _results_dir(out: Path):
    """Hold ``out`` as the one writing ``compare``: refuse a file or a user's non-empty
    folder, create ``out``, take its lock and mark it as a comparison."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a directory; choose another --out")
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()) and not _is_comparison(out):
        raise ValueError(f"--out {out} is a non-empty folder that is not a genret comparison "
                         f"(no {MARKER}); choose another --out or empty it")
    out.mkdir(parents=True, exist_ok=True)
    with _one_writer(out, "compare"):
        _atomic_write(out / MARKER, json.dumps({"kind": "genret-compare", "format_version": RECORD_FORMAT}))
        yield


@contextlib.contextmanager
def _one_writer(out: Path, command: str):
    """Hold ``out/compare.lock`` (exclusive, non-blocking flock) while ``command`` writes
    into ``out``: a second writer fails at once, naming the first."""
    with os.fdopen(os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644), "r+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, _, who = f.read().strip().partition(" ")
            hint = " or choose another --out" if command == "compare" else ""
            raise ValueError(f"{out} is being written by another genret {who or 'compare'} "
                             f"(pid {pid or '?'}); wait for it{hint}") from None
        f.truncate(0)
        f.write(f"{os.getpid()} {command}\n")
        f.flush()
        yield


def _sha256_or_none(path: Path) -> str | None:
    return sha256(path) if path.is_file() else None


def _strings(value):
    """Every string in a row's config (nested in mappings and lists), as written."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, (dict, list, tuple)):
        for v in value.values() if isinstance(value, dict) else value:
            yield from _strings(v)


def _inputs(row: RowConfig, out: Path) -> dict[str, str | None]:
    """sha256 of what a row reads besides the dataset: the manifest (which lists every
    file's checksum) of its saved model and of each ``{out}/models/<row>`` it names, and
    its extra pairs."""
    dirs = {d for text in _strings(asdict(row)) for d in re.findall(r"\{out\}/models/[^/\s]+", text)}
    if row.model:
        dirs.add(row.model)
    inputs = {d: _sha256_or_none(Path(_subst(d, out)) / "manifest.json") for d in sorted(dirs)}
    if row.extra_pairs:
        inputs[row.extra_pairs] = _sha256_or_none(Path(_subst(row.extra_pairs, out)))
    return inputs


def _file_stats(path: Path) -> dict:
    """A run file's line count and sha256: what its record checks before it is read back."""
    with path.open("rb") as f:
        lines = sum(1 for _ in f)
    return {"lines": lines, "sha256": sha256(path)}


def _write_run(run: Run, path: Path, tag: str) -> dict:
    """Write ``run`` to ``path`` (TREC format); return the stats its record keeps."""
    run.write_trec(path, tag)
    return {"queries": len(run), **_file_stats(path)}


def _run_changed(path: Path, recorded) -> str | None:
    """Why the run file at ``path`` is not the one recorded (None: it is)."""
    if not path.is_file():
        return f"{path} is missing"
    if not isinstance(recorded, dict):
        return f"{path} has no recorded size and checksum"
    got = _file_stats(path)
    if got["lines"] != recorded.get("lines"):
        return f"{path} has {got['lines']} lines, its record says {recorded.get('lines')} (truncated or edited)"
    if got["sha256"] != recorded.get("sha256"):
        return f"{path} was edited since it was written (checksum mismatch)"
    return None


_STALE = {"format": "it was saved by another genret (record format {old}, this one writes {new})",
          "threshold": "the relevance threshold changed ({old} -> {new})",
          "data": "the dataset changed (another catalog, queries or labels)",
          "protocol": "the protocol changed (split, k, sampling or seed)",
          "queries": "the evaluated queries changed",
          "row": "its config changed",
          "settings": "its effective settings changed (a default of this genret differs)",
          "inputs": "its saved model, an input model or its extra pairs changed"}


def _saved_run(out: Path, name: str, want: dict) -> tuple[Run, dict] | None:
    """Row ``name``'s saved run and its ``runs/<row>.json`` (record, cost, run file stats)
    when the record is ``want`` and the run file is the one recorded; otherwise None,
    saying why when a run of it was saved."""
    path = out / "runs" / f"{name}.trec"
    saved = _read_json(out / "runs" / f"{name}.json")
    if saved is None and not path.exists():
        return None
    rec = saved.get("record") if isinstance(saved, dict) and isinstance(saved.get("cost"), dict) else None
    if not isinstance(rec, dict):
        why = "it has no record of what it was run on (saved by an older genret, or interrupted)"
    else:
        why = next((msg.format(old=rec.get(key, 1 if key == "format" else None), new=want[key])
                    for key, msg in _STALE.items() if rec.get(key) != want[key]), None)
        why = why or _run_changed(path, saved.get("run"))
    if why is None:
        return Run.read_trec(path), saved
    _notice(f"{name}: re-running it: {why}")
    return None


def compare(cfg: CompareConfig, dataset: Dataset | None = None, out: str | Path = "results/compare",
            resume: bool = False) -> list[dict]:
    """Run the comparison; write ``metrics.json``, ``table.md``, ``table.csv``,
    ``runs/*.trec`` and plots under ``out``; return the metric entries.

    ``out`` must be absent, empty or an earlier comparison (a user's folder is refused) and
    has one writer at a time (``out/compare.lock``). Each row's run and record are saved as
    soon as it finishes (``runs/<row>.trec``, ``runs/<row>.json``). ``resume``: reuse the
    saved run of every row whose record matches (record format, row config, the effective
    settings of a fitted row with every default filled in, input models, protocol, dataset
    fingerprint, threshold, evaluated queries) and whose run file
    has its recorded lines and sha256 (fit time and latency are the saved ones); re-run the
    others, saying why."""
    out = Path(out)
    with _results_dir(out):
        (out / "runs").mkdir(exist_ok=True)
        settings = {}  # a fitted row's effective config, defaults included: a changed default re-runs it
        for row in cfg.retrievers:  # a bad setting in any row fails before data loads or a row runs
            fresh = check_row(row, out)
            settings[row.name] = None if fresh is None else json.loads(json.dumps(asdict(fresh.cfg), default=str))
        dataset = dataset or load_dataset(cfg.data)
        view, qids = prepare(cfg, dataset)
        base = {"format": RECORD_FORMAT, "protocol": {k: getattr(cfg, k) for k in PROTOCOL_KEYS},
                "threshold": view.threshold, "data": view.fingerprint(),
                "queries": hashlib.sha256("\n".join(qids).encode()).hexdigest()}
        runs: dict[str, Run] = {}
        entries, files = [], {}
        for row in cfg.retrievers:
            path = out / "runs" / f"{row.name}.trec"
            want = json.loads(json.dumps({**base, "row": asdict(row), "settings": settings[row.name],
                                          "inputs": _inputs(row, out)}))
            saved = _saved_run(out, row.name, want) if resume else None
            if saved:
                run, cost, files[row.name] = saved[0], saved[1]["cost"], saved[1]["run"]
                _notice(f"{row.name}: reusing its saved run ({path})")
            else:
                run, cost = run_row(row, view, qids, cfg.k, out)
                files[row.name] = _write_run(run, path, row.name)
                _atomic_write(path.with_suffix(".json"),
                              json.dumps({"record": want, "cost": cost, "run": files[row.name]}, indent=1))
            runs[row.name] = run
            entries.append({"name": row.name, **cost})
        for fu in cfg.fusion:
            runs[fu.name] = rrf([runs[m] for m in fu.members], cfg.k, fu.c)
            files[fu.name] = _write_run(runs[fu.name], out / "runs" / f"{fu.name}.trec", fu.name)
            entries.append({"name": fu.name, "members": fu.members, **dict.fromkeys(COST_KEYS)})
        score_entries(entries, runs, view, qids, cfg.exclusive_k)
        meta = {"config": asdict(cfg), "dataset": view.summary(), "data_fingerprint": base["data"],
                "format_version": RECORD_FORMAT, "n_queries": len(qids), "query_ids": qids,
                "run_files": files}
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
    plots. Nothing is loaded or trained. Returns the markdown table.

    Refuses a dataset other than the one the comparison ran on (its fingerprint) and a run
    file that is not the one the comparison wrote (line count and sha256); takes the
    results directory's lock like ``compare``."""
    out = Path(out)
    if not (out / "metrics.json").is_file():
        raise ValueError(f"{out}: not a finished comparison (no metrics.json); run `genret compare` first")
    with _one_writer(out, "report"):
        try:
            saved = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
            meta, entries, raw = saved["meta"], saved["retrievers"], dict(saved["meta"]["config"])
            cfg = CompareConfig(**{**raw, "retrievers": [RowConfig(**r) for r in raw["retrievers"]],
                                   "fusion": [FusionConfig(**f) for f in raw["fusion"]]})
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{out}/metrics.json: unreadable or from another genret ({type(e).__name__}: {e}); "
                             "re-run `genret compare`") from None
        if dataset is None:
            dataset = (synthetic_dataset() if meta["dataset"]["name"] == "synthetic"
                       else load_dataset(cfg.data, meta["dataset"].get("threshold")))
        view, _ = prepare(cfg, dataset)
        qids = meta["query_ids"]
        missing = [q for q in qids if q not in view.queries]
        fingerprint = view.fingerprint()
        if meta.get("data_fingerprint", fingerprint) != fingerprint:
            raise ValueError(f"{out}: this dataset is not the one the comparison ran on (another catalog, "
                             "queries, labels or threshold); give the --data and --threshold it ran on")
        if missing:
            raise ValueError(f"{out}: {len(missing)} of its queries (e.g. {missing[0]!r}) are not in this "
                             "dataset; give the --data the comparison ran on")
        recorded = meta.get("run_files")
        if recorded is None:
            _notice(f"{out}: written by a genret without run checksums; its runs are read unchecked")
        runs = {}
        for e in entries:
            path = out / "runs" / f"{e['name']}.trec"
            why = (_run_changed(path, recorded.get(e["name"])) if recorded is not None
                   else None if path.is_file() else f"{path} is missing")
            if why:
                raise ValueError(f"{why}; redo that row with `genret compare --config <its config> "
                                 f"--out {out} --resume`")
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
    """Write metrics.json, table.md, table.csv and the plots, each whole or not at all;
    return the markdown."""
    md = table_markdown(entries, meta)
    buf = io.StringIO()
    w = csv.writer(buf)
    cols = list(DEFAULT_METRICS)
    w.writerow(["retriever", "bucket", *cols, "n_queries", "exclusive_recall", "latency_ms_p50",
                "latency_ms_p95", "index_bytes", "fit_seconds"])
    for e in entries:
        for b, m in [("all", e["metrics"])] + [(b, e["buckets"][b]) for b in BUCKETS]:
            w.writerow([e["name"], b, *(m[c] for c in cols), m["n_queries"], e["exclusive_recall"],
                        e["latency_ms_p50"], e["latency_ms_p95"], e["index_bytes"], e["fit_seconds"]])
    _atomic_write(out / "metrics.json", json.dumps({"meta": meta, "retrievers": entries}, indent=2))
    _atomic_write(out / "table.md", md)
    _atomic_write(out / "table.csv", buf.getvalue())
    plot_results(entries, out)
    return md


def plot_results(entries: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, name: str) -> None:
        png = io.BytesIO()
        fig.savefig(png, dpi=120, format="png")
        plt.close(fig)
        _atomic_write(out / name, png.getvalue())

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.cm.tab20(np.linspace(0, 1, 20))
    for i, e in enumerate(entries):  # 20 distinct colours; fusion rows dashed
        ax.plot(CURVE_KS, [e["recall_curve"][str(k)] for k in CURVE_KS], marker="o", ms=3, label=e["name"],
                color=colors[(2 * i) % 20 + (2 * i) // 20 % 2], ls="--" if "members" in e else "-")
    ax.set(xscale="log", xlabel="K", ylabel="Recall@K", title="Recall@K")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, "recall_at_k.png")
    timed = [e for e in entries if e["latency_ms_p50"] is not None]
    if timed:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for e in timed:
            ax.scatter(e["latency_ms_p50"], e["metrics"]["R@100"])
            ax.annotate(e["name"], (e["latency_ms_p50"], e["metrics"]["R@100"]), fontsize=8)
        ax.set(xscale="log", xlabel="latency ms/query (p50)", ylabel="R@100", title="Recall vs latency")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        save(fig, "recall_vs_latency.png")
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(entries) + 2), 4.5))
    width = 0.8 / (len(BUCKETS) + 1)
    x = np.arange(len(entries))
    for j, b in enumerate(("all",) + tuple(BUCKETS)):  # R@100 per query bucket, side by side per row
        ax.bar(x + (j - len(BUCKETS) / 2) * width, [(e["metrics"] if b == "all" else e["buckets"][b])["R@100"]
                                                    for e in entries], width, label=b)
    ax.set_xticks(x, [e["name"] for e in entries], rotation=60, ha="right", fontsize=7)
    ax.set(ylabel="R@100", title="R@100 by query bucket", ylim=(0, 1.12))
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, ncols=len(BUCKETS) + 1, loc="upper center")
    fig.tight_layout()
    save(fig, "recall_by_bucket.png")
