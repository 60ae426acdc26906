"""Constrained vs unconstrained beam search, side by side: what the constraint costs.

    python benchmarks/decode_bench.py [--backbone DIR] [--queries 32] [--beams 5,20,50] [--batches 1,8,32]

For the multispan channel (FM-index over the Home Depot titles) and the semantic-ID
channel (a prefix trie of 3 x 256 IDs, one per product), every beams x batch setting runs
the same test-split prompts twice through a stock ``model.generate``: once with the
channel's ``ConstraintLogitsProcessor``, once unconstrained with ``min_new_tokens =
max_new_tokens =`` the number of steps the constrained batch took (the same steps, the
same shapes). Time is split into model forward (a hook on the model), constraint (inside
the processor: allowed sets, mask, renormalisation) and product scoring (multispan:
``span_weights`` + ``score_products``; semantic IDs: trie item lookup).
All times are process time (CPU seconds of this process: on a shared, loaded box far less
exposed to other jobs than wall time, which is recorded too). ``constraint_overhead`` =
constrained / unconstrained generate time - 1 (``constraint_overhead_wall``: the same in
wall time);
``constraint_overhead_in_run`` = the processor's time / the rest of the same constrained
run (the same estimate from one run, so less exposed to a shared box's load swings).

Model: ``--backbone`` (a saved genret backbone) or, by default, the embedded *small*
preset (Qwen2, 4 layers, hidden 256; ~6M parameters) with a 12k BPE vocabulary trained
on the catalog and **random weights**: speed does not depend on training, the spans the
beams take do (a trained model's beams follow real titles further). The semantic-ID
channel adds 768 ID tokens to that model; its IDs are random (speed only).
Writes benchmarks/results/decode.{json,md,png}.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fm_index import FMIndex  # noqa: E402
from genret.backbone import (encode_title, get_preset, load_backbone, model_config, special_ids,  # noqa: E402
                             train_tokenizer, training_texts, word_starts)
from genret.data import load_dataset  # noqa: E402
from genret.decoding import (ConstraintLogitsProcessor, FMIndexSpanConstraint, Hypothesis,  # noqa: E402
                             TrieConstraint)
from genret.lexical import PROMPT as SPAN_PROMPT  # noqa: E402
from genret.lexical import score_products, span_weights  # noqa: E402
from semantic_id import PrefixTrie  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SID_PROMPT = "<|query|> {query}<|id|>"  # genret.semantic.PROMPT
LEVELS, CODES = 3, 256
TARGETS = {"constraint_overhead_20x8": 0.10, "scoring_share": 0.10}


def small_random_model(ds, extra_tokens):
    """The small preset's tokenizer (trained on the catalog texts) and a random-weight model."""
    from transformers import GenerationConfig, Qwen2ForCausalLM

    cfg = get_preset("small")
    titles, queries = training_texts(ds, cfg, 0)
    tok = train_tokenizer(titles + queries, cfg.vocab_size, cfg.min_frequency)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(model_config(cfg, len(tok) + extra_tokens, tok.eos_token_id)).eval()
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    return model, tok, "small preset, random weights"


class ForwardTimer:
    """Process time spent in the model's forward (hooks around every call)."""

    def __init__(self, model):
        self.seconds, self._t = 0.0, None
        model.register_forward_pre_hook(lambda *_: setattr(self, "_t", time.process_time()))
        model.register_forward_hook(lambda *_: setattr(self, "seconds", self.seconds + time.process_time() - self._t))


def generate(model, enc, beams, steps, proc=None):
    """One stock ``model.generate``; unconstrained runs are forced to exactly ``steps`` steps."""
    kw = dict(num_beams=beams, num_return_sequences=beams, do_sample=False, length_penalty=0.0,
              early_stopping=True, output_scores=True, return_dict_in_generate=True)
    if proc is None:
        kw.update(max_new_tokens=steps, min_new_tokens=steps)
    else:
        from transformers import LogitsProcessorList

        kw.update(max_new_tokens=steps, logits_processor=LogitsProcessorList([proc]))
    with torch.no_grad():
        return model.generate(**enc, **kw)


def run_setting(model, tok, timer, prompts, constraint, beams, batch, max_new, score, repeats):
    """ms/query (process time, and wall time of generate) of constrained and unconstrained
    generate and their parts for one setting: per batch, the two alternate ``repeats`` times
    and the fastest run of each counts."""
    eos = tok.eos_token_id
    c = {"generate": 0.0, "forward": 0.0, "constraint": 0.0, "scoring": 0.0, "wall": 0.0}
    u = {"generate": 0.0, "forward": 0.0, "wall": 0.0}
    steps = 0

    def timed(fn):
        f0, c0, t0 = timer.seconds, time.process_time(), time.perf_counter()
        out = fn()
        return out, {"generate": time.process_time() - c0, "forward": timer.seconds - f0,
                     "wall": time.perf_counter() - t0}

    for i in range(0, len(prompts), batch):
        enc = tok(prompts[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        plen = enc["input_ids"].shape[1]
        runs_c, runs_u = [], []
        for _ in range(repeats):
            proc = ConstraintLogitsProcessor(constraint, fallback_id=eos, pad_id=tok.pad_token_id)
            out, run = timed(lambda: generate(model, enc, beams, max_new, proc))
            c0 = time.process_time()
            score(out.sequences[:, plen:].tolist(), out.sequences_scores.tolist(), beams)
            runs_c.append({**run, "constraint": proc.cpu_seconds, "scoring": time.process_time() - c0})
            runs_u.append(timed(lambda: generate(model, enc, beams, proc.steps))[1])
        steps += proc.steps
        best_c, best_u = min(runs_c, key=lambda r: r["generate"]), min(runs_u, key=lambda r: r["generate"])
        best_c["scoring"] = min(r["scoring"] for r in runs_c)
        best_c["wall"], best_u["wall"] = min(r["wall"] for r in runs_c), min(r["wall"] for r in runs_u)
        for k in c:
            c[k] += best_c[k]
        for k in u:
            u[k] += best_u[k]
    n = len(prompts)
    res = {"queries": n, "repeats": repeats, "steps_per_batch": steps / -(-n // batch),
           "constrained_ms": {k: 1000 * v / n for k, v in c.items()},
           "unconstrained_ms": {k: 1000 * v / n for k, v in u.items()}}
    res["constraint_overhead"] = c["generate"] / u["generate"] - 1
    res["constraint_overhead_wall"] = c["wall"] / u["wall"] - 1
    res["constraint_overhead_in_run"] = c["constraint"] / (c["generate"] - c["constraint"])
    res["scoring_share"] = c["scoring"] / (c["generate"] + c["scoring"])
    return res


def hypotheses(seqs, scores, beams, eos, pad):
    """Beams per query, as ``constrained_beam_search`` returns them (text left out)."""
    out = []
    for b in range(len(seqs) // beams):
        hs = []
        for j in range(b * beams, (b + 1) * beams):
            toks = [t for t in seqs[j] if t not in (eos, pad)]
            if toks:
                hs.append(Hypothesis(toks, "", scores[j]))
        out.append(hs)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--backbone", help="a saved genret backbone (default: the small preset, random weights)")
    ap.add_argument("--queries", type=int, default=32, help="test prompts per setting")
    ap.add_argument("--beams", default="5,20,50")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--max-new-tokens", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3, help="runs per batch and mode; the fastest counts")
    ap.add_argument("--channels", default="multispan,semantic-id")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    beams_list = [int(x) for x in args.beams.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    load_start = os.getloadavg()

    ds = load_dataset(args.data)
    n_ids = LEVELS * CODES
    if args.backbone:
        model, tok = load_backbone(args.backbone)
        model.resize_token_embeddings(len(tok) + n_ids)
        model_name = f"backbone {args.backbone}"
    else:
        model, tok, model_name = small_random_model(ds, n_ids)
    tok.padding_side = "left"
    model.eval()
    timer = ForwardTimer(model)
    sp = special_ids(tok)
    qids = ds.split("test")[: args.queries]
    queries = [ds.queries[q] for q in qids]

    channels = {}
    if "multispan" in args.channels:
        titles = [encode_title(tok, t) for t in ds.titles]
        index = FMIndex.build(titles, vocab_size=len(tok))
        starts = np.concatenate([[0], np.cumsum([len(t) for t in titles])])
        con = FMIndexSpanConstraint(index, sp.sep, sp.eos, word_starts(tok, np.arange(len(tok))), 8, 3)

        def score_spans(seqs, scores, beams):
            for hs in hypotheses(seqs, scores, beams, sp.eos, sp.pad):
                score_products(index, span_weights(hs, con, index.n_tokens), starts)

        channels["multispan"] = ([SPAN_PROMPT.format(query=q) for q in queries], con, score_spans)
    if "semantic-id" in args.channels:
        rng = np.random.default_rng(0)
        codes = rng.integers(0, CODES, (len(ds.titles), LEVELS)) + np.arange(LEVELS) * CODES + 1
        trie = PrefixTrie.build([np.append(c, 0) for c in codes])
        tcon = TrieConstraint(trie, len(tok) - 1, sp.eos)  # ID token t -> len(tok) - 1 + t

        def score_ids(seqs, scores, beams):
            for hs in hypotheses(seqs, scores, beams, sp.eos, sp.pad):
                [tcon.items(h.tokens) for h in hs]

        channels["semantic-id"] = ([SID_PROMPT.format(query=q) for q in queries], tcon, score_ids)

    # warm-up: numba kernels, torch
    for prompts, con, score in channels.values():
        run_setting(model, tok, timer, prompts[:2], con, 2, 2, 3, score, 1)
    rows = []
    for name, (prompts, con, score) in channels.items():
        for beams in beams_list:
            for batch in batches:
                r = run_setting(model, tok, timer, prompts, con, beams, batch, args.max_new_tokens, score,
                                args.repeats)
                rows.append({"channel": name, "beams": beams, "batch": batch, **r})
                print(json.dumps(rows[-1]), flush=True)
    result = {
        "model": model_name, "n_params": sum(p.numel() for p in model.parameters()),
        "vocab": model.config.vocab_size, "max_new_tokens": args.max_new_tokens,
        "torch_threads": torch.get_num_threads(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "catalog": len(ds.titles), "targets": TARGETS, "rows": rows,
        "constraint_overhead": {f"{r['channel']}/beams{r['beams']}/batch{r['batch']}": r["constraint_overhead"]
                                for r in rows},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode.json").write_text(json.dumps(result, indent=2) + "\n")
    md = report(result)
    (args.out / "decode.md").write_text(md)
    plot(result, args.out / "decode.png")
    print(md)


def report(r):
    m = r["machine"]
    lines = [
        "# Constrained decoding: what the constraint costs", "",
        f"Model: {r['model']} ({r['n_params'] / 1e6:.2f}M parameters, vocabulary {r['vocab']:,}), "
        f"CPU, {r['torch_threads']} torch threads; catalog {r['catalog']:,} products; "
        f"max {r['max_new_tokens']} new tokens; `python benchmarks/decode_bench.py`.",
        f"Machine: {m['cpus']} CPUs shared with other jobs (load average {m['loadavg_start'][0]:.1f} at start, "
        f"{m['loadavg_end'][0]:.1f} at end). Constrained and unconstrained runs alternate batch by batch "
        f"(same prompts, same number of steps), "
        f"{r['rows'][0]['repeats']} times per batch; the fastest run of each counts.", "",
        "CPU ms per query (process time; one torch thread). Constrained = generate with the constraint "
        "(forward | constraint | rest is HF's beam search); unconstrained = the same steps without it; overhead = constrained / unconstrained - 1; "
        "in-run overhead = constraint / (constrained - constraint), from the same run; wall overhead = "
        "the overhead in wall time (exposed to the box's load); scoring = products "
        "from the beams, its share = scoring / (constrained + scoring).", "",
        "| channel | beams | batch | steps | constrained | forward | constraint | unconstrained | "
        "overhead | in-run overhead | wall overhead | scoring | scoring share |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["rows"]:
        c, u = x["constrained_ms"], x["unconstrained_ms"]
        lines.append(f"| {x['channel']} | {x['beams']} | {x['batch']} | {x['steps_per_batch']:.1f} | "
                     f"{c['generate']:.1f} | {c['forward']:.1f} | {c['constraint']:.1f} | {u['generate']:.1f} | "
                     f"{100 * x['constraint_overhead']:+.1f}% | {100 * x['constraint_overhead_in_run']:.1f}% | "
                     f"{100 * x['constraint_overhead_wall']:+.1f}% | "
                     f"{c['scoring']:.2f} | {100 * x['scoring_share']:.1f}% |")
    t = r["targets"]
    lines += ["", f"Targets: constraint overhead <= {100 * t['constraint_overhead_20x8']:.0f}% at 20 beams, batch 8 "
              f"(both channels); span scoring <= {100 * t['scoring_share']:.0f}% of a multispan query's time."]
    for x in r["rows"]:
        if x["beams"] == 20 and x["batch"] == 8:
            ok = x["constraint_overhead"] <= t["constraint_overhead_20x8"]
            lines.append(f"- {x['channel']}, 20 beams x batch 8: overhead {100 * x['constraint_overhead']:+.1f}% "
                         f"({'met' if ok else 'missed'}; in-run estimate "
                         f"{100 * x['constraint_overhead_in_run']:.1f}%)" + (
                             f"; scoring share {100 * x['scoring_share']:.1f}% "
                             f"({'met' if x['scoring_share'] <= t['scoring_share'] else 'missed'})"
                             if x["channel"] == "multispan" else ""))
    return "\n".join(lines) + "\n"


def plot(r, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chans = sorted({x["channel"] for x in r["rows"]})
    fig, axes = plt.subplots(1, len(chans), figsize=(6 * len(chans), 4), squeeze=False)
    for ax, ch in zip(axes[0], chans):
        rows = [x for x in r["rows"] if x["channel"] == ch]
        labels = [f"{x['beams']}x{x['batch']}" for x in rows]
        c = np.array([[x["constrained_ms"]["forward"], x["constrained_ms"]["constraint"],
                       x["constrained_ms"]["generate"] - x["constrained_ms"]["forward"]
                       - x["constrained_ms"]["constraint"], x["constrained_ms"]["scoring"]] for x in rows])
        pos = np.arange(len(rows))
        bottom = np.zeros(len(rows))
        for k, name in enumerate(["forward", "constraint", "beam search (HF)", "scoring"]):
            ax.bar(pos - 0.2, c[:, k], 0.4, bottom=bottom, label=name)
            bottom += c[:, k]
        ax.bar(pos + 0.2, [x["unconstrained_ms"]["generate"] for x in rows], 0.4, color="grey",
               label="unconstrained")
        ax.set_xticks(pos, labels, rotation=45)
        ax.set_xlabel("beams x batch")
        ax.set_ylabel("ms / query")
        ax.set_title(ch)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
