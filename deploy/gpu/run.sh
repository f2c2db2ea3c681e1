#!/bin/bash
# The prepared GPU training run (one call on the lent machine, repo root as working directory, .gpu carried).
#   bash deploy/gpu/run.sh [budget_seconds]       # default 450; the call needs budget + ~90 s
# Trains every model of docs/RESULTS.md in four concurrent streams, writes /tmp/results, packs /tmp/parts and
# copies the first batch of parts to $OUT (see ship_parts.sh for the rest).
set -u
budget=${1:-450}
start=$(date +%s)
python3 deploy/gpu/bootstrap.py .gpu/wheels /tmp/site || { echo "wheel install failed"; exit 3; }
export PYTHONPATH=/tmp/site:$PWD YOLO_OFFLINE=1 YOLO_CONFIG_DIR=/tmp/yolo-config
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
python3 -c "import dicom_ai.train.streams, ultralytics, segmentation_models_pytorch; print('imports ok')" || exit 4
python3 -m dicom_ai.train.plan run --plan gpu --data .gpu/data --out /tmp/results --parts /tmp/parts \
  --budget-seconds "$budget"
rc=$?
sh deploy/gpu/ship_parts.sh /tmp/parts "${OUT:?}" 0
echo "plan exit $rc; wall $(( $(date +%s) - start ))s"
for f in /tmp/results/logs/*.log; do echo "== $f"; tail -n 5 "$f"; done
exit $rc
