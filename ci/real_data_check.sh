#!/usr/bin/env bash
# Short, seeded pipeline runs gated by `glioseg check-metrics` against committed baselines:
#   - LGG: on real data (../shared/lgg restored) when it is there, else on the embedded synthetic data;
#   - BraTS: on the real NIfTI cases of ../shared/brats when they are there.
# Each runs in a temporary copy of the tracked files, so the checkout's params and data stay as they are.
#   bash ci/real_data_check.sh                    # run and gate
#   bash ci/real_data_check.sh --write-baseline   # run and store the results as the new baselines
#   GLIOSEG_CI_DATA=synthetic bash ci/real_data_check.sh   # only the synthetic gate even where ../shared exists
#   GLIOSEG_CI_GATES=brats bash ci/real_data_check.sh      # only some gates (default: "lgg brats")
set -euo pipefail
write_baseline=${1:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED="$ROOT/../shared"
export PATH="$ROOT/.venv/bin:$PATH"

# gate KIND SOURCE: params composed from the defaults, ci/profile-KIND.yaml (when there is one) and
# data.source SOURCE, `dvc repro evaluate`, then check metrics/test.json against ci/baseline-KIND.json
# with ci/floors-KIND.yaml (or ci/floors.yaml).
gate() {
    local kind=$1 source_path=$2 work start
    work=$(mktemp -d)
    (cd "$ROOT" && git ls-files -z | xargs -0 cp --parents -t "$work")
    (
        cd "$work"
        git init -q && git add -A && git -c user.name=ci -c user.email=ci@localhost commit -qm "ci snapshot"
        profile=()
        if [ -f "$ROOT/ci/profile-$kind.yaml" ]; then profile=("$ROOT/ci/profile-$kind.yaml"); fi
        glioseg params "${profile[@]}" --set "data.source=$source_path" --out params.yaml
        start=$(date +%s)
        dvc repro evaluate
        echo "ci: $kind-data run took $(( $(date +%s) - start )) s"
        rules="$ROOT/ci/floors-$kind.yaml"
        [ -f "$rules" ] || rules="$ROOT/ci/floors.yaml"
        if [ "$write_baseline" = "--write-baseline" ]; then
            cp metrics/test.json "$ROOT/ci/baseline-$kind.json"
            echo "ci: wrote ci/baseline-$kind.json"
        else
            glioseg check-metrics metrics/test.json --baseline "$ROOT/ci/baseline-$kind.json" --rules "$rules"
        fi
    ) || { rm -rf "$work"; return 1; }
    rm -rf "$work"
}

gates=" ${GLIOSEG_CI_GATES:-lgg brats} "
if [[ "$gates" != *" lgg "* ]]; then
    echo "ci: LGG gate skipped (GLIOSEG_CI_GATES)"
elif [ "${GLIOSEG_CI_DATA:-}" = synthetic ] || [ ! -f "$SHARED/lgg/restore.py" ]; then
    echo "ci: running the LGG metrics gate on the embedded synthetic data (../shared/lgg absent or not asked for)"
    gate synthetic synthetic
else
    lgg=$(mktemp -d)
    trap 'rm -rf "$lgg"' EXIT
    python "$SHARED/lgg/restore.py" "$lgg" --patients "${GLIOSEG_CI_PATIENTS:-40}" >/dev/null
    gate real "$lgg/kaggle_3m"
fi

if [[ "$gates" == *" brats "* ]] && [ "${GLIOSEG_CI_DATA:-}" != synthetic ] && [ -d "$SHARED/brats" ]; then
    gate brats "$SHARED/brats"
else
    echo "ci: no BraTS gate (../shared/brats absent or not asked for)"
fi
