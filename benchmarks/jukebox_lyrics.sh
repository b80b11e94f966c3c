#!/usr/bin/env bash
# Does the top prior's encoder-decoder attention follow the words as they are sung (docs/jukebox.md, "Lyrics")?
# A VQ-VAE trained on the built-in sung lines alone, their codes encoded once, then two top priors on the same codes:
# a 256-code (2 s) context, whose windows mostly start mid-line, and a 512-code (4.1 s) one, which holds most lines
# from their first syllable, at the same codes per step. Prints, per prior, the alignment of the best head on
# held-out lines against chance and the linear heuristic, and the held-out bits per second of the sung lines read
# with their own lyrics and with another line's.
#
#   bash benchmarks/jukebox_lyrics.sh [OUT] [LINES]     # defaults: runs/jb-sung 2000
#
# About 1.5 hours on the 2-core CPU (the two priors train side by side, one thread each); a finished step is skipped
# when run again.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/jb-sung}
LINES=${2:-2000}
N=${N:-.venv/bin/nexttoken}
export OMP_NUM_THREADS=1
[ -f "$OUT/vqvae/summary.json" ] || $N jukebox train-vqvae --artists low_voice,high_voice --lyrics-lines "$LINES" \
    --steps 800 --out "$OUT" >/dev/null
[ -f "$OUT/codes.safetensors" ] || .venv/bin/python -c "import sys, torch; from pathlib import Path
from nexttoken.jukebox.pipeline import codes_of; codes_of(Path(sys.argv[1]), torch.device('cpu'))" "$OUT"
[ -d "$OUT-ctx512" ] || { mkdir "$OUT-ctx512" && cp -r "$OUT"/config.json "$OUT"/metrics.jsonl "$OUT"/vqvae \
    "$OUT"/codes.safetensors "$OUT-ctx512"/; }
train() {  # RUN, then train-prior's options
  local run=$1; shift
  [ -f "$run/top/summary.json" ] || $N jukebox train-prior "$run" --level top --steps 3000 --dropout 0.1 "$@" \
      >/dev/null
}
train "$OUT" & a=$!
train "$OUT-ctx512" --context 512 --batch-size 8 & b=$!
wait $a; wait $b
for run in "$OUT" "$OUT-ctx512"; do
  echo "== $run"
  OMP_NUM_THREADS=2 $N jukebox evaluate "$run" --baselines '' --clips-per-artist 0 --lines 100 \
      | sed -n '/bits per second/,$p' | grep -v '^wrote'
done
