"""Which form of the pretrained MiniLM backbone learns query -> relevant title best (dev).

Forms (genret.minilm): ``prefix`` (MiniLM weights, prefix-LM mask: the query read
bidirectionally), ``decoder`` (MiniLM weights, plain causal mask), ``prefix-random`` (the
prefix-LM network from random init: the control). Each is trained the same way
(query -> one relevant title, batch 32, AdamW, plain loop) and measured on a seeded
sample of dev queries: title NLL per token of the relevant titles, and reranking each
query's labelled products (relevant ones are positives, judged-irrelevant ones hard
negatives) plus ``--negatives`` random ones by title log-probability (MRR of the first
relevant, AUC). Zero-shot MiniLM cosine on the same candidates is the reference.

    python experiments/backbone_forms.py --steps 200 --out docs/results/backbone_forms

Writes ``{out}.json``, ``{out}.md`` and ``{out}.png`` (loss curves).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import genret  # noqa: F401  (first: sets OMP_WAIT_POLICY=PASSIVE before torch loads)
import numpy as np
import torch
from tqdm.auto import tqdm

from genret.data import default_data_path, load_dataset
from genret.minilm import PROMPT_ENDS, from_minilm, minilm_path, minilm_tokenizer

PROMPT = "<|query|> {query}<|title|>"  # genret.lexical.PROMPT
FORMS = {"prefix": dict(prefix_lm=True, pretrained=True),
         "decoder": dict(prefix_lm=False, pretrained=True),
         "prefix-random": dict(prefix_lm=True, pretrained=False)}


def encode(tok, query: str, title: str, max_len: int) -> tuple[list[int], int]:
    p = tok(PROMPT.format(query=query), add_special_tokens=False)["input_ids"]
    t = tok(" " + title, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return (p + t)[:max_len], len(p)


def batch_tensors(rows: list[tuple[list[int], int]], pad: int):
    n = max(len(r) for r, _ in rows)
    ids = torch.full((len(rows), n), pad)
    att = torch.zeros((len(rows), n), dtype=torch.long)
    lab = torch.full((len(rows), n), -100)
    for i, (r, plen) in enumerate(rows):
        ids[i, :len(r)], att[i, :len(r)] = torch.tensor(r), 1
        lab[i, plen:len(r)] = torch.tensor(r[plen:])
    return ids, att, lab


def title_logprobs(model, rows, pad: int, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Sum of log p(title tokens + EOS | prompt) and the token count, per row."""
    tot, cnt = [], []
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            ids, att, lab = batch_tensors(rows[i:i + batch], pad)
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=att).logits[:, :-1].float(), -1)
            tgt = lab[:, 1:]
            ok = tgt != -100
            lp = logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * ok
            tot += lp.sum(1).tolist()
            cnt += ok.sum(1).tolist()
    return np.array(tot), np.array(cnt)


def dev_candidates(ds, n_queries: int, negatives: int, seed: int):
    rng = np.random.default_rng(seed)
    dev = ds.split("dev")
    qids = [dev[i] for i in sorted(rng.choice(len(dev), min(n_queries, len(dev)), replace=False))]
    pids = ds.product_ids
    out = []
    for q in qids:
        rel = sorted(ds.relevant(q))
        labelled = ds.qrels.get(q, {})
        hard = sorted(p for p in labelled if p not in ds.relevant(q))  # judged, below the threshold
        rand = [pids[i] for i in rng.choice(len(pids), negatives + len(labelled), replace=False)
                if pids[i] not in labelled][:negatives]
        out.append((q, rel, hard + rand))
    return out


def rank_metrics(scores: list[np.ndarray], n_rel: list[int]) -> dict:
    """MRR of the first relevant candidate and AUC (relevant above negative), per query."""
    mrr, auc = [], []
    for s, r in zip(scores, n_rel):
        order = np.argsort(-s, kind="stable")
        mrr.append(1.0 / (1 + int(np.flatnonzero(order < r)[0])))
        pos, neg = s[:r], s[r:]
        auc.append(float(((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])).mean()))
    return {"mrr": float(np.mean(mrr)), "auc": float(np.mean(auc))}


def evaluate(model, tok, ds, cands, max_len: int) -> dict:
    model.eval()
    rows, spans = [], []
    for q, rel, neg in cands:
        start = len(rows)
        rows += [encode(tok, ds.queries[q], ds.catalog[p], max_len) for p in rel + neg]
        spans.append((start, len(rel)))
    tot, cnt = title_logprobs(model, rows, tok.pad_token_id)
    rel_mask = np.zeros(len(rows), bool)
    for start, r in spans:
        rel_mask[start:start + r] = True
    bounds = [s for s, _ in spans] + [len(rows)]
    scores = [tot[bounds[i]:bounds[i + 1]] for i in range(len(spans))]
    return {"dev_title_nll": float(-tot[rel_mask].sum() / cnt[rel_mask].sum()),
            **rank_metrics(scores, [r for _, r in spans])}


def zero_shot(ds, cands) -> dict:
    from sentence_transformers import SentenceTransformer

    enc = SentenceTransformer(minilm_path(), device="cpu")
    scores = []
    for q, rel, neg in cands:
        v = enc.encode([ds.queries[q]] + [ds.catalog[p] for p in rel + neg], normalize_embeddings=True)
        scores.append(v[1:] @ v[0])
    return rank_metrics(scores, [len(r) for _, r, _ in cands])


def train(form: str, ds, tok, args) -> dict:
    torch.manual_seed(args.seed)
    model = from_minilm(tok.convert_tokens_to_ids(PROMPT_ENDS), len(tok), **FORMS[form])
    rng = np.random.default_rng(args.seed)
    pairs = [(ds.queries[q], ds.catalog[p]) for q in ds.split("train") for p in sorted(ds.relevant(q))]
    order = rng.permutation(len(pairs))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup))
    log, t0 = [], time.perf_counter()
    model.train()
    for step in tqdm(range(args.steps), desc=form):
        idx = order[(step * args.batch) % len(order):][: args.batch]
        ids, att, lab = batch_tensors([encode(tok, *pairs[i], args.max_len) for i in idx], tok.pad_token_id)
        loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad()
        log.append(round(loss.item(), 4))
    return {"model": model, "train_loss": log, "seconds_per_step": (time.perf_counter() - t0) / args.steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--forms", default=",".join(FORMS))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--dev-queries", type=int, default=150)
    ap.add_argument("--negatives", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="docs/results/backbone_forms")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset(args.data or default_data_path())
    tok = minilm_tokenizer()
    cands = dev_candidates(ds, args.dev_queries, args.negatives, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    res = {"config": vars(args), "n_dev_queries": len(cands), "zero_shot_minilm_cosine": zero_shot(ds, cands),
           "forms": {}}
    for form in args.forms.split(","):
        r = train(form, ds, tok, args)
        r.update(evaluate(r.pop("model"), tok, ds, cands, args.max_len))
        res["forms"][form] = r
        out.with_suffix(".json").write_text(json.dumps(res, indent=1))  # after every form
        print(form, {k: v for k, v in r.items() if k != "train_loss"}, flush=True)
    lines = [f"Dev, {len(cands)} queries, labelled + {args.negatives} random candidates each; "
             f"{args.steps} steps of {args.batch}, lr {args.lr}.", "",
             "| form | dev title NLL/token | MRR | AUC | s/step |", "|---|---|---|---|---|"]
    for form, r in res["forms"].items():
        lines.append(f"| {form} | {r['dev_title_nll']:.3f} | {r['mrr']:.3f} | {r['auc']:.3f} | "
                     f"{r['seconds_per_step']:.2f} |")
    z = res["zero_shot_minilm_cosine"]
    lines.append(f"| zero-shot MiniLM cosine | | {z['mrr']:.3f} | {z['auc']:.3f} | |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for form, r in res["forms"].items():
        ls = np.convolve(r["train_loss"], np.ones(10) / 10, mode="valid")
        ax.plot(np.arange(len(ls)) + 10, ls, label=form)
    ax.set(xlabel="step", ylabel="train loss (10-step mean)", title="query -> title, MiniLM forms")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
