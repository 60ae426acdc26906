"""How much of a MiniLM multispan training step and decoding step is the output layer, and
what restricting it to the catalog's tokens would save (issue 16, item 5).

    python benchmarks/head_share.py [--data PATH] [--batches 5] [--batch-size 32]

Real multispan SFT examples (train queries -> title spans, as ``MultispanRetriever.examples``
makes them) on the packaged MiniLM prefix-LM. Times, per optimiser-sized batch, forward +
backward of (a) the trunk (the 6 encoder layers over every position, LoRA-style: frozen
weights, so only activation gradients), (b) the output layer over the positions the loss
reads (what trl's fused LM head projects) with the full 30.5k-row vocabulary, its weight
gradient included (the tied marker/ID rows train), and (c) the same over only the tokens
that occur in catalog titles plus the genret specials (a restriction training does not have
yet: it would change the model, so it needs a dev check). Decoding: the multispan
constrained beam search over ``--queries`` test queries with ``restrict_head`` off and on
(exact: the same beams; the model is the untrained MiniLM prefix-LM, which sets the speed, not
the beams' quality), and the same for a semantic-ID trie of random 3 x 256 IDs. All times are process CPU seconds (this process only; robust on a
shared box).
Writes benchmarks/results/head_share.{json,md}.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from genret.data import load_dataset  # noqa: E402
from genret.decoding import TrieConstraint, constrained_beam_search  # noqa: E402
from genret.lexical import PROMPT, MultispanRetriever  # noqa: E402
from genret.semantic import PROMPT as SID_PROMPT  # noqa: E402
from semantic_id import PrefixTrie  # noqa: E402
from genret.minilm import from_minilm, minilm_tokenizer, PROMPT_ENDS  # noqa: E402


def cpu_time(fn, repeat: int) -> float:
    """Mean process CPU seconds of ``fn()`` over ``repeat`` runs (after one warm-up)."""
    fn()
    t0 = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - t0) / repeat


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--beams", type=int, default=20)
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/head_share")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    ds = load_dataset(args.data)
    tok = minilm_tokenizer()
    r = MultispanRetriever()
    r.tokenizer = tok
    r._setup_catalog(ds)
    examples = r.examples(ds, np.random.default_rng(0))
    keep = sorted({t for ids in r.title_ids for t in ids} | set(tok.all_special_ids))
    model = from_minilm(tok.convert_tokens_to_ids(PROMPT_ENDS), len(tok))
    for p in model.parameters():
        p.requires_grad_(False)
    model.bert.embeddings.LayerNorm.weight.requires_grad_(True)
    # the head's weight gets a gradient: under LoRA its marker/ID rows train (peft's trainable
    # tokens, tied to the embedding), and autograd forms the full weight gradient for them
    W, b = model.lm_head.weight.detach().clone().requires_grad_(True), model.lm_head.bias.detach()
    Wk, bk = W.detach()[keep].clone().requires_grad_(True), b[keep].clone()
    eos = tok.eos_token_id

    rows = {"trunk": [], "head_full": [], "head_catalog": []}
    n_tok = n_lab = 0
    for i in range(args.batches):
        batch = examples[i * args.batch_size:(i + 1) * args.batch_size]
        seqs = [list(p) + list(c) + [eos] for p, c in batch]
        L = max(map(len, seqs))
        ids = torch.tensor([s + [0] * (L - len(s)) for s in seqs])
        att = torch.tensor([[1] * len(s) + [0] * (L - len(s)) for s in seqs])
        lab = torch.tensor([[1 if len(p) <= j < len(s) else 0 for j in range(L)]
                            for (p, _), s in zip(batch, seqs)], dtype=torch.bool)
        n_tok += int(att.sum())
        n_lab += int(lab.sum())

        def trunk():  # the embedding LayerNorm trainable: activation gradients through all layers
            model.bert(input_ids=ids, attention_mask=att).last_hidden_state.sum().backward()

        h = model.bert(input_ids=ids, attention_mask=att).last_hidden_state.detach()
        hl = h[lab]
        targets = ids[lab]

        def head(weight, bias, tgt):
            x = hl.clone().requires_grad_(True)
            F.cross_entropy(F.linear(x, weight, bias), tgt).backward()

        remap = torch.full((len(tok),), -1, dtype=torch.long)
        remap[torch.tensor(keep)] = torch.arange(len(keep))
        rows["trunk"].append(cpu_time(trunk, 2))
        rows["head_full"].append(cpu_time(lambda: head(W, b, targets), 2))
        rows["head_catalog"].append(cpu_time(lambda: head(Wk, bk, remap[targets]), 2))

    # decoding: the multispan constrained beam search over test queries, full vs restricted head
    queries = [ds.queries[q] for q in ds.split("test")[:args.queries]]
    constrained_beam_search(model.eval(), tok, queries[:2], r.constraint, num_beams=args.beams,
                            max_new_tokens=r._max_new_tokens(), prompt=PROMPT)  # warm-up: numba kernels compile
    dec, hyps = {}, {}
    for name, restrict in (("full", False), ("restricted", True)):
        t0 = time.process_time()
        hyps[name] = constrained_beam_search(model.eval(), tok, queries, r.constraint, num_beams=args.beams,
                                             max_new_tokens=r._max_new_tokens(), prompt=PROMPT,
                                             batch_size=8, restrict_head=restrict)
        dec[name] = (time.process_time() - t0) / len(queries)
    # the semantic-ID channel's shape: random 3 x 256 IDs, one per product, in a trie whose 768
    # ID tokens sit on rows 1000.. of the vocabulary (speed only; a trained model adds its own rows)
    rng = np.random.default_rng(0)
    trie = PrefixTrie.build([np.append(1 + rng.integers(0, 256, 3) + 256 * np.arange(3), 0)
                             for _ in range(len(ds.catalog))])
    ids = TrieConstraint(trie, 999, eos)
    for name, restrict in (("sid_full", False), ("sid_restricted", True)):
        t0 = time.process_time()
        hyps[name] = constrained_beam_search(model, tok, queries, ids, num_beams=args.beams, max_new_tokens=4,
                                             prompt=SID_PROMPT, batch_size=8, restrict_head=restrict)
        dec[name] = (time.process_time() - t0) / len(queries)

    def agree(a, b):
        same = [[h.tokens for h in x] == [h.tokens for h in y] for x, y in zip(hyps[a], hyps[b])]
        gap = max((abs(u.score - v.score) for x, y in zip(hyps[a], hyps[b]) for u, v in zip(x, y)), default=0.0)
        return float(np.mean(same)), gap

    (same, gap), (sid_same, sid_gap) = agree("full", "restricted"), agree("sid_full", "sid_restricted")

    train = {k: float(np.sum(v)) for k, v in rows.items()}
    res = {"examples": len(examples), "vocab": len(tok), "catalog_vocab": len(keep),
           "batches": args.batches, "batch_size": args.batch_size, "threads": args.threads,
           "tokens_per_batch": n_tok / args.batches, "loss_positions_per_batch": n_lab / args.batches,
           "train_cpu_s": train,
           "train_head_share": train["head_full"] / (train["trunk"] + train["head_full"]),
           "train_speedup_if_restricted": (train["trunk"] + train["head_full"]) / (train["trunk"] + train["head_catalog"]),
           "decode_queries": len(queries), "decode_beams": args.beams, "decode_cpu_s_per_query": dec,
           "decode_speedup": dec["full"] / dec["restricted"], "decode_same_beams": same,
           "decode_max_score_gap": gap, "sid_decode_speedup": dec["sid_full"] / dec["sid_restricted"],
           "sid_decode_same_beams": sid_same, "sid_decode_max_score_gap": sid_gap}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    md = (f"Output layer vs trunk, MiniLM multispan ({res['vocab']} rows; catalog tokens + specials: "
          f"{res['catalog_vocab']}), process CPU s, {args.threads} thread(s)\n\n"
          "| SFT step | trunk | head (full) | head (catalog) | head share | speed-up if restricted |\n|---|---|---|---|---|---|\n"
          f"| SFT, {args.batches} batches of {args.batch_size} ({res['tokens_per_batch']:.0f} tokens, "
          f"{res['loss_positions_per_batch']:.0f} loss positions each) | {train['trunk']:.2f} | {train['head_full']:.2f} | "
          f"{train['head_catalog']:.2f} | {res['train_head_share']:.2f} | {res['train_speedup_if_restricted']:.2f}x |\n"
          f"\nDecoding ({len(queries)} test queries, {args.beams} beams, `constrained_beam_search` with the "
          f"multispan FM-index constraint; `restrict_head` off / on): {dec['full']:.3f} / {dec['restricted']:.3f} "
          f"CPU s per query ({res['decode_speedup']:.2f}x); the same beams for {res['decode_same_beams']:.0%} of "
          f"the queries, largest score gap {gap:.1e}. Semantic-ID shape (random 3 x 256 IDs per product, 768 ID "
          f"tokens + EOS): {dec['sid_full']:.3f} / {dec['sid_restricted']:.3f} CPU s per query "
          f"({res['sid_decode_speedup']:.2f}x); the same beams for {sid_same:.0%}, largest score gap {sid_gap:.1e}.\n")
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
