#!/usr/bin/env bash
# Jukebox's GPU checks in one go, sized for about 8 minutes on one H100/H200-class GPU:
#
#   1. the paper's VQ-VAE layout (preset gpu: 22.05 kHz, widths 64/32/32, 8/4/4 residual blocks, 2048 x 64 codes)
#      trained for a time budget, and the same without restarts (the ablation): goal, bottom-level spectral
#      convergence of about -20 dB or better with over 90% of the codes in use, and clearly fewer without restarts;
#   2. the three priors at the gpu preset's sizes, each for a time budget;
#   3. sampling 10 s through all three levels, with each level's real-time factor: goal, the whole stack faster than
#      real time (Jukebox needed hours per 20 s on a V100). Decoding one code per step is bound by the step's kernel
#      launches, and the bottom level has 2,756 codes per second at 22.05 kHz, so the upsamplers sample 32 stretches
#      of the piece side by side (--parallel 32); the speed benchmark times one stretch too (4 s);
#   4. evaluate (the EnCodec-architecture codec at the bottom level's bitrate, bits per second, artist recognition,
#      lyrics alignment) and the speed benchmark.
#
#   bash benchmarks/jukebox_gpu.sh                   # PY=.venv/bin/python for the project's environment
#   VQ_MINUTES=3 PRIOR_MINUTES=1.5 bash benchmarks/jukebox_gpu.sh    # longer
#   AUDIO=.corpus/music21-small bash benchmarks/jukebox_gpu.sh     # a note table from `nexttoken muse prepare`
#   DEVICE=cpu PIECES=2 LINES=20 SAMPLE_SECONDS=1 SPEED_SECONDS=1 VQ_BATCH=4 PRIOR_BATCH=4 VQ_MINUTES=0.2 \
#       PRIOR_MINUTES=0.1 bash benchmarks/jukebox_gpu.sh
#                                                    # a rehearsal of every step on the CPU, in minutes
#
# The first run converts the music21 corpus subset to MIDI (music21 must be installed; a note table that
# `nexttoken muse prepare` printed on another machine needs nothing) and renders it at 22.05 kHz (a minute or two with
# every core; cached in $NEXTTOKEN_CACHE).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PY:-python3}
OUT=${OUT:-runs/jukebox-gpu-$(date +%Y%m%d-%H%M%S)}
VQ_MINUTES=${VQ_MINUTES:-1}          # each of the two VQ-VAEs
PRIOR_MINUTES=${PRIOR_MINUTES:-0.5}  # each of the three priors
JOBS=${JOBS:-$(nproc)}
DEVICE=${DEVICE:-cuda}
SAMPLE_SECONDS=${SAMPLE_SECONDS:-10}  # the three-level sample (integer)
SPEED_SECONDS=${SPEED_SECONDS:-4}    # what the speed table samples at each level
VQ_BATCH=${VQ_BATCH:-16}
PRIOR_BATCH=${PRIOR_BATCH:-32}      # the CPU's memory holds about 4
# the built-in synthesizer by default, as in docs/jukebox.md's CPU figures (a lent machine has no soundfont anyway)
DATA=(--audio "${AUDIO:-music21-small}" --soundfont "${SOUNDFONT:-synth}" --pieces "${PIECES:-40}" --piece-seconds 30
      --lyrics-lines "${LINES:-400}" --jobs "$JOBS")

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
time $PY -m nexttoken jukebox prepare --preset gpu "${DATA[@]}"

# 1. the VQ-VAE and its ablation, as the gpu preset trains them (fp32, the paper's LR) for a shorter time budget:
#    as many of its 100,000 steps as fit (the LR schedule follows)
for variant in restarts no-restarts; do
    time $PY -m nexttoken jukebox train-vqvae --preset gpu --$variant "${DATA[@]}" --device "$DEVICE" \
        --batch-size "$VQ_BATCH" --val-clips 64 --max-minutes "$VQ_MINUTES" --out "$OUT-$variant"
done
RUN="$OUT-restarts"

# 2. the priors at the gpu preset's sizes (the top sees 6 s at 172 codes/s), each for a shorter time budget
for level in top middle bottom; do
    time $PY -m nexttoken jukebox train-prior "$RUN" --level "$level" --device "$DEVICE" --batch-size "$PRIOR_BATCH" \
        --max-minutes "$PRIOR_MINUTES"
done

# 3. sampling through all three levels, with the real-time factor of each
time $PY -m nexttoken jukebox sample "$RUN" --device "$DEVICE" --artist bach --seconds "$SAMPLE_SECONDS" --parallel 32 \
    --out "$RUN/samples/bach"
LINE=$($PY -c "import json,sys; from safetensors import safe_open; f=safe_open(sys.argv[1],'pt'); \
t=[t for t in json.loads(f.metadata()['meta'])['tracks'] if t['lyrics'] and t['split']=='val'][0]; \
print(t['artist'], t['lyrics'], sep='|')" "$RUN/codes.safetensors")
SUNG_SECONDS=$(( SAMPLE_SECONDS < 4 ? SAMPLE_SECONDS : 4 ))
time $PY -m nexttoken jukebox sample "$RUN" --device "$DEVICE" --artist "${LINE%%|*}" --genre song \
    --lyrics "${LINE#*|}" --seconds "$SUNG_SECONDS" --parallel 8 --out "$RUN/samples/sung"

# 4. the measures and the speed table
time $PY -m nexttoken jukebox evaluate "$RUN" --device "$DEVICE" --baselines bottom --compare "$OUT-no-restarts" \
    --clips-per-artist "${EVAL_CLIPS:-4}" --seconds 3
if [ "${SPEED:-1}" = 1 ]; then  # gpu_checks.sh times it apart, at the gpu preset's sizes, before everything else
    time $PY benchmarks/jukebox_speed.py --device "$DEVICE" --run "$RUN" --seconds "$SPEED_SECONDS" --no-uncached \
        --parallel 32
fi
$PY -m nexttoken jukebox report "$RUN"
echo "pipeline: $RUN   ablation: $OUT-no-restarts   report: $RUN/report/report.html"
