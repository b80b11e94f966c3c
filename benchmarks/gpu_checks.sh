#!/usr/bin/env bash
# Every GPU check in one run, for a lent single-GPU machine with a fixed time budget: the grokking speed targets first,
# then MuseNet at GPU size, trained for whatever time is left. Each part has its own time limit so one failure cannot
# starve the rest, and everything lands in ${OUT:-gpu-out} after every part.
#
#   BUDGET=540 CORPUS=.corpus/music21 bash benchmarks/gpu_checks.sh
#   BUDGET=540 PARTS=grok bash benchmarks/gpu_checks.sh       # the grokking checks alone
#
# BUDGET: seconds the whole script may take (the MuseNet run is sized to end inside it).
# PARTS:  which checks to run: "grok muse" (default), "grok" or "muse".
# CORPUS: the MuseNet corpus: music21 (converted here first: about 3 minutes on 16 cores), or a note table that
#         `nexttoken muse prepare --corpus music21` printed on another machine, copied along.
# What comes back: gpu-checks.tar.gz (logs, benchmark JSON, the MuseNet run without its checkpoint, samples as MIDI
# and piano rolls) and the MuseNet weights in bf16 parts (benchmarks/run_weights.py unpack joins them).
set -u
T0=$SECONDS
BUDGET=${BUDGET:-900}
CORPUS=${CORPUS:-music21}
PARTS=" ${PARTS:-grok muse} "
OUT=${OUT:-gpu-out}
WORK=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PY:-python3}
left() { echo $((BUDGET - (SECONDS - T0))); }
pack() {  # whatever finished comes back even if a later part runs past the call's limit
  cp benchmarks/results/*.json "$WORK/" 2>/dev/null
  tar czf "$OUT/gpu-checks.tar.gz" --exclude=checkpoint.safetensors --exclude=checkpoints -C "$WORK" . 2>/dev/null
}
part() {  # part NAME SECONDS COMMAND...: skipped when less time is left than it needs
  local name=$1 limit=$2; shift 2
  if [ "$(left)" -lt "$limit" ]; then echo "=== $name: skipped, $(left)s left ==="; return; fi
  echo "=== $name (limit ${limit}s, $(left)s left) ==="
  local t0=$SECONDS
  timeout "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  tail -n 14 "$WORK/$name.log"
  echo "=== $name: rc=$rc in $((SECONDS - t0))s ==="
  pack
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

# Grokking: where the step's time goes, then the targets (one x/y run under 1 s, a 128-run sweep under a minute).
# bf16 made no step cheaper on an H200 (docs/grok-h200/runs.txt), so these run in fp32.
if [[ $PARTS == *" grok "* ]]; then
  part grok_profile 60 $PY benchmarks/grok_profile.py --presets modern --sizes 1,32,128 --steps 20
  part grok_sweep 150 $PY benchmarks/grok_speed.py --presets "" --sweep 128 --sweep-out "$WORK/grok-sweep"
  part grok_speed 120 $PY benchmarks/grok_speed.py --seeds 3 --skip-grokfast
fi
[[ $PARTS == *" muse "* ]] || { pack; ls -la "$OUT"; echo "total $((SECONDS - T0))s"; exit 0; }

# MuseNet at GPU size: 29M parameters (7 layers x 512: its bf16 weights fit the 64 MiB a lent machine returns), a
# 2048-token context, the whole music21 corpus, trained for
# the time that is left less what evaluation and sampling need.
RUN="$WORK/muse"
part muse_prepare 240 $PY -m nexttoken muse prepare --corpus "$CORPUS" --jobs "$(nproc)"
TRAIN_S=$(( $(left) - 100 ))  # what is left, less ~30 s around training and ~70 s for the weights and samples
part muse_train $(( TRAIN_S + 60 )) $PY -m nexttoken muse train --corpus "$CORPUS" --device cuda \
  --precision bf16 --n-layer 7 --n-head 8 --n-embd 512 --context 2048 --dropout 0.1 --steps 20000 \
  --max-minutes "$(awk "BEGIN { print $TRAIN_S / 60 }")" --batch-size 32 --lr 6e-4 --warmup 100 \
  --eval-every 250 --ckpt-every 250 --val-pieces 200 --out "$RUN"
part muse_weights 20 $PY benchmarks/run_weights.py pack "$RUN" "$OUT" --max-mib 15
for composer in bach mozart; do  # then, while time is left: samples, evaluation, sampling speed
  part "muse_generate_$composer" 25 $PY -m nexttoken muse generate "$RUN" --device cuda --composer "$composer" \
    --instruments piano --seconds 30 --n 4 --top-p 0.95 --out "$RUN/samples-$composer"
done
part muse_evaluate 100 $PY -m nexttoken muse evaluate "$RUN" --device cuda --n-per-composer 4 --jobs "$(nproc)"
part muse_sampling 30 $PY benchmarks/muse_sampling.py --device cuda
cat "$RUN/summary.json" 2>/dev/null
pack
ls -la "$OUT"
echo "total $((SECONDS - T0))s"
