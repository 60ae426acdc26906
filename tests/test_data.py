"""genret.data: the evaluation protocol on the real Home Depot file, every loader on small
files in the real formats, the errors on bad input, and the synthetic dataset."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from genret.data import (BUCKETS, SPLITS, DataError, Dataset, load_beir, load_dataset, load_esci,
                         load_homedepot, load_multicpr, load_tsv_dir, load_wands, protocol_split,
                         query_id, synthetic_dataset)

HOMEDEPOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "homedepot" / "train.csv.zip"


def sha1_split(text: str) -> str:
    h = int(hashlib.sha1(text.strip().lower().encode("utf-8")).hexdigest(), 16) % 10
    return {0: "test", 1: "dev"}.get(h, "train")


def find_query(split: str, prefix: str = "query") -> str:
    """A query text that the sha1 rule puts in ``split``."""
    return next(f"{prefix} {i}" for i in range(1000) if sha1_split(f"{prefix} {i}") == split)


# ----------------------------------------------------------------------------- the rules

def test_query_id_and_split_rules():
    assert query_id("Drill bits") == "q" + hashlib.sha1(b"Drill bits").hexdigest()[:12]
    # the id is of the exact string; the split of the normalised one
    assert query_id("drill bits") != query_id("Drill bits ")
    for text in ["Drill bits ", "  DRILL BITS", "drill bits", "caf\u00e9 table"]:
        assert protocol_split(text) == sha1_split(text) == protocol_split(text.strip().lower())
    assert {protocol_split(f"q{i}") for i in range(100)} == set(SPLITS)


# ----------------------------------------------------------------------------- Home Depot

def read_homedepot_rows() -> tuple[list[str], list[list[str]]]:
    with zipfile.ZipFile(HOMEDEPOT) as zf:
        text = zf.read("train.csv").decode("latin-1")
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], rows[1:]


@pytest.fixture(scope="module")
def real():
    if not HOMEDEPOT.exists():
        pytest.skip(f"Home Depot file absent: {HOMEDEPOT} (see shared/data/homedepot/README.md)")
    header, rows = read_homedepot_rows()
    return load_homedepot(HOMEDEPOT), header, rows


def test_homedepot_protocol_counts(real):
    ds, _, rows = real
    assert len(rows) == 74067
    assert len(ds.catalog) == 54667 and len(ds.queries) == 11795
    assert ds.threshold == 2.5 and ds.name == "homedepot"
    assert [len(ds.split(s)) for s in ("test", "dev", "train")] == [994, 952, 7772]
    assert [len(ds.split(s, evaluated_only=False)) - len(ds.split(s))
            for s in ("test", "dev", "train")] == [211, 191, 1675]
    assert len(ds.split("all")) == 994 + 952 + 7772
    assert sum(len(r) for r in ds.qrels.values()) == 74067  # every labelled pair kept
    # split and id follow the documented rules
    for qid, text in ds.queries.items():
        assert qid == query_id(text) and ds.query_split[qid] == sha1_split(text)


def test_homedepot_first_title_variant_wins(real):
    ds, header, rows = real
    uid, title = header.index("product_uid"), header.index("product_title")
    variants: dict[str, list[str]] = {}
    for r in rows:
        v = variants.setdefault(r[uid], [])
        if r[title] not in v:
            v.append(r[title])
    dup = {u: v for u, v in variants.items() if len(v) > 1}
    assert len(dup) == 15
    for u, v in dup.items():
        assert ds.catalog[u] == v[0] != v[1]
    assert ds.catalog["100540"].startswith("American Standard EverClean 5 ft. x 32.75 in. Reversible")


def test_homedepot_threshold_is_exact(real):
    ds, header, rows = real
    col = {c: header.index(c) for c in header}
    grades = Counter(r[col["relevance"]] for r in rows)
    assert sum(len(ds.relevant(q)) for q in ds.queries) == sum(
        n for g, n in grades.items() if float(g) >= 2.5)
    at = {g: next(r for r in rows if r[col["relevance"]] == g) for g in ("2.5", "2.33", "2.67")}
    for g, r in at.items():
        qid, pid = query_id(r[col["search_term"]]), r[col["product_uid"]]
        assert ds.qrels[qid][pid] == float(g)
        assert (pid in ds.relevant(qid)) == (g != "2.33")


def test_homedepot_buckets_cover_all_queries_in_thirds(real):
    ds, _, _ = real
    b = ds.buckets()
    assert set(b) == set(ds.queries)
    counts = Counter(b.values())
    assert set(counts) == set(BUCKETS)
    for name in BUCKETS:
        assert 0.28 < counts[name] / len(b) < 0.39, counts


def test_homedepot_shuffled_rows_change_nothing(real, tmp_path):
    ds, header, rows = real
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(shuffled)
    path = tmp_path / "train_shuffled.csv"
    path.write_bytes(buf.getvalue().encode("latin-1"))
    sh = load_dataset(path)
    assert list(sh.catalog.items()) == list(ds.catalog.items())  # titles and order
    assert sh.queries == ds.queries and sh.qrels == ds.qrels
    assert sh.query_split == ds.query_split
    for s in SPLITS:
        assert sh.split(s) == ds.split(s)
    assert sh.buckets() == ds.buckets()


# ----------------------------------------------------------------------------- TSV dir

def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def make_tsv_dir(d: Path, split_col: bool = True, freq_col: bool = False) -> Path:
    write(d / "products.tsv", "product_id\ttitle\tdescription\n"
          "p1\tCordless Drill 20V\tA drill\np2\tClaw Hammer 16 oz\t\np3\tGarden Hose 50 ft\tGreen\n"
          "p4\tLED Bulb 60W\tWarm white\n")
    cols = ["query_id", "query"] + (["split"] if split_col else []) + (["frequency"] if freq_col else [])
    qs = [("a", "cordless drill", "train", 50), ("b", "hammer", "dev", 5), ("c", "hose", "test", 1),
          ("d", "light bulb", "test", 20), ("e", "drill", "train", 9), ("f", "nails", "train", 2)]
    lines = ["\t".join(cols)]
    for q, text, s, f in qs:
        lines.append("\t".join([q, text] + ([s] if split_col else []) + ([str(f)] if freq_col else [])))
    write(d / "queries.tsv", "\n".join(lines) + "\n")
    write(d / "qrels.tsv", "query_id\tproduct_id\trelevance\n"
          "a\tp1\t2\nb\tp2\t1\nc\tp3\t1\nd\tp4\t0\ne\tp1\t1.5\nf\tp2\t0\n")
    return d


def test_tsv_dir_with_split_and_frequency(tmp_path):
    d = make_tsv_dir(tmp_path / "mini", split_col=True, freq_col=True)
    ds = load_dataset(d)
    assert ds.name == "mini" and ds.threshold == 1.0
    assert ds.catalog == {"p1": "Cordless Drill 20V", "p2": "Claw Hammer 16 oz",
                          "p3": "Garden Hose 50 ft", "p4": "LED Bulb 60W"}
    assert ds.descriptions["p1"] == "A drill" and ds.descriptions["p2"] == ""
    assert ds.queries["a"] == "cordless drill" and len(ds.queries) == 6
    assert ds.qrels["a"] == {"p1": 2.0} and ds.qrels["e"] == {"p1": 1.5}
    assert ds.query_split == {"a": "train", "b": "dev", "c": "test", "d": "test", "e": "train",
                              "f": "train"}
    assert ds.split("test") == ["c"]  # d's only label is 0: not evaluated
    assert ds.split("train") == ["a", "e"] and ds.split("dev") == ["b"]
    assert ds.query_freq == {"a": 50, "b": 5, "c": 1, "d": 20, "e": 9, "f": 2}
    b = ds.buckets()
    assert (b["a"], b["d"]) == ("head", "head") and (b["c"], b["f"]) == ("tail", "tail")
    assert load_tsv_dir(d, threshold=2.0).split("train") == ["a"]


def test_tsv_dir_without_split_uses_sha1(tmp_path):
    ds = load_tsv_dir(make_tsv_dir(tmp_path / "mini", split_col=False))
    assert ds.query_split == {q: sha1_split(t) for q, t in ds.queries.items()}
    assert ds.query_freq is None
    assert set(ds.buckets()) == set(ds.queries)


# ----------------------------------------------------------------------------- BEIR

def make_beir(d: Path) -> Path:
    corpus = [{"_id": "d1", "title": "Cordless Drill", "text": "20V drill with battery"},
              {"_id": "d2", "title": "", "text": "Claw hammer"},
              {"_id": 3, "title": "Garden Hose", "text": ""}]
    queries = [{"_id": "q1", "text": "drill"}, {"_id": "q2", "text": "hammer"},
               {"_id": "q3", "text": "hose"}, {"_id": "q4", "text": "unlabelled query"}]
    write(d / "corpus.jsonl", "".join(json.dumps(c) + "\n" for c in corpus))
    write(d / "queries.jsonl", "".join(json.dumps(q) + "\n" for q in queries))
    write(d / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\n")
    write(d / "qrels" / "train.tsv", "query-id\tcorpus-id\tscore\nq2\td2\t2\nq3\t3\t1\n")
    return d


def test_beir(tmp_path):
    ds = load_dataset(make_beir(tmp_path / "beir"))
    assert ds.catalog == {"d1": "Cordless Drill", "d2": "Claw hammer", "3": "Garden Hose"}
    assert ds.descriptions["d1"] == "20V drill with battery"
    assert ds.queries == {"q1": "drill", "q2": "hammer", "q3": "hose", "q4": "unlabelled query"}
    assert ds.qrels == {"q1": {"d1": 1.0, "d2": 0.0}, "q2": {"d2": 2.0}, "q3": {"3": 1.0}}
    assert ds.threshold == 1.0
    assert (ds.query_split["q1"], ds.query_split["q2"], ds.query_split["q3"]) == ("test", "train", "train")
    assert ds.query_split["q4"] == sha1_split("unlabelled query")
    assert ds.split("test") == ["q1"] and ds.relevant("q1") == {"d1": 1.0}
    assert ds.split("train") == ["q2", "q3"]


# ----------------------------------------------------------------------------- ESCI

def make_esci(d: Path, examples=None, products=None) -> Path:
    import pandas as pd

    d.mkdir(parents=True, exist_ok=True)
    dev_q, train_q = find_query("dev", "esci"), find_query("train", "esci")
    if examples is None:
        rows = [  # query, query_id, product_id, locale, label, split
            ("wireless mouse", 1, "B01", "us", "E", "test"),
            ("wireless mouse", 1, "B02", "us", "S", "test"),
            ("wireless mouse", 1, "B03", "us", "I", "test"),
            (dev_q, 2, "B02", "us", "E", "train"),
            (train_q, 3, "B03", "us", "C", "train"),
            (train_q, 3, "B01", "us", "E", "train"),
            ("raton inalambrico", 4, "B01", "es", "E", "test"),
        ]
        examples = pd.DataFrame({
            "example_id": range(len(rows)), "query": [r[0] for r in rows],
            "query_id": [r[1] for r in rows], "product_id": [r[2] for r in rows],
            "product_locale": [r[3] for r in rows], "esci_label": [r[4] for r in rows],
            "small_version": [1] * len(rows), "large_version": [1] * len(rows),
            "split": [r[5] for r in rows]})
    if products is None:
        prods = [("B01", "Logitech Wireless Mouse", "us"), ("B02", "USB Mouse Pad", "us"),
                 ("B03", "Keyboard", "us"), ("B01", "Raton Logitech", "es")]
        products = pd.DataFrame({
            "product_id": [p[0] for p in prods], "product_title": [p[1] for p in prods],
            "product_description": [None, "A pad", None, None], "product_bullet_point": [None] * 4,
            "product_brand": ["Logitech", None, None, "Logitech"], "product_color": [None] * 4,
            "product_locale": [p[2] for p in prods]})
    examples.to_parquet(d / "shopping_queries_dataset_examples.parquet", index=False)
    products.to_parquet(d / "shopping_queries_dataset_products.parquet", index=False)
    return d


def test_esci(tmp_path):
    d = make_esci(tmp_path / "esci")
    ds = load_dataset(d)
    assert ds.name == "esci-us" and ds.threshold == 3.0
    assert ds.catalog == {"B01": "Logitech Wireless Mouse", "B02": "USB Mouse Pad", "B03": "Keyboard"}
    assert ds.descriptions["B02"] == "A pad"
    assert set(ds.queries) == {"1", "2", "3"}
    assert ds.qrels["1"] == {"B01": 3.0, "B02": 2.0, "B03": 0.0}
    assert ds.qrels["3"] == {"B03": 1.0, "B01": 3.0}
    assert ds.query_split == {"1": "test", "2": "dev", "3": "train"}
    assert ds.relevant("1") == {"B01": 3.0}
    assert [ds.split(s) for s in ("train", "dev", "test")] == [["3"], ["2"], ["1"]]
    es = load_esci(d, locale="es")
    assert es.catalog == {"B01": "Raton Logitech"} and es.queries == {"4": "raton inalambrico"}
    assert load_esci(d, threshold=2.0).relevant("1") == {"B01": 3.0, "B02": 2.0}


# ----------------------------------------------------------------------------- WANDS

WANDS_PRODUCT_COLS = ["product_id", "product_name", "product_class", "category hierarchy",
                      "product_description", "product_features", "rating_count",
                      "average_rating", "review_count"]


def make_wands(d: Path) -> Path:
    write(d / "product.csv", "\t".join(WANDS_PRODUCT_COLS) + "\n"
          "0\tsolid wood platform bed\tBeds\tFurniture / Bedroom Furniture / Beds\t"
          'a 12" tall "modern" bed\tcolor:brown|material:wood\t15.0\t4.5\t15.0\n'
          "1\tall-clad 7 qt . slow cooker\tSlow Cookers\tKitchen / Small Appliances\t\t\t\t\t\n"
          "2\toutdoor rug\tRugs\tRugs / Outdoor Rugs\tweatherproof\tsize:5x8\t3.0\t4.0\t3.0\n")
    write(d / "query.csv", "query_id\tquery\tquery_class\n"
          "0\tsalon chair\tMassage Chairs\n1\tsmart coffee table\tCoffee & Cocktail Tables\n"
          "2\tdinosaur\tKids Wall Decor\n")
    write(d / "label.csv", "id\tquery_id\tproduct_id\tlabel\n"
          "0\t0\t0\tIrrelevant\n1\t0\t1\tPartial\n2\t1\t0\tExact\n3\t2\t2\tExact\n")
    return d


def test_wands(tmp_path):
    ds = load_dataset(make_wands(tmp_path / "wands"))
    assert ds.name == "wands" and ds.threshold == 2.0
    assert ds.catalog == {"0": "solid wood platform bed", "1": "all-clad 7 qt . slow cooker",
                          "2": "outdoor rug"}
    assert ds.descriptions["0"] == 'a 12" tall "modern" bed'  # quotes are literal
    assert ds.queries == {"0": "salon chair", "1": "smart coffee table", "2": "dinosaur"}
    assert ds.qrels == {"0": {"0": 0.0, "1": 1.0}, "1": {"0": 2.0}, "2": {"2": 2.0}}
    assert ds.query_split == {q: sha1_split(t) for q, t in ds.queries.items()}
    assert sorted(ds.split("all")) == ["1", "2"]


# ----------------------------------------------------------------------------- Multi-CPR

def make_multicpr(d: Path) -> Path:
    write(d / "corpus.tsv", "1\t无线鼠标 罗技\n2\t机械键盘\n3\t鼠标垫\textra\tfields\n")
    write(d / "train.query.txt", "10\t鼠标\n11\t键盘\n")
    write(d / "dev.query.txt", "".join(f"{20 + i}\t查询 {i}\n" for i in range(8)))
    write(d / "qrels.train.tsv", "10\t0\t1\t1\n11\t0\t2\t1\n")
    write(d / "qrels.dev.tsv", "".join(f"{20 + i}\t0\t{1 + i % 3}\t1\n" for i in range(8)))
    return d


def test_multicpr(tmp_path):
    ds = load_dataset(make_multicpr(tmp_path / "ecom"))
    assert ds.name == "ecom" and ds.threshold == 1.0
    assert ds.catalog == {"1": "无线鼠标 罗技", "2": "机械键盘", "3": "鼠标垫\textra\tfields"}
    assert ds.queries["train-10"] == "鼠标" and ds.queries["dev-27"] == "查询 7"
    assert ds.qrels["train-11"] == {"2": 1.0} and ds.qrels["dev-25"] == {"3": 1.0}
    assert ds.query_split["train-10"] == ds.query_split["train-11"] == "train"
    for i in range(8):
        h = int(hashlib.sha1(f"查询 {i}".encode()).hexdigest(), 16)
        assert ds.query_split[f"dev-{20 + i}"] == ("dev" if h % 2 == 0 else "test")
    assert len(ds.split("dev")) + len(ds.split("test")) == 8 and ds.split("test")


# ----------------------------------------------------------------------------- dispatch

def test_load_dataset_dispatch(tmp_path):
    with pytest.raises(DataError, match="not a known dataset layout"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "nope")
    hd = tmp_path / "hd"
    write(hd / "train.csv", 'id,product_uid,product_title,search_term,relevance\n'
          '2,100001,"Simpson Strong-Tie 12-Gauge Angle",angle bracket,3\n')
    assert load_dataset(hd).name == "homedepot"
    assert load_dataset(hd / "train.csv").catalog == {"100001": "Simpson Strong-Tie 12-Gauge Angle"}


# ----------------------------------------------------------------------------- bad input

def tsv_case(file: str, text: str):
    def mutate(d: Path) -> Path:
        make_tsv_dir(d)
        p = d / file
        if text is None:
            p.unlink()
        else:
            write(p, text)
        return p
    return mutate


BAD_TSV = {
    "missing file": (tsv_case("qrels.tsv", None), ["missing"]),
    "wrong columns": (tsv_case("products.tsv", "id\tname\np1\tDrill\n"), ["product_id", "title"]),
    "empty product id": (tsv_case("products.tsv", "product_id\ttitle\np1\tA\n \tB\n"),
                         ["line 3", "empty product_id"]),
    "empty query id": (tsv_case("queries.tsv", "query_id\tquery\na\tx\n\ty\n"), ["line 3", "empty query_id"]),
    "empty qrels product id": (tsv_case("qrels.tsv", "query_id\tproduct_id\trelevance\na\t\t1\n"),
                               ["line 2", "empty product_id"]),
    "duplicate product id": (tsv_case("products.tsv", "product_id\ttitle\np1\tA\np2\tB\np1\tC\n"),
                             ["line 4", "repeats product_id 'p1'", "line 2"]),
    "duplicate query id": (tsv_case("queries.tsv", "query_id\tquery\na\tx\na\ty\n"),
                           ["line 3", "repeats query_id 'a'"]),
    "unknown product": (tsv_case("qrels.tsv", "query_id\tproduct_id\trelevance\na\tp1\t1\na\tp9\t1\n"),
                        ["line 3", "'p9'", "products.tsv"]),
    "unknown query": (tsv_case("qrels.tsv", "query_id\tproduct_id\trelevance\nzz\tp1\t1\n"),
                      ["line 2", "'zz'", "queries.tsv"]),
    "non-numeric relevance": (tsv_case("qrels.tsv", "query_id\tproduct_id\trelevance\na\tp1\thigh\n"),
                              ["line 2", "'high'", "not a number"]),
    "nan relevance": (tsv_case("qrels.tsv", "query_id\tproduct_id\trelevance\na\tp1\tnan\n"),
                      ["line 2", "finite"]),
    "too few fields": (tsv_case("qrels.tsv", "query_id\tproduct_id\trelevance\na\tp1\n"),
                       ["line 2", "relevance"]),
    "conflicting labels": (tsv_case("qrels.tsv", "query_id\tproduct_id\trelevance\na\tp1\t1\na\tp1\t2\n"),
                           ["line 3", "line 2"]),
    "bad split": (tsv_case("queries.tsv", "query_id\tquery\tsplit\na\tx\tvalid\n"),
                  ["line 2", "'valid'", "train, dev or test"]),
    "bad frequency": (tsv_case("queries.tsv", "query_id\tquery\tfrequency\na\tx\tlots\n"),
                      ["line 2", "frequency", "'lots'"]),
    "tab inside a title": (tsv_case("products.tsv", "product_id\ttitle\np1\tA\np2\tClaw\tHammer\n"),
                           ["line 3", "3 tab-separated fields, the header 2", "holds a tab"]),
    "empty query text": (tsv_case("queries.tsv", "query_id\tquery\na\tx\nb\t  \n"),
                         ["line 3", "empty query"]),
}


@pytest.mark.parametrize("case", list(BAD_TSV))
def test_tsv_bad_input(tmp_path, case):
    mutate, expected = BAD_TSV[case]
    bad_file = mutate(tmp_path / "d")
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path / "d")
    msg = str(e.value)
    assert str(bad_file) in msg, msg
    for s in expected:
        assert s in msg, msg


def test_tsv_undecodable_bytes(tmp_path):
    d = make_tsv_dir(tmp_path / "d")
    (d / "products.tsv").write_bytes(b"product_id\ttitle\np1\tDrill\np2\tCaf\xe9 table\n")
    with pytest.raises(DataError, match="line 3 is not valid UTF-8.*re-save") as e:
        load_tsv_dir(d)
    assert str(d / "products.tsv") in str(e.value)


def test_empty_query_texts_are_refused_at_load(tmp_path):
    d = make_beir(tmp_path / "beir")
    for text in ('"  "', "null"):
        (d / "queries.jsonl").write_text('{"_id": "q1", "text": "drill"}\n{"_id": "q2", "text": %s}\n' % text)
        with pytest.raises(DataError, match=r"queries.jsonl: line 2 has an empty text"):
            load_dataset(d)
    d = make_wands(tmp_path / "wands")
    write(d / "query.csv", "query_id\tquery\n0\tsalon chair\n1\t\n")
    with pytest.raises(DataError, match=r"query.csv: line 3 has an empty query"):
        load_dataset(d)
    d = make_multicpr(tmp_path / "cpr")
    write(d / "train.query.txt", "10\t \n")
    with pytest.raises(DataError, match=r"train.query.txt: line 1 has an empty query"):
        load_dataset(d)


def test_encoding_is_detected_recorded_and_can_be_given(tmp_path):
    utf8 = tmp_path / "utf8.csv"
    header = "id,product_uid,product_title,search_term,relevance\n"
    utf8.write_bytes((header + "2,100001,Caf\u00e9 Table 3\u00bd in.,cafe table,3\n").encode("utf-8"))
    ds = load_dataset(utf8)
    assert ds.catalog["100001"] == "Caf\u00e9 Table 3\u00bd in." and ds.encoding == "utf-8"
    assert ds.summary()["encoding"] == "utf-8" and ds.subset(ds.split("all", False)).encoding == "utf-8"
    assert load_dataset(utf8, encoding="latin-1").catalog["100001"] == "Caf\u00c3\u00a9 Table 3\u00c2\u00bd in."
    latin = homedepot_file(tmp_path, "2,100001,Caf\u00e9 Table,cafe table,3\n", "latin.csv")
    ds = load_dataset(latin)  # the Home Depot file is latin-1: the fallback when UTF-8 fails
    assert ds.catalog["100001"] == "Caf\u00e9 Table" and ds.encoding == "latin-1"
    with pytest.raises(DataError) as e:
        load_dataset(latin, encoding="utf-8")
    assert f"{latin}: line 2 is not valid utf-8 (byte 0xe9 at byte offset {len(header) + 12})" in str(e.value)
    with pytest.raises(DataError, match="unknown text encoding 'klingon'"):
        load_dataset(latin, encoding="klingon")
    d = make_tsv_dir(tmp_path / "d")
    (d / "products.tsv").write_bytes("product_id\ttitle\np1\tCaf\u00e9\n".encode("latin-1"))
    (d / "qrels.tsv").write_text("query_id\tproduct_id\trelevance\na\tp1\t1\n")
    with pytest.raises(DataError, match="products.tsv: line 2 is not valid UTF-8.*--encoding latin-1"):
        load_dataset(d)  # TSV has no fallback: UTF-8 unless told
    ds = load_dataset(d, encoding="latin-1")
    assert ds.catalog == {"p1": "Caf\u00e9"} and ds.encoding == "latin-1"


def test_binary_or_unparsable_csv_is_one_clear_error(tmp_path):
    rng = random.Random(0)
    noise = tmp_path / "noise.bin"
    noise.write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
    with pytest.raises(DataError, match="holds binary data") as e:
        load_dataset(noise)
    assert str(noise) in str(e.value) and "\n" not in str(e.value)
    high = tmp_path / "high.dat"  # no NUL bytes: read as latin-1 text, then refused by its header
    high.write_bytes(bytes(rng.randrange(0x80, 0x100) for _ in range(4096)) + b",\n" * 3)
    with pytest.raises(DataError, match="expected columns") as e:
        load_dataset(high)
    assert len(str(e.value)) < 400 and "\n" not in str(e.value)
    huge = homedepot_file(tmp_path, '2,100001,"' + "x" * 200_000 + '",q,3\n', "huge.csv")
    with pytest.raises(DataError, match=r"huge.csv: line \d+ is not valid CSV \(field larger"):
        load_dataset(huge)


def homedepot_file(tmp_path: Path, body: str, name: str = "train.csv") -> Path:
    p = tmp_path / name
    p.write_bytes(("id,product_uid,product_title,search_term,relevance\n" + body).encode("latin-1"))
    return p


@pytest.mark.parametrize("body, expected", [
    ('2,100001,Angle,angle bracket,3\n3,100001,Angle,l bracket,x\n', ["line 3", "'x'", "not a number"]),
    ('2,100001,Angle,,3\n', ["line 2", "empty search_term"]),
    ('2,,Angle,bracket,3\n', ["line 2", "empty product_uid"]),
    ('2,100001,Angle\n', ["line 2", "fields"]),
    ('2,100001,Angle,bracket,3\n2,100002,Bolt,bolt,3\n', ["line 3", "repeats id 2"]),
    ('', ["no data rows"]),
])
def test_homedepot_bad_rows(tmp_path, body, expected):
    p = homedepot_file(tmp_path, body)
    with pytest.raises(DataError) as e:
        load_homedepot(p)
    for s in [str(p), *expected]:
        assert s in str(e.value), str(e.value)


def test_homedepot_bad_files(tmp_path):
    with pytest.raises(DataError, match="missing") as e:
        load_homedepot(tmp_path / "train.csv.zip")
    assert str(tmp_path / "train.csv.zip") in str(e.value)
    bad = tmp_path / "other.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="expected columns") as e:
        load_homedepot(bad)
    assert str(bad) in str(e.value)
    z = tmp_path / "nocsv.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("README.txt", "no csv here")
        zf.writestr("__MACOSX/._train.csv", "resource fork")
    with pytest.raises(DataError, match="holds no .csv member") as e:
        load_dataset(z)
    assert str(z) in str(e.value)
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="not a readable zip"):
        load_homedepot(junk)
    # a zipped file with the real member name, alongside other members, loads
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("notes.csv", "x,y\n")
        zf.writestr("train.csv", "id,product_uid,product_title,search_term,relevance\n"
                                 "2,100001,Angle,bracket,2.5\n")
    assert load_homedepot(good).relevant(query_id("bracket")) == {"100001": 2.5}


def test_beir_bad_input(tmp_path):
    d = make_beir(tmp_path / "b")
    write(d / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\tnope\t1\n")
    with pytest.raises(DataError, match=r"line 2: product 'nope' is not in .*corpus.jsonl") as e:
        load_beir(d)
    assert str(d / "qrels" / "test.tsv") in str(e.value)
    write(d / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\tabc\n")
    with pytest.raises(DataError, match=r"line 2: score 'abc' is not a number"):
        load_beir(d)
    write(d / "qrels" / "test.tsv", "qid\tdocid\trel\nq1\td1\t1\n")
    with pytest.raises(DataError, match="query-id"):
        load_beir(d)
    write(d / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq2\td1\t1\n")
    with pytest.raises(DataError, match="also labelled in .*train.tsv"):
        load_beir(d)
    make_beir(d)
    write(d / "corpus.jsonl", '{"_id": "d1", "title": "a"}\n{"_id": "d1", "title": "b"}\n')
    with pytest.raises(DataError, match=r"corpus.jsonl: line 2 repeats _id 'd1'"):
        load_beir(d)
    write(d / "corpus.jsonl", '{"_id": "d1", "title": "a"}\n{"_id": "", "title": "b"}\n')
    with pytest.raises(DataError, match=r"corpus.jsonl: line 2 has no _id"):
        load_beir(d)
    write(d / "corpus.jsonl", '{"_id": "d1", "title": "a"}\n{"_id": "d2", "title": \n')
    with pytest.raises(DataError, match=r"corpus.jsonl: line 2 is not valid JSON"):
        load_beir(d)
    (d / "corpus.jsonl").unlink()
    with pytest.raises(DataError, match=r"corpus.jsonl: missing"):
        load_beir(d)


def test_esci_bad_input(tmp_path):
    import pandas as pd

    d = make_esci(tmp_path / "e")
    ex = pd.read_parquet(d / "shopping_queries_dataset_examples.parquet")
    pr = pd.read_parquet(d / "shopping_queries_dataset_products.parquet")
    cases = [
        (ex.drop(columns=["esci_label"]), pr, "examples", ["esci_label"]),
        (ex, pr.drop(columns=["product_title"]), "products", ["product_title"]),
        (ex.assign(product_id=["B01", "B99"] + ex.product_id.tolist()[2:]), pr, "examples",
         ["row 1", "'B99'", "products.parquet"]),
        (ex.assign(esci_label=["E", "X"] + ex.esci_label.tolist()[2:]), pr, "examples",
         ["row 1", "'X'"]),
        (ex.assign(product_id=["B01", ""] + ex.product_id.tolist()[2:]), pr, "examples",
         ["row 1", "empty product_id"]),
        (ex, pd.concat([pr, pr.iloc[[1]]], ignore_index=True), "products",
         ["row 4", "repeats product_id 'B02'"]),
    ]
    for examples, products, bad, expected in cases:
        make_esci(d, examples, products)
        with pytest.raises(DataError) as e:
            load_esci(d)
        msg = str(e.value)
        assert str(d / f"shopping_queries_dataset_{bad}.parquet") in msg, msg
        for s in expected:
            assert s in msg, msg
    make_esci(d)
    with pytest.raises(DataError, match="no examples with product_locale 'jp'"):
        load_esci(d, locale="jp")
    (d / "shopping_queries_dataset_products.parquet").unlink()
    with pytest.raises(DataError, match="products.parquet: missing"):
        load_esci(d)


def test_wands_bad_input(tmp_path):
    d = make_wands(tmp_path / "w")
    write(d / "label.csv", "id\tquery_id\tproduct_id\tlabel\n0\t0\t0\tRelevant\n")
    with pytest.raises(DataError, match=r"label.csv: line 2: label 'Relevant'; expected Exact"):
        load_wands(d)
    write(d / "label.csv", "id\tquery_id\tproduct_id\tlabel\n0\t0\t7\tExact\n")
    with pytest.raises(DataError, match=r"label.csv: line 2: product '7' is not in .*product.csv"):
        load_wands(d)
    write(d / "label.csv", "id\tquery_id\tproduct_id\tlabel\n0\t0\t\tExact\n")
    with pytest.raises(DataError, match=r"label.csv: line 2 has an empty product_id"):
        load_wands(d)
    write(d / "label.csv", "id,query_id,product_id,label\n0,0,0,Exact\n")  # comma-separated
    with pytest.raises(DataError, match=r"label.csv: expected tab-separated header"):
        load_wands(d)


def test_multicpr_bad_input(tmp_path):
    d = make_multicpr(tmp_path / "m")
    write(d / "qrels.dev.tsv", "20\t0\t9\t1\n")
    with pytest.raises(DataError, match=r"qrels.dev.tsv: line 1: product '9' is not in .*corpus.tsv"):
        load_multicpr(d)
    write(d / "qrels.dev.tsv", "20\t0\t1\tyes\n")
    with pytest.raises(DataError, match=r"qrels.dev.tsv: line 1: relevance 'yes' is not a number"):
        load_multicpr(d)
    write(d / "qrels.dev.tsv", "99\t0\t1\t1\n")
    with pytest.raises(DataError, match=r"qrels.dev.tsv: line 1: query 'dev-99' is not in .*dev.query.txt"):
        load_multicpr(d)
    write(d / "corpus.tsv", "1\ta\n2\tb\n1\tc\n")
    with pytest.raises(DataError, match=r"corpus.tsv: line 3 repeats pid '1'"):
        load_multicpr(d)
    write(d / "corpus.tsv", "1\ta\n\tb\n")
    with pytest.raises(DataError, match=r"corpus.tsv: line 2 has an empty id"):
        load_multicpr(d)
    (d / "corpus.tsv").write_bytes(b"1\ta\n2\t\xff\xfe\n")
    with pytest.raises(DataError, match=r"corpus.tsv: line 2 is not valid UTF-8"):
        load_multicpr(d)
    (d / "qrels.train.tsv").unlink()
    make_multicpr(d)
    (d / "qrels.train.tsv").unlink()
    with pytest.raises(DataError, match=r"qrels.train.tsv: missing"):
        load_multicpr(d)


# ----------------------------------------------------------------------------- synthetic, subset

def test_synthetic_is_seeded_and_covers_every_split():
    a, b, c = synthetic_dataset(seed=3), synthetic_dataset(seed=3), synthetic_dataset(seed=4)
    assert (a.catalog, a.queries, a.qrels, a.query_split) == (b.catalog, b.queries, b.qrels, b.query_split)
    assert a.queries != c.queries
    ds = synthetic_dataset()
    for s in SPLITS:
        assert ds.split(s), s
        assert all(ds.relevant(q) for q in ds.split(s))
    assert isinstance(ds, Dataset) and set(ds.buckets()) == set(ds.queries)


def test_subset_keeps_labelled_products():
    ds = synthetic_dataset()
    qids = ds.split("test")[:10]
    labelled = {p for q in qids for p in ds.qrels[q]}
    for n in (5, len(labelled) + 40):
        sub = ds.subset(qids, n_products=n, seed=1)
        assert labelled <= set(sub.catalog)
        assert len(sub.catalog) == max(n, len(labelled))
        assert sorted(sub.queries) == sorted(qids) and sub.split("test") == sorted(qids)
        assert all(sub.qrels[q] == ds.qrels[q] for q in qids)
        assert sub.buckets() == {q: ds.buckets()[q] for q in qids}
    assert ds.subset(qids, n_products=len(labelled) + 40, seed=1).catalog == \
        ds.subset(qids, n_products=len(labelled) + 40, seed=1).catalog
    assert ds.subset(qids).catalog == ds.catalog


# ----------------------------------------------------------------------------- the package

def test_default_data_path_from_env_cwd_or_repository(tmp_path, monkeypatch):
    import genret
    from genret.data import default_data_path

    monkeypatch.setenv("GENRET_DATA", str(tmp_path / "mine.csv"))
    assert default_data_path() == tmp_path / "mine.csv"
    monkeypatch.delenv("GENRET_DATA")
    rel = Path("..") / "shared" / "data" / "homedepot" / "train.csv.zip"
    here = tmp_path / "work" / "repo"
    here.mkdir(parents=True)
    write(here / rel, "")
    monkeypatch.chdir(here)  # ../shared seen from the working directory
    assert default_data_path() == (here / rel).resolve()
    monkeypatch.chdir(tmp_path)  # else seen from the repository root (the parent of genret/)
    in_repo = (Path(genret.__file__).resolve().parents[1] / rel).resolve()
    assert default_data_path() == (in_repo if in_repo.exists() else None)


def test_data_loads_without_torch():
    """genret.data is numpy (and pandas for ESCI, on use) only: loading data never pulls in
    the model stack."""
    import subprocess
    import sys

    code = ("import sys, genret.data; heavy = {'torch', 'transformers', 'pandas'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
