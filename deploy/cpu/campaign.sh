#!/usr/bin/env bash
# The CPU training campaign behind the shipped models (2 cores, no GPU): each model by its own resumable command,
# checkpointed every epoch under var/train2/<model>/, so a campaign spans sessions: run this again and every run
# continues where it stopped (--resume); runs that are gone start again from the shipped weights (--init).
#   deploy/cpu/campaign.sh [DATA]        DATA = shared/data (default ../shared/data)
# Then install what finished:  deploy/cpu/campaign.sh --install
set -euo pipefail
cd "$(dirname "$0")/../.."
D=${DATA:-../shared/data}
P=${PRETRAINED:-../shared/pretrained/yolov5n_coco_v6.1.safetensors}  # the verified COCO YOLOv5n backbone
OUT=var/train2
dicom_ai=.venv/bin/dicom-ai

if [ "${1:-}" = "--install" ]; then
  version=${VERSION:-cpu-$(date +%Y%m%d)}
  for run in mri_region:mri_region modality_ft:modality brain_tumor_det:brain_tumor_det fracatlas:fracatlas \
             lgg128:lgg; do
    folder=${run%%:*}; name=${run##*:}
    [ -f "$OUT/$folder/metrics.json" ] && $dicom_ai train install-run "$OUT/$folder" --name "$name" --models models \
      --version "$version"
  done
  exit 0
fi

classify() { $dicom_ai train classify --data "$D" --input-size 64 --batch 32 --resume "$@"; }
classify --dataset mri_region --out $OUT/mri_region --arch mobilenet_v3_small --epochs 40 --patience 8 \
  --budget-seconds 420
# The classifiers that shipped before this campaign were trained on /255 images; they are fine-tuned on the
# standardised inputs with window jitter (one preprocessing path for training and serving).
classify --dataset modality --out $OUT/modality_ft --arch densenet121 --epochs 30 --patience 4 \
  --budget-seconds 1500 --init models/modality/weights.safetensors
# xray_bodypart and mri_planes were not fine-tuned: through the standardised inputs their 2026-11-29 weights score
# 0.971 and 0.976 (`dicom-ai train rescore`); a fine-tune at the default learning rate (1e-3) lost accuracy.

detect() { $dicom_ai train detect --data "$D" --arch yolov5n --workers 0 --init "$P" --resume "$@"; }
detect --dataset brain_tumor_det --out $OUT/brain_tumor_det --input-size 256 --epochs 40 --batch 16 --patience 10 \
  --budget-seconds 1800
detect --dataset fracatlas --out $OUT/fracatlas --input-size 512 --epochs 60 --batch 8 --patience 20 \
  --budget-seconds 3600

# Res50 U-Net: first adapted at 128 px to the standardised inputs (lr 1e-4), then the long campaign at 192 px,
# warm-started from the shipped weights; 480 slices per epoch.
$dicom_ai train segment --dataset lgg --data "$D" --out $OUT/lgg128 --arch res50_unet --input-size 128 --epochs 8 \
  --batch 8 --max-steps 60 --patience 4 --lr 0.0001 --budget-seconds 1500 --init models/lgg/weights.safetensors --resume
$dicom_ai train segment --dataset lgg --data "$D" --out $OUT/lgg --arch res50_unet --input-size 192 --epochs 60 \
  --batch 8 --max-steps 60 --patience 12 --budget-seconds 5400 --init models/lgg/weights.safetensors --resume
