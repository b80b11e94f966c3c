#!/usr/bin/env bash
# Every GPU check in one run, for a lent single-GPU machine with a fixed time budget. Each part has its own time
# limit so one failure cannot starve the rest, and everything lands in ${OUT:-gpu-out} after every part.
#
#   bash benchmarks/gpu_prepare.sh                                   # here, first: wheels and the corpus to carry
#   BUDGET=540 bash benchmarks/gpu_checks.sh                         # there, carrying .whl and .corpus
#   BUDGET=560 PARTS=jukebox bash benchmarks/gpu_checks.sh           # on a 15-minute lease: two calls, this first,
#   BUDGET=200 PARTS=instruct bash benchmarks/gpu_checks.sh          # then this at once (the machine stays warm 30 s)
#   BUDGET=390 bash benchmarks/gpu_checks.sh                         # the default parts, then smol at once:
#   BUDGET=570 PARTS=smol bash benchmarks/gpu_checks.sh              # SmolLM2's stages (SMOL=1 gpu_prepare.sh; this
#                                                                    # call carries .smol/b, the one before .smol/a)
#   BUDGET=540 PARTS=grok bash benchmarks/gpu_checks.sh              # the grokking checks alone
#   DEVICE=cpu SMALL=1 BUDGET=2000 JUKEBOX_FIXED_S=1300 PY=/tmp/gpuenv/bin/python bash benchmarks/gpu_checks.sh
#       # a rehearsal of every part on the CPU (26 minutes on 2 cores) in a venv that holds only what the lent
#       # machine has: pip install torch numpy safetensors matplotlib tqdm tokenizers transformers
#       # (PYVER=3.11 bash benchmarks/gpu_prepare.sh first, for that venv's Python)
#
# BUDGET: seconds the whole script may take (the last training of each part is sized to end inside it).
# PARTS:  which checks to run, any of "grok muse jukebox jukebox-speed instruct smol" (default "jukebox-speed instruct":
#         three minutes, then smol in a second call). jukebox-speed is the speed table at the gpu preset's sizes (speed
#         does not depend on the weights), apart from the jukebox part so that its training cannot starve it.
# CORPUS: the music21 corpus: .corpus/music21-small when gpu_prepare.sh made it, else music21-small (converted
#         here: music21 must be installed), or any note table that `nexttoken muse prepare` printed.
# SMALL:  1 shrinks the data and the sampled seconds so that a rehearsal on the CPU runs every step in minutes.
# What comes back: gpu-checks.tar.gz (logs, benchmark JSON, the runs without their weights, samples, plots and
# reports) and the MuseNet weights in bf16 parts (benchmarks/run_weights.py unpack joins them).
set -u
T0=$SECONDS
BUDGET=${BUDGET:-900}
[ -d .corpus/music21-small ] && CORPUS=${CORPUS:-.corpus/music21-small}
CORPUS=${CORPUS:-music21-small}
PARTS=" ${PARTS:-jukebox-speed instruct} "
DEVICE=${DEVICE:-cuda}
SMALL=${SMALL:-0}
OUT=${OUT:-gpu-out}
WORK=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export NEXTTOKEN_CACHE=${NEXTTOKEN_CACHE:-$WORK/cache}  # a rehearsal renders afresh, as a bare machine does
PY=${PY:-python3}
if ls .whl/*.whl > /dev/null 2>&1; then  # what gpu_prepare.sh downloaded for a machine without a package index
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .whl/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi
left() { echo $((BUDGET - (SECONDS - T0))); }
touch "$WORK/.start"
pack() {  # whatever finished comes back even if a later part runs past the call's limit
  find benchmarks/results -name '*.json' -newer "$WORK/.start" -exec cp {} "$WORK/" \; 2>/dev/null  # this call's
  tar czf "$OUT/gpu-checks.tar.gz" --exclude='*.safetensors' --exclude='*.gguf' --exclude=checkpoints --exclude=cache \
    --exclude=site -C "$WORK" . 2>/dev/null
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
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() \
else 'no GPU')"

# Grokking: where the step's time goes, then the targets (one x/y run under 1 s, a 128-run sweep under a minute).
# bf16 made no step cheaper on an H200 (docs/grok-h200/runs.txt), so these run in fp32.
if [[ $PARTS == *" grok "* ]]; then
  part grok_profile 60 $PY benchmarks/grok_profile.py --presets modern --sizes 1,32,128 --steps 20
  part grok_sweep 150 $PY benchmarks/grok_speed.py --presets "" --sweep 128 --sweep-out "$WORK/grok-sweep"
  part grok_speed 120 $PY benchmarks/grok_speed.py --seeds 3 --skip-grokfast
fi
# Jukebox's speed table (encode, decode, sampling per level) at the gpu preset's sizes with random weights, as its
# own part; the jukebox part below then skips its own.
SPEED=1
if [[ $PARTS == *" jukebox-speed "* ]]; then
  SPEED=0
  speed=(--seconds 4 --parallel 32)
  [ "$SMALL" = 1 ] && speed=(--seconds 0.5 --codec-seconds 2 --parallel 4)
  part jukebox_speed 180 $PY benchmarks/jukebox_speed.py --device "$DEVICE" --preset gpu --no-uncached "${speed[@]}"
fi
# Jukebox: benchmarks/jukebox_gpu.sh (the paper-layout VQ-VAE and its no-restarts ablation, the three priors, sampling
# through all three levels, evaluate and the speed table), in what the budget leaves after the instruct part's
# reserve. Its fixed steps (prepare, sampling, evaluate, the speed table unless timed above, report) take about
# JUKEBOX_FIXED_S. The GPU claims are about the VQ-VAE (reconstruction, code usage, the ablation) and the speed of
# sampling, which needs priors of GPU size but not well-trained ones: the two VQ-VAEs and the EnCodec-architecture
# baseline that evaluate trains for as many steps get 28% of the rest each, the three priors 5% each.
INSTRUCT_S=0
[[ $PARTS == *" instruct "* ]] && INSTRUCT_S=210
if [[ $PARTS == *" jukebox "* ]]; then
  JUKEBOX_S=$(( $(left) - INSTRUCT_S - 10 ))
  TRAIN_S=$(( JUKEBOX_S - ${JUKEBOX_FIXED_S:-240} ))
  small=()
  [ "$SMALL" = 1 ] && small=(PIECES=2 LINES=20 SAMPLE_SECONDS=1 SPEED_SECONDS=1 VQ_BATCH=4 PRIOR_BATCH=4 EVAL_CLIPS=1)
  part jukebox "$JUKEBOX_S" env ${small[@]+"${small[@]}"} PY="$PY" DEVICE="$DEVICE" AUDIO="$CORPUS" SPEED="$SPEED" \
    OUT="$WORK/jukebox/run" VQ_MINUTES="$(awk "BEGIN { print $TRAIN_S * 0.28 / 60 }")" \
    PRIOR_MINUTES="$(awk "BEGIN { print $TRAIN_S * 0.05 / 60 }")" bash benchmarks/jukebox_gpu.sh
fi

# Instruct: PPO episodes per second with and without the KV cache, and the whole pipeline at the demo size, stage by
# stage (what sizes a GPU preset to the time a machine is lent for).
if [[ $PARTS == *" instruct "* ]]; then
  part instruct_ppo_speed 90 $PY benchmarks/instruct_ppo_speed.py --device "$DEVICE" --iterations 3
  part instruct_pipeline 120 $PY benchmarks/instruct_pipeline.py --preset demo --device "$DEVICE" \
    --out "$WORK/instruct-demo"
fi
# SmolLM2-135M-Instruct through SFT, rankings, a reward model and PPO (benchmarks/instruct_smol.sh) at twice the CPU
# run's steps with 4x its batches, from the two halves of its GGUF that gpu_prepare.sh cut and two calls carried.
if [[ $PARTS == *" smol "* ]]; then
  if cat .smol/a/* .smol/b/* > "$WORK/smol.gguf" 2>/dev/null; then
    smol=(SCALE=2 BATCH=4)
    [ "$SMALL" = 1 ] && smol=(SCALE=0.05 BATCH=1)
    part smol $(( $(left) - 10 )) env "${smol[@]}" N="$PY -m nexttoken" INIT="$WORK/smol.gguf" DEVICE="$DEVICE" \
      bash benchmarks/instruct_smol.sh "$WORK/smol"
    rm -f "$WORK/smol.gguf"
  else
    echo "=== smol: skipped, .smol/a and .smol/b are not both here (SMOL=1 bash benchmarks/gpu_prepare.sh) ==="
  fi
fi
[[ $PARTS == *" muse "* ]] || { pack; ls -la "$OUT"; echo "total $((SECONDS - T0))s"; exit 0; }

# MuseNet at GPU size: 29M parameters (7 layers x 512: its bf16 weights fit the 64 MiB a lent machine returns), a
# 2048-token context, the corpus (CORPUS=music21: all of it), trained for the time that is left less what evaluation
# and sampling need.
RUN="$WORK/muse"
part muse_prepare 240 $PY -m nexttoken muse prepare --corpus "$CORPUS" --jobs "$(nproc)"
TRAIN_S=$(( $(left) - 100 ))  # what is left, less ~30 s around training and ~70 s for the weights and samples
part muse_train $(( TRAIN_S + 60 )) $PY -m nexttoken muse train --corpus "$CORPUS" --device "$DEVICE" \
  --precision bf16 --n-layer 7 --n-head 8 --n-embd 512 --context 2048 --dropout 0.1 --steps 20000 \
  --max-minutes "$(awk "BEGIN { print $TRAIN_S / 60 }")" --batch-size 32 --lr 6e-4 --warmup 100 \
  --eval-every 250 --ckpt-every 250 --val-pieces 200 --out "$RUN"
part muse_weights 20 $PY benchmarks/run_weights.py pack "$RUN" "$OUT" --max-mib 15
for composer in bach mozart; do  # then, while time is left: samples, evaluation, sampling speed
  part "muse_generate_$composer" 25 $PY -m nexttoken muse generate "$RUN" --device "$DEVICE" --composer "$composer" \
    --instruments piano --seconds 30 --n 4 --top-p 0.95 --out "$RUN/samples-$composer"
done
part muse_evaluate 100 $PY -m nexttoken muse evaluate "$RUN" --device "$DEVICE" --n-per-composer 4 --jobs "$(nproc)"
part muse_sampling 30 $PY benchmarks/muse_sampling.py --device "$DEVICE"
cat "$RUN/summary.json" 2>/dev/null
pack
ls -la "$OUT"
echo "total $((SECONDS - T0))s"
