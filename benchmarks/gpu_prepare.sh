#!/usr/bin/env bash
# What a lent GPU machine lacks, made ready here before the run: it has PyTorch, transformers, tokenizers, safetensors,
# matplotlib and tqdm, but not soundfile and soxr (jukebox's audio I/O) nor music21 (the corpus), and it cannot reach
# a package index. This downloads those wheels for its Python into .whl/ and copies the music21 corpus subset as a note
# table into .corpus/music21-small (about 0.3 MB; converted first when this machine has not done it yet). Both folders
# are git-ignored; name them in the device call's `carry`:
#
#   bash benchmarks/gpu_prepare.sh              # PYVER=3.11 PY=/tmp/venv/bin/python to rehearse with another Python
#   then, on the lent machine, carrying [".whl", ".corpus"]: the commands at the top of benchmarks/gpu_checks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
PYVER=${PYVER:-3.12}  # the lent machine's
rm -rf .whl && mkdir -p .whl .corpus
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    "${platforms[@]}" -d .whl soundfile soxr cffi pycparser
TABLE=$($PY -m nexttoken muse prepare --corpus music21-small | sed -n 's/^note table: \([^ ]*\) .*/\1/p')
rm -rf .corpus/music21-small && cp -r "$TABLE" .corpus/music21-small
du -sh .whl .corpus/music21-small
