#!/usr/bin/env bash
# MuseNet at GPU size: `muse train --preset gpu` (29 M parameters, 7 layers x 512, 8 heads, a 2048-token context) on
# the whole music21 corpus, then samples (MIDI, WAV, piano rolls), the composer map and bits per note.
#
#   bash benchmarks/muse_gpu.sh                 # on one CUDA GPU: the preset's 30-minute budget once the corpus is
#                                               # cached (docs/muse.md: 4.5 minutes of an H200 reach 4.45 bits/note)
#   MAX_MINUTES=4.5 bash benchmarks/muse_gpu.sh # that run's budget
#   torchrun --nproc_per_node 8 -m nexttoken muse train ...   # the same training over 8 GPUs (DDP)
#
# The first run converts the music21 corpus to MIDI with every CPU core (resumable; cached in $NEXTTOKEN_CACHE): about
# 2,700 CPU-seconds of music21 parsing by our per-file timings, so about 3 more minutes on 16 cores, once.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PY:-python3}  # any Python with torch, symusic, music21 and miditok (make setup: PY=.venv/bin/python)
OUT=${OUT:-runs/muse-gpu-$(date +%Y%m%d-%H%M%S)}
MAX_MINUTES=${MAX_MINUTES:-30}  # as many of the preset's 20,000 steps as fit in this many minutes
CORPUS=${CORPUS:-music21}      # or the note table that `nexttoken muse prepare --corpus music21` printed elsewhere
JOBS=${JOBS:-$(nproc)}

apt-get install -y -qq timgm6mb-soundfont >/dev/null 2>&1 || true   # audio for the samples, when apt is there

time $PY -m nexttoken muse prepare --corpus "$CORPUS" --jobs "$JOBS"

time $PY -m nexttoken muse train --preset gpu --corpus "$CORPUS" --device cuda --max-minutes "$MAX_MINUTES" \
    --out "$OUT/run"

for spec in "bach piano" "palestrina voice" "folk_oneill piano" "mozart strings"; do
    set -- $spec
    $PY -m nexttoken muse generate "$OUT/run" --device cuda --composer "$1" --instruments "$2" \
        --seconds 30 --n 4 --top-p 0.95 --out "$OUT/samples-$1" || true   # a composer missing from the corpus
done
PRIME=$(ls ${NEXTTOKEN_CACHE:-$HOME/.cache/nexttoken}/midi/music21-*/midi/bach_bwv10.7.mxl.mid 2>/dev/null | head -1)
if [ -n "$PRIME" ]; then
    $PY -m nexttoken muse generate "$OUT/run" --device cuda --composer mozart --instruments piano \
        --prime "$PRIME" --prime-notes 6 --seconds 30 --n 4 --out "$OUT/samples-primed"
fi
$PY -m nexttoken muse embeddings "$OUT/run"
$PY -m nexttoken muse critic "$OUT/run" --device cuda
$PY -m nexttoken muse report "$OUT/run" --device cuda --out "$OUT/report"   # report.html: curve, critic, samples
$PY -m nexttoken muse evaluate "$OUT/run" --device cuda --n-per-composer 8
cat "$OUT/run/summary.json"
