#!/usr/bin/env bash
# Every GPU check of the core and the grokking lab in one run (for a lent single-GPU machine). Each part has its own
# time limit so one failure cannot starve the rest. Everything lands in ${OUT:-gpu-out}/gpu-checks.tar.gz.
#   bash benchmarks/gpu_checks.sh
set -u
OUT=${OUT:-gpu-out}
WORK=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PY:-python3}
part() {  # part NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s) ==="
  local t0=$SECONDS
  timeout "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  tail -n 12 "$WORK/$name.log"
  echo "=== $name: rc=$rc in $((SECONDS - t0))s ==="
  # Pack after every part: whatever finished comes back even if a later part runs past the call's limit.
  tar czf "$OUT/gpu-checks.tar.gz" --exclude=checkpoint.safetensors --exclude=checkpoints -C "$WORK" . 2>/dev/null
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

part grok_profile 90 $PY benchmarks/grok_profile.py --presets paper,modern,nanda --sizes 1,8,32,128
part grok_speed 150 $PY benchmarks/grok_speed.py --seeds 3 --sweep 128
part grok_repro 120 $PY -m nexttoken grok sweep --ops "x/y,x^3+xy^2+y" --fracs 0.5 --seeds 2 \
  --grid weight_decay=0,1 --steps 1e5 --out "$WORK/repro"
part grok_s5 120 $PY -m nexttoken grok sweep --ops "s5:x*y" --fracs 0.3,0.35,0.4,0.5,0.6,0.7 --seeds 4 \
  --steps 5e4 --stop-at 0.99 --out "$WORK/s5"
part grok_nanda 60 $PY -m nexttoken grok train --preset nanda --snapshots 40 --out "$WORK/nanda"
part grok_nanda_analyze 60 $PY -m nexttoken grok analyze "$WORK/nanda"
for p in 23 31 47 59; do
  part grok_small_p$p 40 $PY -m nexttoken grok sweep --ops x+y --p $p --fracs 0.3,0.4,0.5,0.6,0.7 --seeds 2 \
    --steps 1e4 --stop-at 0.99 --out "$WORK/small-p$p"
done
cp benchmarks/results/*.json "$WORK/" 2>/dev/null
part core_bf16 60 $PY benchmarks/core_speed.py --precision bf16
cp benchmarks/results/*.json "$WORK/" 2>/dev/null
tar czf "$OUT/gpu-checks.tar.gz" --exclude=checkpoint.safetensors --exclude=checkpoints -C "$WORK" .
ls -la "$OUT"
