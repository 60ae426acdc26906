"""A bounded loopback load test of `genret serve`, and the models it (and docs/serve.md) use.

    python benchmarks/serve_load.py prepare [--data PATH] [--out results/serve-models]
    python benchmarks/serve_load.py run --model results/serve-models/bm25-stem \\
        --model results/serve-models/multispan [--data PATH] [--requests 500] [--concurrency 16]

``prepare`` fits bm25-stem, dense-zeroshot and a tiny-LM multispan model on the full
catalog of the data (Home Depot by default) and saves them under ``--out``. ``run`` starts
``genret serve`` on a free 127.0.0.1 port, sends ``--requests`` searches over the
dataset's test queries (``--concurrency`` at a time, every loaded channel, k=10), and
writes p50/p95/max latency, errors, the server's batch sizes and its RSS after the warm-up
and after every ``--rss-every`` requests to ``benchmarks/results/serve.json`` and
``serve.md``. Only 127.0.0.1 is ever contacted; the run stops after ``--requests``
requests or ``--time-limit`` seconds.
"""

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from genret.data import load_dataset  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MULTISPAN = {"preset": "tiny", "num_beams": 10,
             "train": {"full": True, "epochs": 1, "batch_size": 32, "progress": False}}


def prepare(args) -> None:
    from genret.retriever import make_retriever

    ds = load_dataset(args.data)
    out = Path(args.out)
    for name, cfg in [("bm25-stem", {}), ("dense-zeroshot", {}), ("multispan", MULTISPAN)]:
        t0 = time.perf_counter()
        r = make_retriever(name, **cfg)
        r.fit(ds, out_dir=str(out / f".{name}.work") if name == "multispan" else None, progress=True)
        r.save(out / name)
        print(f"{name}: fitted on {len(ds.catalog)} products in {time.perf_counter() - t0:.0f} s, "
              f"saved to {out / name}", flush=True)


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def start_server(models: list[str], data: str | None) -> tuple[subprocess.Popen, str]:
    """``genret serve`` on a free loopback port; returns the process and its base URL."""
    cmd = [sys.executable, "-m", "genret.cli", "serve", "--host", "127.0.0.1", "--port", "0"]
    for m in models:
        cmd += ["--model", m]
    if data:
        cmd += ["--data", data]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if m := re.search(r"http://127\.0\.0\.1:\d+/", line):
            return proc, m.group(0)
    raise RuntimeError(f"genret serve exited with {proc.wait()} before it listened")


async def load(base: str, queries: list[str], n: int, concurrency: int, time_limit: float) -> dict:
    """``n`` searches, ``concurrency`` at a time, stopping at ``time_limit`` seconds: the
    latencies (ms) of the answered ones, the errors, and the server's batch sizes."""
    import httpx

    lat, errors, batches = [], [], []
    todo = iter(range(n))
    deadline = time.monotonic() + time_limit

    async def worker(client):
        for i in todo:
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            try:
                r = await client.get("/api/search", params={"q": queries[i % len(queries)], "k": 10})
                if r.status_code != 200:
                    errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                    continue
                batches.extend(c["batch"] for c in r.json()["results"])
            except httpx.HTTPError as e:
                errors.append(f"{type(e).__name__}: {e}")
                continue
            lat.append(1000 * (time.perf_counter() - t0))

    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return {"latency_ms": lat, "errors": errors, "batches": batches}


def summary(parts: list[dict], wall: float) -> dict:
    lat = [x for p in parts for x in p["latency_ms"]]
    errors = [x for p in parts for x in p["errors"]]
    batches = [x for p in parts for x in p["batches"]]
    return {"requests": len(lat) + len(errors), "ok": len(lat), "errors": len(errors),
            "error_examples": errors[:5], "wall_s": round(wall, 2),
            "requests_per_s": round((len(lat) + len(errors)) / wall, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 1) if lat else None,
            "p95_ms": round(float(np.percentile(lat, 95)), 1) if lat else None,
            "max_ms": round(max(lat), 1) if lat else None,
            "mean_batch": round(float(np.mean(batches)), 2) if batches else None,
            "max_batch": max(batches) if batches else None}


def run(args) -> None:
    import httpx

    ds = load_dataset(args.data)
    queries = [ds.queries[q] for q in ds.split("test")]
    proc, base = start_server(args.model, args.data)
    try:
        channels = httpx.get(base + "api/retrievers").json()["retrievers"]
        warm = asyncio.run(load(base, queries, args.warmup, args.concurrency, args.time_limit))
        rss = [rss_mib(proc.pid)]  # after the warm-up, then after every --rss-every requests
        rest, parts, t0 = queries[args.warmup:] + queries[:args.warmup], [], time.perf_counter()
        for start in range(0, args.requests, args.rss_every):
            n = min(args.rss_every, args.requests - start)
            left = args.time_limit - (time.perf_counter() - t0)
            if left <= 0:
                break
            parts.append(asyncio.run(load(base, rest[start % len(rest):] + rest[:start % len(rest)], n,
                                          args.concurrency, left)))
            rss.append(rss_mib(proc.pid))
        res = summary(parts, time.perf_counter() - t0)
        alive = proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    out = {"command": "python benchmarks/serve_load.py run " + " ".join(
               f"--model {m}" for m in args.model) + (f" --data {args.data}" if args.data else "")
               + f" --requests {args.requests} --concurrency {args.concurrency}",
           "dataset": ds.name, "products": len(ds.catalog), "channels": channels,
           "distinct_queries": len(queries), "concurrency": args.concurrency,
           "warmup_requests": len(warm["latency_ms"]) + len(warm["errors"]),
           "warmup_errors": len(warm["errors"]), **res, "rss_every": args.rss_every,
           "rss_mib": [round(x, 1) for x in rss], "rss_mib_before": round(rss[0], 1),
           "rss_mib_after": round(rss[-1], 1), "rss_growth_mib": round(rss[-1] - rss[0], 1),
           "server_alive_after": alive,
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / "serve.md").write_text(markdown(out))
    print(markdown(out))


def markdown(r: dict) -> str:
    names = ", ".join(f"{c['name']} ({c['kind']})" for c in r["channels"])
    return (f"# `genret serve` under load\n\n`{r['command']}` on {r['machine']}.\n\n"
            f"{r['requests']} requests of `GET /api/search?q=...&k=10` (every channel: {names}; "
            f"{r['products']:,} products of {r['dataset']}), {r['concurrency']} at a time over "
            f"{r['distinct_queries']} distinct test queries, after {r['warmup_requests']} warm-up "
            f"requests; latency is the client's, request sent to response read.\n\n"
            "| requests | errors | p50 ms | p95 ms | max ms | req/s | mean batch | max batch "
            "| RSS before MiB | RSS after MiB | growth MiB |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
            f"| {r['requests']} | {r['errors']} | {r['p50_ms']} | {r['p95_ms']} | {r['max_ms']} "
            f"| {r['requests_per_s']} | {r['mean_batch']} | {r['max_batch']} | {r['rss_mib_before']} "
            f"| {r['rss_mib_after']} | {r['rss_growth_mib']} |\n\n"
            f"Server still running after the load: {'yes' if r['server_alive_after'] else 'NO'}. "
            "Mean/max batch: queries per search call as the server's micro-batcher grouped them "
            f"(per channel). RSS of the server after the warm-up and after every {r['rss_every']} "
            f"requests (MiB): {', '.join(map(str, r['rss_mib']))}.\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="action", required=True)
    p = sub.add_parser("prepare", help="fit and save the models the load test and docs/serve.md use")
    p.add_argument("--data", help="dataset (default: the Home Depot data)")
    p.add_argument("--out", default=str(ROOT / "results" / "serve-models"))
    p.set_defaults(func=prepare)
    p = sub.add_parser("run", help="the load test")
    p.add_argument("--model", action="append", required=True)
    p.add_argument("--data", help="dataset whose test queries are sent (default: the Home Depot data)")
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rss-every", type=int, default=100, help="requests between RSS readings")
    p.add_argument("--time-limit", type=float, default=900, help="seconds per phase, at most")
    p.set_defaults(func=run)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
