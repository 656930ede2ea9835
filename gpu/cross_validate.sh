#!/usr/bin/env bash
# Five-fold cross-validations of several configurations at once on the lent GPU machine: every fold of
# every configuration is one gpu.seed_protocol run (its own data stages, training and evaluation), run
# PARALLEL at a time; then gpu.cv_pool pools each configuration's folds over all patients.
#   bash gpu/cross_validate.sh CANDIDATES DATA RESULTS [PARALLEL] [RUN_SECONDS]
# CANDIDATES: one configuration per line, "name profile [KEY=VALUE ...]" ('#' starts a comment).
# DATA: a kaggle_3m folder (an unpacked kit); RESULTS: where NAME-fFOLD.json and .log go.
# RUN_SECONDS: a deadline for each run (timeout), so a slow one cannot eat the device call.
set -euo pipefail
cd "$(dirname "$0")/.."
export CANDIDATES=$1 DATA=$2 RESULTS=$3 PARALLEL=${4:-10} RUN_SECONDS=${5:-600} FOLDS=5 PYTHON=${PYTHON:-python3}
mkdir -p "$RESULTS"
grep -v '^\s*\(#\|$\)' "$CANDIDATES" | while read -r name profile overrides; do
    for fold in $(seq 0 $((FOLDS - 1))); do
        echo "$name $profile $fold${overrides:+ $overrides}"  # no trailing blank: xargs -L would join lines
    done
done | xargs -P "$PARALLEL" -L 1 bash -c '
    name=$0 profile=$1 fold=$2; shift 2
    sets=(--set "split.folds=$FOLDS" --set "split.fold=$fold" --set run.threads=1)
    for item in "$@"; do sets+=(--set "$item"); done
    result="$RESULTS/$name-f$fold.json" log="$RESULTS/$name-f$fold.log"
    rm -f "$result"
    OMP_NUM_THREADS=1 timeout "$RUN_SECONDS" "$PYTHON" -m gpu.seed_protocol --params "$profile" --data "$DATA" \
        "${sets[@]}" --json "$result" > "$log" 2>&1
    # The result file, not the exit status: a run stopped at its deadline after writing it still counts.
    if [ -f "$result" ]; then tail -1 "$log"; else echo "$name fold $fold failed: see $log"; fi'
"$PYTHON" -m gpu.cv_pool "$RESULTS"/*.json
