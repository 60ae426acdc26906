"""Long-tail data synthesis (seed 000): a multi-candidate query rewriter, trained with
several rewards, whose rewrites are turned into curated (query, product) pairs by an
offline retrieval pipeline.

1. **Rewriter.** The backbone LM learns to rewrite by SFT on real pairs mined from the
   train split (query A -> query B when A and B share a relevant product), then samples
   N candidate rewrites per query.
2. **Rewards** (pure functions in :mod:`.rewards`): retrieval gain, incremental recall
   over the original query, relevance of what the rewrite retrieves, diversity among the
   N candidates and well-formedness, combined by :func:`combined_reward`. DPO on the
   (best, worst) candidates of training queries sharpens the rewriter.
3. **Offline pipeline** (:class:`Pipeline`): RRF of several channels (stemmed BM25 and
   zero-shot MiniLM by default) retrieves for every rewrite; :func:`filter_products`
   keeps a (original query, product) pair only when enough channels agree and the pair is
   not labelled yet.
4. **Distribution shift** between rewrites and real queries (:func:`shift_stats`).

:func:`synthesize` (:mod:`.pipeline`) writes ``pairs.tsv`` (what ``genret train
--extra-pairs`` reads), ``candidates.tsv``, ``report.json`` and ``synth.png``
atomically. See docs/synth.md.
"""

from .pipeline import (PAIR_COLUMNS, PROMPT, Candidate, Pipeline, SynthConfig, assess, dpo_pairs,
                       generate, pick_queries, plot, rewrite_pairs, synth_config, synthesize)
from .rewards import (REWARDS, agreement, combined_reward, diversity, filter_products,
                      incremental_recall, relevance, retrieval_gain, shift_stats, well_formed)

__all__ = ["PAIR_COLUMNS", "PROMPT", "REWARDS", "Candidate", "Pipeline", "SynthConfig",
           "agreement", "assess", "combined_reward", "diversity", "dpo_pairs", "filter_products",
           "generate", "incremental_recall", "pick_queries", "plot", "relevance",
           "retrieval_gain", "rewrite_pairs", "shift_stats", "synth_config", "synthesize",
           "well_formed"]
