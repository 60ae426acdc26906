"""``genret serve``: saved retrievers behind a JSON API and one search page.

Every ``--model`` is loaded once at start-up into a :class:`Channel`: one worker thread
(models are not thread-safe) fed by an asyncio micro-batcher that gathers the requests of
a few milliseconds into one ``explain_batch`` call (one search or decode for all of them).
``GET /api/search`` returns, per channel, the products, the latency and what the channel
decoded or weighted; ``GET /api/retrievers`` what is loaded; ``/`` the page. See docs/serve.md.
"""

from __future__ import annotations

import asyncio
import math
import socket
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np

from .artifact import ArtifactError, read_manifest

MAX_QUERY_CHARS = 512
MAX_K = 1000


class BadRequest(ValueError):
    """A request the API refuses with HTTP 400."""


class Channel:
    """One loaded retriever: requests queue up for ``window_ms`` (at most ``max_batch``
    distinct queries), then one ``explain_batch`` runs on the channel's own thread."""

    def __init__(self, name: str, path: str, retriever, n_products: int | None = None,
                 window_ms: float = 5.0, max_batch: int = 32):
        if not window_ms >= 0:
            raise ValueError(f"the batch window must be >= 0 ms, got {window_ms}")
        self.name, self.path, self.retriever, self.n_products = name, path, retriever, n_products
        self.window, self.max_batch = window_ms / 1000, max_batch
        self.pool: ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    def info(self) -> dict:
        return {"name": self.name, "kind": self.retriever.kind, "products": self.n_products,
                "path": self.path}

    async def start(self) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=f"genret-{self.name}")
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._batches())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def explain(self, query: str, k: int) -> tuple[dict, float, int]:
        """This channel's ``explain`` of ``query`` (top ``k``), the milliseconds from
        queueing to the answer, and how many distinct queries shared its batch."""
        t0 = time.perf_counter()
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((query, k, fut))
        detail, batch = await fut
        return detail, 1000 * (time.perf_counter() - t0), batch

    async def _batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.window
            while len({q for q, _, _ in batch}) < self.max_batch and (left := deadline - loop.time()) > 0:
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:
                    break
            batch = [b for b in batch if not b[2].done()]  # a cancelled request (client gone)
            try:
                await self._answer(batch)
            except Exception as e:  # never leave a request waiting
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)

    async def _answer(self, batch: list) -> None:
        loop = asyncio.get_running_loop()
        texts = list(dict.fromkeys(q for q, _, _ in batch))
        k = max(k for _, k, _ in batch)
        try:
            details = await loop.run_in_executor(self.pool, self.retriever.explain_batch, texts, k)
            results = dict(zip(texts, details))
        except Exception as e:  # one failing query must not fail the others: one at a time
            results = {texts[0]: e} if len(texts) == 1 else {}
            for t in texts[len(results):]:
                try:
                    results[t] = (await loop.run_in_executor(self.pool, self.retriever.explain_batch, [t], k))[0]
                except Exception as e1:
                    results[t] = e1
        for q, kq, fut in batch:
            if fut.done():
                continue
            if isinstance(results[q], Exception):
                fut.set_exception(results[q])
            else:
                fut.set_result(({**results[q], "products": results[q]["products"][:kq]}, len(texts)))


def _name(path: str, taken: set[str]) -> str:
    """A channel's name: the model folder's name, or the path as given when that is taken."""
    name = Path(path).name or str(path)
    return str(path) if name in taken else name


def load_channels(paths: list[str], dataset=None, data: str | None = None,
                  window_ms: float = 5.0, max_batch: int = 32) -> list[Channel]:
    """Load every saved retriever once, check it against ``dataset``'s catalog (when
    given) and warm it up with one query; any failure is an ArtifactError naming the model."""
    from .retriever import load_retriever

    if len(set(map(str, paths))) < len(paths):
        raise ValueError("the same --model is given twice; give each model once")
    channels: list[Channel] = []
    for path in map(str, paths):
        try:
            retriever = load_retriever(path)
            if dataset is not None:
                retriever.check_catalog(dataset, where=f"the model at {path}", model=path, data=data)
            retriever.explain_batch(["warm up"], 1)  # compiles kernels before the first request
        except ArtifactError:
            raise
        except Exception as e:
            raise ArtifactError(f"the model at {path} failed to load: {type(e).__name__}: {e}") from None
        n = read_manifest(path, verify=False).get("n_products")
        channels.append(Channel(_name(path, {c.name for c in channels}), path, retriever, n,
                                window_ms, max_batch))
    return channels


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _json_safe(x):
    """``x`` with numpy numbers as Python ones, tuples as lists and non-finite floats as
    None (JSON has no Infinity; beam search pads with -inf)."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


class Service:
    """The API over loaded channels: request checks, titles, relevance labels."""

    def __init__(self, channels: list[Channel], dataset=None):
        self.channels = {c.name: c for c in channels}
        self.threshold = dataset.threshold if dataset is not None else None
        if dataset is not None:
            self.titles = dict(dataset.catalog)
        else:
            self.titles = {}
            for c in channels:
                self.titles.update(getattr(c.retriever, "titles", None) or {})
        self.labels: dict[str, dict[str, float]] = {}  # normalised query text -> product -> grade
        for qid, rel in (dataset.qrels.items() if dataset is not None else []):
            merged = self.labels.setdefault(_norm(dataset.queries[qid]), {})
            for p, g in rel.items():
                merged[p] = max(g, merged.get(p, g))

    def parse(self, params) -> tuple[str, int, list[str]]:
        """(query, k, channel names) of a search request, or BadRequest saying what is wrong."""
        q = params.get("q", "")
        if not q.strip():
            raise BadRequest("q is empty; give a query, e.g. /api/search?q=cordless+drill")
        if len(q) > MAX_QUERY_CHARS:
            raise BadRequest(f"q has {len(q)} characters; give at most {MAX_QUERY_CHARS}")
        raw = params.get("k", "10")
        try:
            k = int(raw)
        except ValueError:
            k = None
        if k is None or not 1 <= k <= MAX_K:
            raise BadRequest(f"k must be a whole number from 1 to {MAX_K}, got {raw!r}")
        names = [n for v in params.getlist("retriever") for n in v.split(",") if n] or list(self.channels)
        unknown = [n for n in names if n not in self.channels]
        if unknown:
            raise BadRequest(f"unknown retriever {unknown[0]!r}; loaded: {', '.join(self.channels)}")
        return q, k, list(dict.fromkeys(names))

    def _result(self, channel: Channel, detail: dict, ms: float, batch: int, labels: dict) -> dict:
        r = channel.retriever
        products = []
        for rank, p in enumerate(detail["products"], start=1):
            p = {"rank": rank, **p, "title": p.get("title") or self.titles.get(p["id"], "")}
            if "matches" not in p:
                p["matches"] = r.highlights(p["title"], detail) if p["title"] else []
            if p["id"] in labels:
                p["relevant"] = labels[p["id"]]
            products.append(p)
        explain = {k: v for k, v in detail.items() if k not in ("query", "products")}
        if isinstance(explain.get("spans"), dict):  # a list keeps the order in every JSON reader
            explain["spans"] = [{"text": t, "weight": w} for t, w in explain["spans"].items()]
        if explain.get("beams"):
            explain["beams"] = [{**b, "title": self.titles.get(b["product"], "")} if "product" in b else b
                                for b in explain["beams"]]
        return {"name": channel.name, "kind": r.kind, "latency_ms": round(ms, 2), "batch": batch,
                "products": products, "explain": explain}

    async def search(self, params) -> dict:
        q, k, names = self.parse(params)
        answers = await asyncio.gather(*(self.channels[n].explain(q, k) for n in names),
                                       return_exceptions=True)
        failed = [(n, a) for n, a in zip(names, answers) if isinstance(a, BaseException)]
        if failed:
            for n, e in failed:
                print(f"genret serve: {n} failed on {q!r}:", file=sys.stderr)
                traceback.print_exception(e, file=sys.stderr)
            raise RuntimeError("; ".join(f"{n}: {type(e).__name__}: {e}" for n, e in failed))
        labels = self.labels.get(_norm(q), {})
        return _json_safe({"query": q, "k": k,
                           "labelled": len(labels) if self.threshold is not None else None,
                           "threshold": self.threshold,
                           "results": [self._result(self.channels[n], *a, labels) for n, a in zip(names, answers)]})


def create_app(channels: list[Channel], dataset=None):
    """The Starlette app: ``/``, ``/api/search``, ``/api/retrievers``; every error is JSON."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    service = Service(channels, dataset)

    async def search(request):
        try:
            return JSONResponse(await service.search(request.query_params))
        except BadRequest as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        except Exception as e:  # the request fails; the server and the other requests go on
            return JSONResponse({"error": str(e) or type(e).__name__}, status_code=500)

    async def retrievers(request):
        return JSONResponse({"retrievers": [c.info() for c in channels], "labels": dataset is not None,
                             "max_query_chars": MAX_QUERY_CHARS, "max_k": MAX_K})

    async def page(request):
        return HTMLResponse(PAGE)

    async def http_error(request, exc):
        return JSONResponse({"error": f"{exc.detail}: {request.method} {request.url.path}"},
                            status_code=exc.status_code)

    @asynccontextmanager
    async def lifespan(app):
        for c in channels:
            await c.start()
        yield
        for c in channels:
            await c.stop()

    app = Starlette(routes=[Route("/", page), Route("/api/search", search), Route("/api/retrievers", retrievers)],
                    exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.state.service = service
    return app


def listen(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A socket bound to ``host:port`` (0: a free port), taken before any model loads so
    that a busy port fails at once; an OSError saying what to change otherwise."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except (OSError, OverflowError) as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({getattr(e, 'strerror', None) or e}); "
                      "choose another --host or --port (0: any free port)") from None
    return sock


def serve(sock: socket.socket, channels: list[Channel], dataset=None, access_log: bool = False) -> int:
    """Serve the app on the bound ``sock`` (:func:`listen`) until Ctrl-C or SIGTERM."""
    import uvicorn

    config = uvicorn.Config(create_app(channels, dataset), log_level="info" if access_log else "warning",
                            access_log=access_log)
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if sock.family == socket.AF_INET6 else host
    print(f"genret serve: {len(channels)} retriever(s) ({', '.join(c.name for c in channels)}) at "
          f"http://{url_host}:{port}/ (API: /api/search?q=..., /api/retrievers); Ctrl-C stops", flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>genret serve</title>
<style>
:root { --fg:#1d2430; --muted:#667085; --line:#d9dee7; --bg:#f6f7f9; --hit:#ffe27a; --ok:#137a3f; --no:#b42318; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--fg); background:var(--bg); }
header { padding:12px 16px; background:#fff; border-bottom:1px solid var(--line); position:sticky; top:0; z-index:1; }
h1 { font-size:17px; margin:0 0 8px; } h1 small { color:var(--muted); font-weight:400; }
form { display:flex; gap:8px; }
input[type=search] { flex:1; min-width:0; font:inherit; padding:8px 10px; border:1px solid var(--line); border-radius:6px; }
button { font:inherit; padding:8px 14px; border:0; border-radius:6px; background:#2457d6; color:#fff; cursor:pointer; }
#status { margin:8px 0 0; color:var(--muted); font-size:13px; min-height:1.2em; } #status.error { color:var(--no); }
main { display:grid; grid-template-columns:repeat(auto-fit, minmax(min(100%, 300px), 1fr)); gap:12px; padding:12px 16px; }
section.channel { background:#fff; border:1px solid var(--line); border-radius:8px; padding:10px 12px; min-width:0; }
section.channel h2 { font-size:15px; margin:0; display:flex; justify-content:space-between; gap:8px; flex-wrap:wrap; }
.kind { color:var(--muted); font-weight:400; } .latency { color:var(--muted); font-weight:400; font-size:13px; }
.explain { margin:6px 0; font-size:13px; } .explain summary { cursor:pointer; color:var(--muted); }
.chip { display:inline-block; margin:2px 3px 2px 0; padding:1px 6px; border-radius:10px; background:#eef2fb; white-space:nowrap; }
.chip.exp { font-style:italic; background:#f2eefb; } .chip b { font-weight:600; }
ol.products { margin:6px 0 0; padding-left:22px; } ol.products li { margin:5px 0; overflow-wrap:anywhere; }
mark { background:var(--hit); padding:0 1px; border-radius:2px; }
.meta { color:var(--muted); font-size:12px; } .rel { font-weight:600; } .rel.yes { color:var(--ok); } .rel.no { color:var(--no); }
.none { color:var(--muted); font-style:italic; }
</style></head>
<body>
<header>
  <h1>genret serve <small id="loaded"></small></h1>
  <form id="search" role="search">
    <input id="q" type="search" name="q" maxlength="512" placeholder="search products, e.g. cordless drill" autofocus required>
    <button type="submit">Search</button>
  </form>
  <p id="status"></p>
</header>
<main id="results" aria-live="polite"></main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}
const num = (x, d = 2) => (x === null || x === undefined) ? "–" : Number(x).toFixed(d);
function highlighted(title, matches) {  // title text with <mark> over each [start, end)
  const out = el("span", "title"); let at = 0;
  for (const [a, b] of matches || []) {
    if (a > at) out.append(title.slice(at, a));
    out.append(el("mark", null, title.slice(a, b))); at = b;
  }
  out.append(title.slice(at));
  return out;
}
function explanation(x) {
  const box = el("div", "explain");
  if (x.spans) {
    const p = el("div", null, "spans: ");
    if (!x.spans.length) p.append(el("span", "none", "none decoded"));
    for (const s of x.spans) { const c = el("span", "chip"); c.append(el("b", null, s.text.trim()), " " + num(s.weight)); p.append(c); }
    box.append(p);
  }
  if (x.terms) {
    const p = el("div", null, "terms: ");
    if (!x.terms.length) p.append(el("span", "none", "none"));
    for (const t of x.terms) {
      if (typeof t === "string") { p.append(el("span", "chip", t)); continue; }
      const c = el("span", t.literal === false ? "chip exp" : "chip"); c.title = t.literal === false ? "expansion term" : "literal term";
      c.append(el("b", null, t.term), " " + num(t.weight)); p.append(c);
    }
    box.append(p);
  }
  if (x.beams) {
    const d = el("details"); d.append(el("summary", null, `${x.beams.length} decoded beams`));
    const list = el("ol");
    for (const b of x.beams) {
      const li = el("li", null, b.id !== undefined ? `${b.id} → ${b.title || b.product}` : (b.text || "").trim());
      li.append(el("span", "meta", "  " + num(b.score))); list.append(li);
    }
    d.append(list); box.append(d);
  }
  if (!box.childNodes.length) box.append(el("span", "none", "no explanation (dense vectors)"));
  return box;
}
function channel(r, threshold) {
  const s = el("section", "channel"); s.dataset.channel = r.name;
  const h = el("h2"); const name = el("span", null, r.name + " "); name.append(el("span", "kind", r.kind));
  h.append(name, el("span", "latency", `${num(r.latency_ms, 0)} ms` + (r.batch > 1 ? ` · batch ${r.batch}` : "")));
  s.append(h, explanation(r.explain));
  if (!r.products.length) { s.append(el("p", "none", "no products")); return s; }
  const ol = el("ol", "products");
  for (const p of r.products) {
    const li = el("li"); li.dataset.id = p.id;
    li.append(highlighted(p.title || p.id, p.title ? p.matches : []));
    const meta = el("div", "meta", `${num(p.score, 3)} · ${p.id} `);
    if (p.relevant !== undefined) {
      const yes = threshold !== null && p.relevant >= threshold;
      meta.append(el("span", "rel " + (yes ? "yes" : "no"), (yes ? "✓ relevant " : "✗ not relevant ") + p.relevant));
    }
    li.append(meta); ol.append(li);
  }
  s.append(ol);
  return s;
}
async function run(q) {
  const status = $("status"); status.className = ""; status.textContent = "searching…";
  document.body.dataset.state = "searching";
  try {
    const resp = await fetch("/api/search?" + new URLSearchParams({q, k: 10}));
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.error || resp.statusText);
    $("results").replaceChildren(...body.results.map((r) => channel(r, body.threshold)));
    status.textContent = body.labelled === null ? "no --data: no relevance labels"
      : body.labelled ? `${body.labelled} labelled products for this query (relevant: grade ≥ ${body.threshold})`
      : "no labels for this exact query";
    document.body.dataset.state = "done";
  } catch (e) {
    status.className = "error"; status.textContent = "error: " + e.message;
    $("results").replaceChildren(); document.body.dataset.state = "error";
  }
}
$("search").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const q = $("q").value;
  if (!q.trim()) return;
  history.replaceState(null, "", "?q=" + encodeURIComponent(q));
  run(q);
});
fetch("/api/retrievers").then((r) => r.json()).then((b) => {
  $("loaded").textContent = b.retrievers.map((r) => r.name).join(" · ");
});
const initial = new URLSearchParams(location.search).get("q");
if (initial) { $("q").value = initial; $("search").requestSubmit(); }
</script>
</body></html>
"""
