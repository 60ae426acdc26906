"""`genret serve`: the JSON API through the ASGI test client, the micro-batcher, start-up
errors, and the page in headless Chromium against the real server."""

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from html.parser import HTMLParser
from urllib.parse import quote

import httpx
import pytest

from genret.artifact import ArtifactError
from genret.cli import main
from genret.serve import MAX_QUERY_CHARS, Channel, create_app, load_channels

TINY_MULTISPAN = {"preset": "tiny", "num_beams": 4,
                  "train": {"epochs": 1, "max_steps": 40, "full": True, "progress": False, "batch_size": 32}}


@pytest.fixture(scope="module")
def models(tmp_path_factory, synthetic):
    """A bm25 and a tiny multispan model fitted on the synthetic data, saved."""
    from genret.retriever import make_retriever

    d = tmp_path_factory.mktemp("serve-models")
    make_retriever("bm25").fit(synthetic).save(d / "bm25")
    make_retriever("multispan", **TINY_MULTISPAN).fit(synthetic, out_dir=str(d / "work")).save(d / "ms")
    return [str(d / "bm25"), str(d / "ms")]


@pytest.fixture(scope="module")
def channels(models, synthetic):
    return load_channels(models, synthetic)


@pytest.fixture
def client(channels, synthetic):
    from starlette.testclient import TestClient

    with TestClient(create_app(channels, synthetic)) as c:
        yield c


def labelled_query(ds):
    """A test query whose text has relevant products."""
    return next(ds.queries[q] for q in ds.split("test") if ds.relevant(q))


def test_retrievers_lists_what_is_loaded(client, synthetic):
    body = client.get("/api/retrievers").json()
    assert [(r["name"], r["kind"], r["products"]) for r in body["retrievers"]] == [
        ("bm25", "bm25", len(synthetic.catalog)), ("ms", "gr-multispan", len(synthetic.catalog))]
    assert body["labels"] is True


def test_search_returns_products_explanations_and_labels(client, synthetic, channels):
    q = labelled_query(synthetic)
    body = client.get("/api/search", params={"q": q, "k": 7}).json()
    labels = {p: g for qid, t in synthetic.queries.items() if t == q for p, g in synthetic.qrels[qid].items()}
    assert body["query"] == q and body["labelled"] == len(labels) and body["threshold"] == synthetic.threshold
    bm25, ms = body["results"]
    assert [bm25["name"], ms["name"]] == ["bm25", "ms"]
    for r in (bm25, ms):
        assert 0 < len(r["products"]) <= 7 and r["latency_ms"] > 0 and r["batch"] == 1
        assert [p["rank"] for p in r["products"]] == list(range(1, len(r["products"]) + 1))
        for p in r["products"]:
            assert p["title"] == synthetic.catalog[p["id"]]
            assert p.get("relevant") == labels.get(p["id"])  # present exactly when labelled
            assert all(0 <= a < b <= len(p["title"]) for a, b in p["matches"])
    # the same ranking as the retriever itself
    assert [p["id"] for p in bm25["products"]] == channels[0].retriever.search({"x": q}, 7)["x"].ids
    assert any("relevant" in p for p in bm25["products"])
    # BM25: the query terms; every highlighted title word is one of them
    terms = bm25["explain"]["terms"]
    assert terms and all(t in q.lower() for t in terms)
    marked = [p["title"][a:b].lower() for p in bm25["products"] for a, b in p["matches"]]
    assert marked and set(marked) <= set(terms)
    # multispan: decoded beams, span weights (heaviest first), matched offsets of the spans
    spans = ms["explain"]["spans"]
    assert ms["explain"]["beams"] and spans
    assert [s["weight"] for s in spans] == sorted((s["weight"] for s in spans), reverse=True)
    texts = {"".join(s["text"].split()).lower() for s in spans}
    for p in ms["products"]:
        assert p["matches"], f"no span of {spans} highlighted in {p['title']!r}"
        for a, b in p["matches"]:
            assert any(t in "".join(p["title"][a:b].split()).lower() for t in texts)


def test_one_retriever_by_name(client):
    body = client.get("/api/search", params={"q": "cordless drill", "retriever": "ms"}).json()
    assert [r["name"] for r in body["results"]] == ["ms"] and len(body["results"][0]["products"]) <= 10
    assert body["labelled"] == 0


@pytest.mark.parametrize("params, message", [
    ({}, "q is empty"), ({"q": "   "}, "q is empty"),
    ({"q": "x" * (MAX_QUERY_CHARS + 1)}, f"at most {MAX_QUERY_CHARS}"),
    ({"q": "drill", "k": "0"}, "k must be a whole number from 1 to 1000, got '0'"),
    ({"q": "drill", "k": "1001"}, "from 1 to 1000"), ({"q": "drill", "k": "ten"}, "got 'ten'"),
    ({"q": "drill", "retriever": "splade"}, "unknown retriever 'splade'; loaded: bm25, ms"),
])
def test_bad_input_is_a_400_with_a_json_error(client, params, message):
    r = client.get("/api/search", params=params)
    assert r.status_code == 400 and message in r.json()["error"]


def test_unknown_path_is_json(client):
    r = client.get("/api/nothing")
    assert r.status_code == 404 and "/api/nothing" in r.json()["error"]


def test_a_failing_retriever_fails_only_that_request(client, channels, monkeypatch):
    r = channels[1].retriever
    real = r.explain_batch

    def flaky(queries, k):
        if "boom" in queries:
            raise RuntimeError("decoder exploded")
        return real(queries, k)

    monkeypatch.setattr(r, "explain_batch", flaky)
    bad = client.get("/api/search", params={"q": "boom"})
    assert bad.status_code == 500 and bad.json()["error"] == "ms: RuntimeError: decoder exploded"
    assert client.get("/api/search", params={"q": "drill"}).status_code == 200


def test_concurrent_requests_share_one_search_call(channels, synthetic, monkeypatch):
    """Requests arriving within the batch window go to explain_batch together (one call),
    each gets its own products, the same as a search of it alone, cut to its own k; a
    query that fails in the batch fails alone."""
    r = channels[0].retriever
    calls = []
    real = r.explain_batch

    def counted(queries, k):
        calls.append(list(queries))
        if "boom" in queries:
            raise RuntimeError("bad query")
        return real(queries, k)

    monkeypatch.setattr(r, "explain_batch", counted)
    qs = [synthetic.queries[q] for q in synthetic.split("test")[:6]]
    ch = Channel("bm25", "x", r, window_ms=300)

    async def go():
        await ch.start()
        try:
            return await asyncio.gather(*(ch.explain(q, 3 + i) for i, q in enumerate(qs + [qs[0]])))
        finally:
            await ch.stop()

    out = asyncio.run(go())
    assert len(calls) == 1 and sorted(calls[0]) == sorted(set(qs))
    for i, (q, (detail, ms, batch)) in enumerate(zip(qs + [qs[0]], out)):
        assert batch == len(set(qs)) and ms > 0
        assert [p["id"] for p in detail["products"]] == r.search({"x": q}, 3 + i)["x"].ids

    async def with_a_bad_one():
        await ch.start()
        try:
            return await asyncio.gather(ch.explain("boom", 3), ch.explain(qs[0], 3), return_exceptions=True)
        finally:
            await ch.stop()

    calls.clear()
    bad, good = asyncio.run(with_a_bad_one())
    assert isinstance(bad, RuntimeError) and len(good[0]["products"]) == 3
    assert calls[0] == ["boom", qs[0]] and len(calls) == 3  # the batch, then one at a time


def test_sparse_channel_explains_its_term_weights(synthetic, tmp_path):
    """PROSPER (tiny LM, 5 steps) served alone: its heaviest query terms, weights descending."""
    from starlette.testclient import TestClient

    from genret.retriever import make_retriever

    make_retriever("prosper", preset="tiny", max_steps=5, batch_size=16).fit(synthetic, progress=False) \
        .save(tmp_path / "prosper")
    with TestClient(create_app(load_channels([str(tmp_path / "prosper")]))) as c:
        body = c.get("/api/search", params={"q": "cordless drill", "k": 5}).json()
    (r,) = body["results"]
    terms = r["explain"]["terms"]
    assert r["kind"] == "prosper" and body["labelled"] is None and 0 < len(r["products"]) <= 5
    assert 0 < len(terms) <= 15 and all(isinstance(t["literal"], bool) and t["term"] for t in terms)
    assert [t["weight"] for t in terms] == sorted((t["weight"] for t in terms), reverse=True)
    # no --data: the titles come from the model (PROSPER keeps the titles it encoded, for re-indexing)
    assert all(p["title"] == synthetic.catalog[p["id"]] for p in r["products"])
    assert any(t["literal"] for t in terms)


def test_page_is_served(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'id="search"' in r.text and "/api/search?" in r.text


def test_start_up_errors_are_one_line_exit_2(models, synthetic_dir, tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genret serve: error: ") and err.count("\n") == 1
    assert main(["serve", "--model", models[0], "--model", models[0]]) == 2
    assert "given twice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--model", models[0], "--port", "70000"])
    assert "expected a port from 0 to 65535" in capsys.readouterr().err
    # a model fitted on another catalog than --data
    other = tmp_path / "other"
    (other).mkdir()
    (other / "products.tsv").write_text("product_id\ttitle\np1\tcordless drill\n")
    (other / "queries.tsv").write_text("query_id\tquery\tsplit\nq1\tdrill\ttest\n")
    (other / "qrels.tsv").write_text("query_id\tproduct_id\trelevance\nq1\tp1\t3\n")
    assert main(["serve", "--model", models[0], "--data", str(other)]) == 2
    assert "another catalog" in capsys.readouterr().err
    # a port already taken
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert main(["serve", "--model", models[0], "--port", str(s.getsockname()[1])]) == 2
    assert "cannot listen on 127.0.0.1:" in capsys.readouterr().err


def test_load_channels_names_the_model_that_fails(models, tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="junk"):
        load_channels([models[0], str(tmp_path / "junk")])


# ----------------------------------------------------------------------------- the page in Chromium

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and os.path.exists(p)), None)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


class _Page(HTMLParser):
    """Channels (section data-channel), their products (li data-id) and marks in the DOM."""

    def __init__(self):
        super().__init__()
        self.state, self.channels, self.where, self.in_mark = None, {}, None, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.state = a.get("data-state")
        if tag == "section" and "data-channel" in a:
            self.where = self.channels.setdefault(a["data-channel"], {"ids": [], "marks": [], "rel": 0})
        if self.where is not None and tag == "li" and "data-id" in a:
            self.where["ids"].append(a["data-id"])
        if self.where is not None and tag == "span" and "rel" in (a.get("class") or "").split():
            self.where["rel"] += 1
        self.in_mark = tag == "mark"

    def handle_endtag(self, tag):
        self.in_mark = self.in_mark and tag != "mark"

    def handle_data(self, data):
        if self.in_mark and self.where is not None:
            self.where["marks"].append(data)


@pytest.fixture
def server(models, synthetic_dir, tmp_path):
    """The real server (`genret serve --port 0`) in a subprocess; yields its URL."""
    err = tmp_path / "serve.err"
    with open(err, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "genret.cli", "serve", "--port", "0", "--data",
                                 str(synthetic_dir), "--threshold", "2.5", "--model", models[0],
                                 "--model", models[1]], stdout=subprocess.PIPE, stderr=f, text=True)
    try:
        url = next((m.group(0) for line in proc.stdout
                    if (m := re.search(r"http://127\.0\.0\.1:\d+/", line))), None)
        assert url, f"genret serve exited {proc.wait()} without listening: {err.read_text()[-2000:]}"
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian: apt-get install chromium); "
                                              ".ci/run installs it")
def test_page_in_headless_chromium(server, synthetic, tmp_path):
    """Chromium opens the page with ?q=..., whose script submits the query form; the
    rendered DOM has both channels with the API's products, highlighted spans and marks."""
    q = labelled_query(synthetic)
    t0 = time.monotonic()
    dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          "--virtual-time-budget=20000", "--dump-dom", f"{server}?q={quote(q)}"],
                         capture_output=True, text=True, timeout=120).stdout
    page = _Page()
    page.feed(dom)
    assert page.state == "done", f"page state {page.state!r} after {time.monotonic() - t0:.0f} s:\n{dom[-2000:]}"
    api = httpx.get(server + "api/search", params={"q": q, "k": 10}).json()
    for r in api["results"]:
        shown = page.channels[r["name"]]
        assert shown["ids"] == [p["id"] for p in r["products"]]
        assert shown["rel"] == sum("relevant" in p for p in r["products"])
        assert len(shown["marks"]) == sum(len(p["matches"]) for p in r["products"])
    assert page.channels["ms"]["marks"] and page.channels["bm25"]["rel"]
