#!/usr/bin/env bash
# The full Home Depot comparison (experiments/homedepot.yaml -> results/homedepot), as steps
# that each skip what is already there and resume what was interrupted, so the ~14 CPU hours
# can span sessions. Two lanes that can run side by side (one thread each on 2 cores):
#   OMP_NUM_THREADS=1 experiments/homedepot.sh models   # the saved models the yaml loads
#   OMP_NUM_THREADS=1 experiments/homedepot.sh minilm   # the MiniLM generative rows, part by part
# then, once both are done:
#   experiments/homedepot.sh table                      # every row (the finished ones reused)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE  # two torch processes on two cores (see the brief)
BIN=${BIN:-.venv/bin}
CONFIG=experiments/homedepot.yaml
OUT=${OUT:-results/homedepot}
SID=results/semantic/hd-3x256

step() {  # step DONE-PATH CMD...: run CMD unless DONE-PATH exists
  local done=$1; shift
  if [ -e "$done" ]; then echo "== have $done"; return; fi
  echo "== $(date +%H:%M) $*"
  "$@"
}

part() {  # part ROW,ROW: compare only these rows (the ones run before are reused)
  echo "== $(date +%H:%M) compare --only $1"
  "$BIN/genret" compare --config "$CONFIG" --out "$OUT" --resume --only "$1"
}

models() {
  step "$SID-none/manifest.json" "$BIN/genret" sid build --out "$SID-none"
  step results/sparse/prosper-minilm/model/manifest.json \
    "$BIN/python" experiments/sparse_homedepot.py prosper-minilm --out results/sparse/prosper-minilm \
    --set max_steps=400 batch_size=32
  step results/sparse/prosper/model/manifest.json \
    "$BIN/python" experiments/sparse_homedepot.py prosper --out results/sparse/prosper \
    --set preset=small max_steps=400 batch_size=32
  step results/lexical/models/gr-multispan-sft/manifest.json \
    "$BIN/genret" compare --config experiments/lexical_sft.yaml --out results/lexical --resume --only gr-multispan-sft
  step results/semantic-sft/models/gr-sid-sft/manifest.json \
    "$BIN/genret" compare --config experiments/semantic_sft.yaml --out results/semantic-sft --resume --only gr-sid-sft
  for v in drop adaptive; do
    step "$SID-$v/manifest.json" "$BIN/genret" sid build --prune "$v" --out "$SID-$v"
    step "results/semantic-sft/models/gr-sid-$v-sft/manifest.json" \
      "$BIN/genret" train --mode semantic-id --sid "$SID-$v" --preset small --full \
      --set train.epochs=1 --set train.batch_size=32 --set train.learning_rate=0.003 \
      --set num_beams=50 --out "results/semantic-sft/models/gr-sid-$v-sft"
  done
  step results/dense/model/manifest.json "$BIN/genret" train --mode dense --out results/dense/model --set threads=1
  step results/dense/model-ivf/manifest.json "$BIN/python" -c "from genret.retriever import load_retriever as L; \
L('results/dense/model').with_index('ivf', nprobe=256).save('results/dense/model-ivf')"
  step results/sparse/splade/model/manifest.json \
    "$BIN/python" experiments/sparse_homedepot.py splade --out results/sparse/splade \
    --set max_steps=200 batch_size=16
}

minilm() {
  local rows=bm25-stem,gr-multispan-minilm-sft,gr-multispan-minilm-dpo
  part "$rows"
  step "$SID-none/manifest.json" "$BIN/genret" sid build --out "$SID-none"  # the models lane's first step
  for more in gr-sid-minilm-sft,gr-sid-minilm-dpo gr-sid-minilm-drop-sft gr-sid-minilm-adaptive-sft; do
    rows="$rows,$more"
    part "$rows"
  done
}

case "${1:-}" in
  models) models ;;
  minilm) minilm ;;
  table) "$BIN/genret" compare --config "$CONFIG" --out "$OUT" --resume ;;
  *) echo "usage: $0 models|minilm|table" >&2; exit 2 ;;
esac
