#!/usr/bin/env bash
# What PPO can improve on (docs/instruct.md): PPO against the held-out labeler's own noiseless utility (the gold
# reward), from SFT models of the smallest base model trained on ideal demonstrations (--chatty 0) and on the default
# half-chatty ones, with InstructGPT's value head and with a leave-one-out baseline over 4 responses per prompt.
# Prints each model's utility, share of answers that ask back, checker score, and win rate against its SFT model.
#
#   bash benchmarks/instruct_gold_ppo.sh [PIPELINE] [OUT]     # defaults: runs/instruct-cpu runs/gold-ppo
#
# PIPELINE needs a finished pretrain-tiny (nexttoken instruct pipeline --preset cpu --stages pretrain-tiny). About
# 10 minutes on one CPU thread; a finished step is skipped when run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PIPELINE=${1:-runs/instruct-cpu}
OUT=${2:-runs/gold-ppo}
N=${N:-.venv/bin/nexttoken}
E="--cot-tasks 0 --heldout-pages 0 --tasks 360"
[ -f "$PIPELINE/pretrain-tiny/summary.json" ] || { echo "no finished $PIPELINE/pretrain-tiny" >&2; exit 2; }
for chatty in 0 0.5; do
  sft=$OUT/sft-tiny-chatty$chatty
  [ -f "$sft/summary.json" ] || $N instruct sft --init "$PIPELINE/pretrain-tiny" --chatty $chatty --steps 1000 \
      --out "$sft" >/dev/null
  echo "== demonstrations with --chatty $chatty"
  $N instruct evaluate "$sft" $E | head -1
  for group in 1 4; do
    ppo=$OUT/gold-ppo-chatty$chatty-group$group
    [ -f "$ppo/summary.json" ] || $N instruct ppo --init "$sft" --reward-model labeler --iterations 50 \
        --group $group --out "$ppo" >/dev/null
    $N instruct evaluate "$ppo" --reference "$sft" $E | head -2
  done
done
