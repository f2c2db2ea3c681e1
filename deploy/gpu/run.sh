#!/bin/bash
# The prepared GPU training run: one call on the lent machine, repo root as working directory, .gpu carried.
#   bash deploy/gpu/run.sh [budget_seconds]       # default 420; the whole call takes budget + ~60 s
# Trains every model of docs/RESULTS.md in four concurrent streams, writes /tmp/results, packs /tmp/parts and
# copies results-small.tar.gz + the first weight parts to $OUT (ship_parts.sh prints the next call).
# Dry run on a CPU machine: PLAN=smoke PYTHON=.venv/bin/python SIM=deploy/gpu/device_sim bash deploy/gpu/run.sh 300
set -u
budget=${1:-420}
python=${PYTHON:-python3}
plan=${PLAN:-gpu}
results=${RESULTS:-/tmp/results}
parts=${PARTS:-/tmp/parts}
site=${SITE:-/tmp/site}
start=$(date +%s)
PYTHONPATH=${SIM:-} "$python" deploy/gpu/bootstrap.py .gpu/wheels "$site" || { echo "wheel install failed"; exit 3; }
export PYTHONPATH=$site${SIM:+:$SIM}:$PWD YOLO_OFFLINE=1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
"$python" -c "import dicom_ai.train.streams, ultralytics, segmentation_models_pytorch; print('imports ok')" || exit 4
"$python" -m dicom_ai.train.plan run --plan "$plan" --data .gpu/data --out "$results" --parts "$parts" \
  --budget-seconds "$budget"
rc=$?
sh deploy/gpu/ship_parts.sh "$parts" "${OUT:?set OUT to the folder that is shipped back}" 0
echo "plan exit $rc; wall $(( $(date +%s) - start ))s"
for f in "$results"/logs/*.log; do echo "== $f"; grep -v $'\x1b\[K' "$f" | tail -n 4; done
exit $rc
