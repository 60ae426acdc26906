"""Zero-shot probe behind ``id_init="codebook"`` (issue 16): before any training, does the
MiniLM prefix-LM's state at the end of ``<|query|> {query}<|id|>`` point where the query's
sentence embedding points? Scores each dev query's level-1 codes by state . centroid (raw,
and centred by the mean state of title prompts, which is what the codebook init's output
bias does) and reports how often a relevant product's level-1 code is in the top 1/5/20,
next to the mean of the prompt's states (sentence-transformers' pooling, raw and centred) and
the sentence-transformers query embedding (the IDs' own encoder).

    python experiments/sid_codebook_probe.py --sid results/semantic/hd-3x256-none --queries 300
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from genret.data import load_dataset  # noqa: E402
from genret.minilm import load_minilm  # noqa: E402
from genret.semantic import PROMPT, TITLE_PROMPT  # noqa: E402


def prompt_states(model, tok, texts: list[str], pool: bool = False) -> np.ndarray:
    """The output layer's input at each prompt's last position, or (``pool``) the mean over
    all the prompt's positions, sentence-transformers' pooling (one prompt at a time)."""
    out = []
    with torch.inference_mode():
        for t in texts:
            ids = torch.tensor([tok(t, add_special_tokens=False)["input_ids"]])
            h = model.bert(input_ids=ids).last_hidden_state[0]
            out.append(h.mean(0) if pool else h[-1])
    return torch.stack(out).numpy()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sid", required=True, help="a `genret sid build` directory (residual k-means)")
    p.add_argument("--data")
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args(argv)
    from semantic_id import SemanticIDs
    from semantic_id.encoders import Encoder

    ds = load_dataset(args.data)
    sids = SemanticIDs.load(args.sid)
    books = sids.quantizer.codebooks[0]
    qids = ds.split("dev")[:args.queries]
    model, tok = load_minilm("minilm")
    prompts = [PROMPT.format(query=ds.queries[q]) for q in qids]
    pick = np.random.default_rng(0).choice(len(ds.titles), 256, replace=False)
    titles = [TITLE_PROMPT.format(title=ds.titles[i]) for i in pick]
    h, hp = prompt_states(model, tok, prompts), prompt_states(model, tok, prompts, pool=True)
    centre, centre_p = prompt_states(model, tok, titles).mean(0), prompt_states(model, tok, titles, pool=True).mean(0)
    st = Encoder().encode([ds.queries[q] for q in qids], progress=False)
    row = {p: i for i, p in enumerate(sids.item_ids)}
    gold = [{int(sids.codes[row[p], 0]) for p in ds.relevant(q)} for q in qids]
    result = {"queries": len(qids), "sid": args.sid}
    for name, q in (("state", h), ("state - mean title-prompt state", h - centre), ("pooled prompt state", hp),
                    ("pooled - mean pooled title prompt", hp - centre_p), ("sentence embedding", st)):
        order = np.argsort(-(q @ books.T), axis=1)
        rank = np.array([min(int(np.flatnonzero(o == c)[0]) for c in g) for o, g in zip(order, gold)])
        result[name] = {f"top{k}": round(float(np.mean(rank < k)), 3) for k in (1, 5, 20)}
        print(f"{name:34s} level-1 code of a relevant product in " +
              " ".join(f"top-{k} {v:.3f}" for k, v in zip((1, 5, 20), result[name].values())))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
