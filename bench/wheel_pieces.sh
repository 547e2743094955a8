#!/usr/bin/env bash
# Move a wheel larger than one device call can carry (onnxruntime-gpu is ~256 MB; a call carries at
# most 64 MiB of working tree) to an offline GPU machine in pieces, over several calls.
#
#   here:    bash bench/wheel_pieces.sh split .whl/onnxruntime_gpu-*.whl .whl_parts 55
#            -> .whl_parts/<wheel>.partNN (55 MiB each) + <wheel>.sha256; then, per piece, a device call
#               carrying only that piece:   bash bench/wheel_pieces.sh stash .whl_parts
#   there:   stash copies the carried pieces to $PEBAL_PIECES (default /var/tmp/pebal_pieces), which
#            survives between calls while the machine stays warm; the last call runs
#            bash bench/wheel_pieces.sh install /tmp/site      (joins, checks SHA-256, pip installs)
# A normal user installs onnxruntime-gpu with pip directly (docs/deployment.md); this is for the
# offline machines of this project only.
set -euo pipefail
cmd=${1:?usage: wheel_pieces.sh split WHEEL DIR [MiB] | stash DIR | install TARGET}
store=${PEBAL_PIECES:-/var/tmp/pebal_pieces}
case "$cmd" in
  split)
    wheel=${2:?wheel}; dir=${3:?dir}; mib=${4:-55}
    mkdir -p "$dir"
    name=$(basename "$wheel")
    split -b "${mib}M" -d -a 2 "$wheel" "$dir/$name.part"
    (cd "$(dirname "$wheel")" && sha256sum "$name") > "$dir/$name.sha256"
    ls -l "$dir" ;;
  stash)
    dir=${2:?dir}; mkdir -p "$store"
    cp -v "$dir"/*.part?? "$dir"/*.sha256 "$store"/ 2>/dev/null || { echo "no pieces in $dir" >&2; exit 1; }
    ls -l "$store" ;;
  join|install)
    target=${2:-}
    shopt -s nullglob
    for sum in "$store"/*.sha256; do
      name=$(basename "$sum" .sha256)
      parts=("$store/$name".part??)
      [ ${#parts[@]} -gt 0 ] || { echo "no pieces of $name in $store" >&2; exit 1; }
      cat "${parts[@]}" > "$store/$name"
      (cd "$store" && sha256sum -c "$name.sha256") || { echo "$name: pieces missing or corrupt (${#parts[@]} found)" >&2; exit 1; }
      if [ "$cmd" = install ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --upgrade ${target:+--target "$target"} "$store/$name"
      fi
    done ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
