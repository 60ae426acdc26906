"""A small generated dataset for demos and tests."""

from __future__ import annotations

import numpy as np

from .dataset import Dataset, _split_all, query_id


_BRANDS = ["acme", "ryobi", "dewalt", "makita", "husky", "glacier", "behr", "moen", "delta",
           "kohler", "everbilt", "hampton", "lithonia", "cree", "philips", "ge", "rheem", "weber"]
_TYPES = ["drill", "saw", "hammer", "wrench", "faucet", "toilet", "sink", "shower head",
          "light bulb", "ceiling fan", "paint", "primer", "door knob", "hinge", "screw",
          "bolt", "ladder", "mower", "trimmer", "grill", "heater", "vanity", "mirror", "tile",
          "carpet", "blind", "shelf", "cabinet", "lock", "hose"]
_ATTRS = ["cordless", "brushed nickel", "white", "black", "stainless steel", "oak", "led",
          "20v", "18 in.", "3/4 in.", "outdoor", "indoor", "chrome", "bronze", "2-pack",
          "heavy duty", "energy star", "matte", "gloss", "36 in.", "galvanized", "copper"]


def synthetic_dataset(n_products: int = 400, n_queries: int = 300, seed: int = 0) -> Dataset:
    """A small generated catalog with queries and graded labels, for demos and tests.

    Titles combine a brand, attributes and a product type; a query takes some of a target
    product's words (sometimes a rare model code), labels grade the target 3, products
    sharing brand and type 2.5, products sharing only the type 1.5.
    """
    rng = np.random.default_rng(seed)
    catalog, parts = {}, []
    for i in range(n_products):
        brand, ptype = _BRANDS[rng.integers(len(_BRANDS))], _TYPES[rng.integers(len(_TYPES))]
        attrs = list(rng.choice(_ATTRS, size=rng.integers(1, 4), replace=False))
        code = f"m{rng.integers(100, 999)}{chr(97 + rng.integers(26))}"
        pid = f"p{i:05d}"
        catalog[pid] = " ".join([brand.title(), *attrs, ptype.title(), code.upper()])
        parts.append((brand, ptype, attrs, code))
    queries, qrels = {}, {}
    pids = list(catalog)
    for _ in range(n_queries):
        t = int(rng.integers(n_products))
        brand, ptype, attrs, code = parts[t]
        words = [ptype] + ([brand] if rng.random() < 0.6 else []) + \
                ([attrs[0]] if rng.random() < 0.5 else []) + ([code] if rng.random() < 0.15 else [])
        text = " ".join(rng.permutation(words).tolist())
        qid = query_id(text)
        queries[qid] = text
        rel = qrels.setdefault(qid, {})
        rel[pids[t]] = 3.0
        for j, (b, p, _, _) in enumerate(parts):
            if j != t and p == ptype:
                rel.setdefault(pids[j], 2.5 if b == brand else 1.5)
    return Dataset("synthetic", catalog, queries, qrels, 2.5, _split_all(queries))
