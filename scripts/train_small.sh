#!/usr/bin/env bash
# Train the small preset end to end (issue 11), the way the shipped sodec-small-q1/q2 were trained:
#   phase 1, in parallel: stage 1 (the GDN codec) and D_m (distilled from TAEF2's decoder);
#   phase 2, in parallel: stages 2-3 (configs/sodec-small.toml) for both rate points.
# Every stage is time-boxed by its max_seconds (sized for one lent H200; set MAX_SECONDS=0 to
# train each stage's full steps instead, e.g. on a CPU over days).
#   DATA=../shared/data WEIGHTS=../shared/weights RUNS=runs bash scripts/train_small.sh
set -euo pipefail
DATA=${DATA:-../shared/data}
WEIGHTS=${WEIGHTS:-../shared/weights}
RUNS=${RUNS:-runs}
ARGS=(--data "$DATA/train" --extra-data "$DATA/train-extra" --weights-dir "$WEIGHTS" -q)
if [[ -n "${MAX_SECONDS:-}" ]]; then ARGS+=(--max-seconds "$MAX_SECONDS"); fi
mkdir -p "$RUNS"
run() { # name, config, extra args...: one training process, its log in $RUNS/<name>.log
  local name=$1 config=$2; shift 2
  echo "$(date +%T) start $name" >&2
  ${SODEC:-sodec} train --config "$config" --out "$RUNS/$name" "${ARGS[@]}" "$@" >"$RUNS/$name.log" 2>&1 \
    && echo "$(date +%T) done $name" >&2 || { echo "$(date +%T) FAILED $name (see $RUNS/$name.log)" >&2; return 1; }
}
run small-codec configs/codec-small-gdn.toml & a=$!
run small-dm configs/sodec-small-decoder.toml & b=$!
wait $a; wait $b
# configs/sodec-small.toml reads runs/small-codec and runs/small-dm (relative to configs/).
if [[ "$(realpath "$RUNS")" != "$(realpath runs)" ]]; then
  mkdir -p runs && ln -sfn "$(realpath "$RUNS/small-codec")" runs/small-codec && ln -sfn "$(realpath "$RUNS/small-dm")" runs/small-dm
fi
run small-q2 configs/sodec-small.toml --target-bpp 0.09 & a=$!
run small-q1 configs/sodec-small.toml --target-bpp 0.045 & b=$!
wait $a; wait $b
