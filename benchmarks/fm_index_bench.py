"""Benchmark fm_index on Home Depot titles, side by side with sdsl-lite ``csa_wt_int<>``.

    python benchmarks/fm_index_bench.py [--repeats 5] [--no-sdsl] [--no-large]

Corpus: one title per product_uid (first variant in file order), all-MiniLM-L6-v2
WordPiece ids (no special tokens), one document per title. Workload: 2,000 random title
n-grams (length 1-6, seed 0), each grown token by token from the empty pattern with
``extend`` then ``next_symbols`` at every step: once through the per-range API (one call each),
once through the fused batched ``FMIndex.step`` (all n-grams in lockstep, one call per
position, as a decoding step calls it). Large corpus: the titles repeated with
10% of the ids of every further copy replaced at random, up to 10M tokens (built in a
child process to measure its peak RSS). sdsl runs when ``libsdsl-dev`` is installed
(``benchmarks/sdsl_bench.cpp``, compiled here with g++). Writes
``benchmarks/results/fm_index.json`` and ``fm_index.md``.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fm_index import FMIndex  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "homedepot" / "train.csv.zip"
RESULTS = ROOT / "benchmarks" / "results"
SDSL_REFERENCE = {"build_s": 0.76, "bytes_per_symbol": 2.96, "step_us": 12.1, "avg_distinct": 148.6}
TARGETS = {"step_ratio": 1.0, "bytes_ratio": 1.0, "build_s": 2.3, "large_build_s": 60.0, "large_peak_gib": 2.0}


def load_titles(path):
    """Token ids of the first title of every product, in file order; and the vocab size."""
    import pandas as pd
    from transformers import AutoTokenizer

    from genret.minilm import minilm_path

    df = pd.read_csv(path, encoding="latin-1").drop_duplicates("product_uid", keep="first")
    tok = AutoTokenizer.from_pretrained(minilm_path())
    ids = tok(df["product_title"].tolist(), add_special_tokens=False)["input_ids"]
    return ids, tok.vocab_size


def make_workload(flat, lengths, n_grams=2000, seed=0):
    """Random n-grams (n uniform in 1..6) of random documents long enough to hold them."""
    rng = np.random.default_rng(seed)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    grams = []
    while len(grams) < n_grams:
        n = int(rng.integers(1, 7))
        d = int(rng.integers(len(lengths)))
        if lengths[d] >= n:
            s = starts[d] + int(rng.integers(lengths[d] - n + 1))
            grams.append(flat[s : s + n].tolist())
    return grams


def time_steps(idx, grams, repeats):
    """µs per extend+next_symbols step (one figure per repeat) and avg distinct next tokens."""
    root = idx.range([])
    steps = sum(map(len, grams))
    times = []
    for _ in range(repeats):
        distinct = 0
        t = time.perf_counter()
        for g in grams:
            r = root
            for tok in g:
                r = idx.extend(r, tok)
                distinct += len(idx.next_symbols(r).tokens)
        times.append((time.perf_counter() - t) / steps * 1e6)
    return times, distinct / steps, steps


def time_fused_steps(idx, grams, repeats):
    """µs per step through ``FMIndex.step``: the n-grams grown in lockstep, one call per position."""
    lens = np.array([len(g) for g in grams])
    mat = np.full((len(grams), lens.max()), -1, np.int64)
    for i, g in enumerate(grams):
        mat[i, : len(g)] = g
    live = [np.flatnonzero(lens > j) for j in range(mat.shape[1])]
    toks = [mat[rows, j] for j, rows in enumerate(live)]
    root = idx.range([])
    times = []
    for _ in range(repeats):
        lo, hi = np.full(len(grams), root[0], np.int64), np.full(len(grams), root[1], np.int64)
        distinct = 0
        t = time.perf_counter()
        for rows, tok in zip(live, toks):
            s = idx.step(lo[rows], hi[rows], tok)
            lo[rows], hi[rows] = s.lo, s.hi
            distinct += s.tokens.size
        times.append((time.perf_counter() - t) / lens.sum() * 1e6)
    return times, distinct / lens.sum()


def time_batch_and_locate(idx, grams, repeats):
    """next_symbols_batch µs per range (10 ranges per call); locate µs per occurrence."""
    ranges = []
    for g in grams:
        r = idx.range([])
        for tok in g:
            r = idx.extend(r, tok)
            ranges.append(r)
    chunks = [ranges[i : i + 10] for i in range(0, len(ranges), 10)]
    batch = []
    for _ in range(repeats):
        t = time.perf_counter()
        for c in chunks:
            idx.next_symbols_batch(c)
        batch.append((time.perf_counter() - t) / len(ranges) * 1e6)
    finals = [idx.range(g) for g in grams]
    located = sum(len(idx.locate(r, limit=100)) for r in finals)
    loc = []
    for _ in range(repeats):
        t = time.perf_counter()
        for r in finals:
            idx.locate(r, limit=100)
        loc.append((time.perf_counter() - t) / located * 1e6)
    return batch, loc


def sdsl_text(flat, lengths):
    """The text sdsl indexes: each document reversed (ids + 2) and followed by separator 1."""
    out = np.empty(flat.size + lengths.size, np.uint32)
    src = dst = 0
    for ln in lengths.tolist():
        out[dst : dst + ln] = flat[src : src + ln][::-1] + 2
        out[dst + ln] = 1
        src += ln
        dst += ln + 1
    return out


def sdsl_files(tmp, name, flat, lengths, grams):
    """Write the text and workload files the sdsl binary reads; returns their paths."""
    text_path, work_path = tmp / f"{name}.u32", tmp / f"{name}.i32"
    sdsl_text(flat, lengths).tofile(text_path)
    np.array([v for g in grams for v in [len(g)] + [t + 2 for t in g]], np.int32).tofile(work_path)
    return str(text_path), str(work_path)


def run_sdsl(binary, files, n_tokens, repeats):
    out = subprocess.run([str(binary), *files, str(repeats)], check=True, capture_output=True, text=True).stdout
    res = json.loads(out)
    res["bytes_per_symbol"] = res["bytes"] / res["n_symbols"]
    res["bytes_per_token"] = res["bytes"] / n_tokens
    return res


def side_by_side(idx, grams, rounds, repeats, sdsl):
    """Alternate fm_index timings (fused and per-call steps) with sdsl runs, ``rounds`` times,
    so that both see the same load; returns the fm figures and sdsl's with all repeats merged."""
    fm = {"step_us": [], "fused_step_us": []}
    merged = None
    for _ in range(rounds):
        step_us, avg_distinct, steps = time_steps(idx, grams, repeats)
        fused_us, fused_distinct = time_fused_steps(idx, grams, repeats)
        assert abs(fused_distinct - avg_distinct) < 1e-9, "the fused step disagrees with extend + next_symbols"
        fm["step_us"] += step_us
        fm["fused_step_us"] += fused_us
        fm.update(avg_distinct=avg_distinct, steps=steps)
        if sdsl:
            res = sdsl()
            if merged is None:
                merged = res
            else:
                merged["step_us"] += res["step_us"]
                merged["build_s"] = min(merged["build_s"], res["build_s"])
    return fm, merged


def compile_sdsl(tmp):
    binary = tmp / "sdsl_bench"
    cmd = ["g++", "-O3", "-march=native", "-DNDEBUG", "-std=c++14", str(ROOT / "benchmarks" / "sdsl_bench.cpp"),
           "-o", str(binary), "-lsdsl", "-ldivsufsort", "-ldivsufsort64"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        print(f"sdsl not available (g++ failed): {proc.stderr.strip()[:300]}", file=sys.stderr)
        return None
    return binary


def large_corpus(flat, lengths, vocab, target):
    """Copies of the corpus, 10% of ids per further copy replaced at random, >= target tokens."""
    rng = np.random.default_rng(1)
    flats, lens, total = [], [], 0
    while total < target:
        f = flat.copy()
        if flats:
            mask = rng.random(f.size) < 0.1
            f[mask] = rng.integers(0, vocab, int(mask.sum()))
        flats.append(f)
        lens.append(lengths)
        total += f.size
    return np.concatenate(flats), np.concatenate(lens)


def _status_kib(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def large_child(flat_path, lens_path, repeats, rounds, sdsl_args):
    """Build the large index in this (fresh) process; print build time, peak RSS and the
    step timings side by side with sdsl (``sdsl_args``: binary, text, workload; or none)."""
    FMIndex.build([[1, 2]])  # load the numba cache, import pysais
    flat, lengths = np.load(flat_path), np.load(lens_path)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    docs = [flat[starts[i] : starts[i + 1]] for i in range(lengths.size)]
    rss_before = _status_kib("VmRSS")
    t = time.perf_counter()
    idx = FMIndex.build(docs)
    build_s = time.perf_counter() - t
    peak = _status_kib("VmHWM")
    sdsl = (lambda: run_sdsl(sdsl_args[0], sdsl_args[1:], idx.n_tokens, repeats)) if sdsl_args else None
    fm, sd = side_by_side(idx, make_workload(flat, lengths), rounds, repeats, sdsl)
    print(json.dumps({"fm": {
        "n_tokens": idx.n_tokens, "n_docs": idx.n_docs, "distinct": int(idx.next_symbols(idx.range([]))[0].size),
        "build_s": build_s, "peak_rss_gib": peak / 2**20, "rss_before_build_gib": rss_before / 2**20,
        "bytes": idx.nbytes, "bytes_per_token": idx.nbytes / idx.n_tokens,
        "bytes_per_symbol": idx.nbytes / (idx.n_rows - 1), **fm,
        "bytes_by_array": {k: int(a.nbytes) for k, a in idx._arrays.items()},
    }, "sdsl": sd}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--large-tokens", type=int, default=10_000_000)
    ap.add_argument("--no-sdsl", action="store_true")
    ap.add_argument("--no-large", action="store_true")
    ap.add_argument("--rounds", type=int, default=3, help="alternations of fm_index and sdsl timings")
    ap.add_argument("--large-child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.large_child:
        return large_child(*args.large_child[:2], args.repeats, args.rounds, args.large_child[2:])

    load_start = os.getloadavg()
    ids, vocab = load_titles(args.data)
    lengths = np.array([len(x) for x in ids], np.int64)
    flat = np.fromiter((t for x in ids for t in x), np.int64, int(lengths.sum()))
    grams = make_workload(flat, lengths)

    FMIndex.build([[1, 2]])  # load the numba cache, import pysais
    builds = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        idx = FMIndex.build(ids)
        builds.append(time.perf_counter() - t)
    batch_us, locate_us = time_batch_and_locate(idx, grams, args.repeats)
    n_symbols = idx.n_rows - 1  # tokens + one separator per document (sdsl's text length)
    fm = {
        "n_docs": idx.n_docs, "n_tokens": idx.n_tokens, "n_symbols": n_symbols,
        "distinct_tokens": int(idx.next_symbols(idx.range([]))[0].size),
        "build_s": builds, "bytes": idx.nbytes,
        "bytes_by_array": {k: int(a.nbytes) for k, a in idx._arrays.items()},
        "bytes_per_symbol": idx.nbytes / n_symbols, "bytes_per_token": idx.nbytes / idx.n_tokens,
        "batch_us_per_range": batch_us, "locate_us_per_occurrence": locate_us,
    }
    large = sdsl_large = None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        binary = None if args.no_sdsl else compile_sdsl(tmp)
        files = sdsl_files(tmp, "hd", flat, lengths, grams) if binary else None
        sdsl = (lambda: run_sdsl(binary, files, flat.size, args.repeats)) if binary else None
        timings, sdsl = side_by_side(idx, grams, args.rounds, args.repeats, sdsl)
        fm.update(timings)
        if not args.no_large:
            big_flat, big_lens = large_corpus(flat, lengths, vocab, args.large_tokens)
            np.save(tmp / "flat.npy", big_flat)
            np.save(tmp / "lens.npy", big_lens)
            extra = [str(binary), *sdsl_files(tmp, "large", big_flat, big_lens, make_workload(big_flat, big_lens))] \
                if binary else []
            out = subprocess.run([sys.executable, __file__, "--repeats", str(min(args.repeats, 3)), "--rounds",
                                  str(args.rounds), "--large-child", str(tmp / "flat.npy"), str(tmp / "lens.npy"),
                                  *extra], check=True, capture_output=True, text=True).stdout
            res = json.loads(out)
            large, sdsl_large = res["fm"], res["sdsl"]
    result = {
        "rounds": args.rounds, "repeats": args.repeats,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "corpus": "Home Depot titles, all-MiniLM-L6-v2 WordPiece ids, one doc per title",
        "workload": "2,000 random title n-grams (n in 1..6, seed 0); extend + next_symbols per token",
        "fm_index": fm, "sdsl": sdsl, "sdsl_reference": SDSL_REFERENCE, "large": large,
        "sdsl_large": sdsl_large, "targets": TARGETS,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fm_index.json").write_text(json.dumps(result, indent=2) + "\n")
    md = report(result)
    (args.out / "fm_index.md").write_text(md)
    print(md)


def report(r):
    fm, sd, lg, sl, t = r["fm_index"], r["sdsl"], r["large"], r["sdsl_large"], r["targets"]
    ref = sd or r["sdsl_reference"]

    def best(xs):
        return min(xs) if isinstance(xs, list) else xs

    def both(xs, fmt):
        return f"{np.median(xs):{fmt}} / {min(xs):{fmt}}" if isinstance(xs, list) else f"{xs:{fmt}}"

    def ratio(a, b):
        return f"{best(a) / best(b):.2f}"

    no_docs = (fm["bytes"] - fm["bytes_by_array"]["doc_base"] - fm["bytes_by_array"]["doc_delta"]) / fm["n_symbols"]
    rows = [
        ("build (s)", both(fm["build_s"], ".2f"), both(ref["build_s"], ".2f"), ratio(fm["build_s"], ref["build_s"]),
         f"<= {t['build_s']}"),
        ("bytes per symbol (tokens + separators)", f"{fm['bytes_per_symbol']:.2f}",
         f"{ref['bytes_per_symbol']:.2f}", ratio(fm["bytes_per_symbol"], ref["bytes_per_symbol"]),
         f"ratio <= {t['bytes_ratio']}"),
        ("bytes per symbol without the document map (sdsl keeps none)", f"{no_docs:.2f}",
         f"{ref['bytes_per_symbol']:.2f}", "", ""),
        ("bytes per title token", f"{fm['bytes_per_token']:.2f}", f"{sd['bytes_per_token']:.2f}" if sd else "",
         "", ""),
        ("step, fused batched `FMIndex.step` (µs)", both(fm["fused_step_us"], ".1f"), both(ref["step_us"], ".1f"),
         ratio(fm["fused_step_us"], ref["step_us"]), f"ratio <= {t['step_ratio']}"),
        ("step, one `extend` + one `next_symbols` call (µs)", both(fm["step_us"], ".1f"),
         both(ref["step_us"], ".1f"), ratio(fm["step_us"], ref["step_us"]), ""),
        ("avg distinct next tokens per step", f"{fm['avg_distinct']:.1f}", f"{ref['avg_distinct']:.1f}", "", ""),
    ]
    lines = [
        "# fm_index benchmark", "",
        f"{r['corpus']}: {fm['n_docs']:,} documents, {fm['n_tokens']:,} tokens "
        f"({fm['n_symbols']:,} with separators), {fm['distinct_tokens']:,} distinct.",
        f"Workload: {r['workload']} ({fm['steps']:,} steps).",
        f"sdsl-lite `csa_wt_int<>`: {'measured here, same text and workload' if sd else 'reference figures'}.",
        f"Machine: {r['machine']['cpus']} CPUs shared with other jobs (load average "
        f"{r['machine']['loadavg_start'][0]:.1f} at start, {r['machine']['loadavg_end'][0]:.1f} at end). "
        f"fm_index and sdsl timings alternate, {r['rounds']} rounds of {r['repeats']} repeats each (the large "
        "corpus: at most 3 repeats), so both see the same load. Times are median / best over all repeats; "
        "ratios use the best (least disturbed) figures.", "",
        "| | fm_index | sdsl | ratio | target |", "|---|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows], "",
        "The fused step grows all n-grams in lockstep, one `FMIndex.step` call per position (how a "
        "decoding step calls it: one Python crossing for every beam); sdsl runs the same steps one "
        "n-gram at a time in C++. The one-call-per-operation figure includes Python call overhead "
        f"(input checks, numpy results). `next_symbols_batch` with 10 ranges per call: "
        f"{best(fm['batch_us_per_range']):.1f} µs per range; "
        f"`locate` (limit 100, SA sample rate 32): {best(fm['locate_us_per_occurrence']):.2f} µs per occurrence.",
        "",
        "Bytes counted: every array of the index (all are read by count/extend/next_symbols/locate/"
        "documents): " + ", ".join(f"{k} {v:,}" for k, v in fm["bytes_by_array"].items())
        + f"; total {fm['bytes']:,}.",
        "",
    ]
    if lg:
        cell = (lambda key, fmt: f"{best(sl[key]):{fmt}}") if sl else (lambda key, fmt: "")
        rat = (lambda a, b: f"{best(lg[a]) / best(sl[b]):.2f}") if sl else (lambda a, b: "")
        lines += [
            f"## Large corpus: {lg['n_tokens']:,} tokens, {lg['n_docs']:,} documents, {lg['distinct']:,} distinct",
            "",
            "Titles repeated; in every copy after the first, 10% of the ids replaced at random.",
            "",
            "| | fm_index | sdsl | ratio | target |", "|---|---|---|---|---|",
            f"| build (s) | {lg['build_s']:.1f} | {cell('build_s', '.1f')} | | < {t['large_build_s']} |",
            f"| peak RSS of the build process (GiB) | {lg['peak_rss_gib']:.2f} "
            f"(before build: {lg['rss_before_build_gib']:.2f}) | | | < {t['large_peak_gib']} |",
            f"| bytes per symbol | {lg['bytes_per_symbol']:.2f} | {cell('bytes_per_symbol', '.2f')} | "
            f"{rat('bytes_per_symbol', 'bytes_per_symbol')} | ratio <= {t['bytes_ratio']} |",
            f"| bytes per token | {lg['bytes_per_token']:.2f} | {cell('bytes_per_token', '.2f')} | | |",
            f"| step, fused batched (µs), best | {min(lg['fused_step_us']):.1f} | {cell('step_us', '.1f')} | "
            f"{rat('fused_step_us', 'step_us')} | ratio <= {t['step_ratio']} |",
            f"| step, one call per operation (µs), best | {min(lg['step_us']):.1f} | {cell('step_us', '.1f')} | "
            f"{rat('step_us', 'step_us')} | |",
            f"| avg distinct next tokens | {lg['avg_distinct']:.1f} | {cell('avg_distinct', '.1f')} | | |",
            "",
            "Bytes: " + ", ".join(f"{k} {v:,}" for k, v in lg["bytes_by_array"].items()) + ".",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
