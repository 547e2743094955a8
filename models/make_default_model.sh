#!/usr/bin/env bash
# Rebuild the bundled default model (models/pebal_synthetic_espnetv2.pt) and its baseline
# (models/inlier_synthetic_espnetv2.pt) from nothing, on the CPU:
#   synthetic data -> inlier network from scratch -> PEBAL fine-tuning -> benchmark table.
# Usage (from anywhere):  models/make_default_model.sh [WORK_DIR]   (default WORK_DIR: runs/synthetic)
# Environment: PEBAL (the command, default "python3 -m pebal_ros.cli"), OMP_NUM_THREADS (default 1:
# on a machine whose cores are shared with other work, one thread per process is several times
# faster than two that spin-wait for each other; raise it on an idle multi-core machine).
# The figures it prints are a synthetic proxy, not the paper's benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/synthetic}
PEBAL=${PEBAL:-python3 -m pebal_ros.cli}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SECONDS=0

echo "== 1/4 synthetic data -> $WORK/data"
$PEBAL make-synthetic --out "$WORK/data" --overwrite --seed 0 --size 256x128 \
  --train 300 --val 50 --coco 150 --coco-size 96x72 --anomaly 200 --workers 2
# A second anomaly set (other seed, same test families) to calibrate the detection threshold on,
# so that the test set stays a test set.
$PEBAL make-synthetic --out "$WORK/data_val" --overwrite --seed 1 --size 256x128 --parts anomaly_test \
  --anomaly 100 --workers 2
echo "   ($SECONDS s)"

echo "== 2/4 inlier network from scratch (pebal train --preset synthetic)"
$PEBAL train --preset synthetic --cityscapes "$WORK/data/cityscapes" --out "$WORK/inlier" --no-progress
echo "   ($SECONDS s)"

echo "== 3/4 PEBAL fine-tuning (pebal finetune --preset synthetic)"
$PEBAL finetune --preset synthetic --model "$WORK/inlier/model.pt" --cityscapes "$WORK/data/cityscapes" \
  --coco "$WORK/data/coco_ood" --out "$WORK/pebal" --no-progress
echo "   ($SECONDS s)"

echo "== 4/4 evaluation (one forward pass per image; all scorers)"
$PEBAL evaluate --preset synthetic --no-progress \
  --model inlier="$WORK/inlier/model.pt" --model pebal="$WORK/pebal/model.pt" \
  --dataset synthetic@fs_static="$WORK/data/anomaly_test" --dataset cityscapes="$WORK/data/cityscapes" \
  --out "$WORK/eval"
# Threshold calibration on the validation anomaly set: the PEBAL score above which at most 5 % of its
# inlier pixels lie (goes into pebal_ros/configs/synthetic.yaml as inference.threshold); the 95 %-recall
# threshold is printed beside it.
$PEBAL evaluate --preset synthetic --no-progress --methods pebal \
  --model pebal="$WORK/pebal/model.pt" --dataset synthetic_val@fs_static="$WORK/data_val/anomaly_test" \
  --out "$WORK/eval_val"
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); m=r['anomaly']['pebal']['synthetic_val']['pebal']; print('validation set: threshold at 5 % FPR (the preset):', m['threshold_fpr05'], '| at 95 % TPR:', m['threshold_tpr95'])" "$WORK/eval_val/results.json"

cp "$WORK/inlier/model.pt" models/inlier_synthetic_espnetv2.pt
cp "$WORK/pebal/model.pt" models/pebal_synthetic_espnetv2.pt
cp "$WORK/eval/results.md" models/synthetic_results.md
cp "$WORK/eval/results.json" models/synthetic_results.json
echo "wrote models/pebal_synthetic_espnetv2.pt, models/inlier_synthetic_espnetv2.pt, models/synthetic_results.{md,json} in $SECONDS s"
