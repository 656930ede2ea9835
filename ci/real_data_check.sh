#!/usr/bin/env bash
# Short, seeded pipeline runs gated by `glioseg check-metrics` against committed baselines:
#   - LGG: on real data (../shared/lgg restored) when it is there, else on the embedded synthetic data;
#   - BraTS: on the real NIfTI cases of ../shared/brats when they are there.
# Each runs in a temporary copy of the tracked files, so the checkout's params and data stay as they are.
#   bash ci/real_data_check.sh                    # run and gate
#   bash ci/real_data_check.sh --write-baseline   # run and store the results as the new baselines
#   GLIOSEG_CI_DATA=synthetic bash ci/real_data_check.sh   # only the synthetic gate even where ../shared exists
#   GLIOSEG_CI_GATES=brats bash ci/real_data_check.sh      # only some gates (default: "lgg brats")
#   GLIOSEG_CI_PRECISION=fp32 bash ci/real_data_check.sh   # train in fp32 even where the CPU has bf16
# Training precision changes the numbers (bf16 autocast where the CPU has native bf16, fp32
# elsewhere), and so do the CPU's vector kernels (torch's CPU capability, AVX2 or AVX512: the same
# seeded fp32 run differs by up to 0.21 in a BraTS region's Dice between them; an AVX512 CPU with
# AMX, avx512_amx, differs again), so each gate has one baseline per precision and capability,
# ci/baseline-KIND-PRECISION-CAPABILITY.json, and a machine is gated against the one it trains
# with (check-metrics refuses a precision or kernel mix). A machine of a class without one (an ARM
# CPU, a new x86 class) is gated on the floors' absolute `min` values only, with a notice saying so.
set -euo pipefail
write_baseline=${1:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED="$ROOT/../shared"
export PATH="$ROOT/.venv/bin:$PATH"
precision=${GLIOSEG_CI_PRECISION:-$(python -c \
    'from glioseg.device import cpu_has_native_bf16; print("bf16" if cpu_has_native_bf16() else "fp32")')}
case "$precision" in
    bf16) forced=() ;;
    fp32) forced=(--set train.amp=false) ;;  # the same numbers as amp on a CPU without bf16
    *) echo "ci: GLIOSEG_CI_PRECISION must be bf16 or fp32 (got '$precision')" >&2; exit 2 ;;
esac
capability=$(python -c 'import torch; from glioseg.device import kernel_name; print(kernel_name(torch.device("cpu")))')
echo "ci: training precision $precision, CPU capability $capability"

# gate KIND SOURCE: params composed from the defaults, ci/profile-KIND.yaml (when there is one) and
# data.source SOURCE, `dvc repro evaluate`, then check metrics/test.json against
# ci/baseline-KIND-PRECISION-CAPABILITY.json with ci/floors-KIND.yaml (or ci/floors.yaml), or on
# the floors alone where that baseline is missing (glioseg.evaluation.gate.ci_gate).
# The subshell runs as a plain command, not in a `||` list, where bash would ignore `set -e` in it
# (a failed `dvc repro` would then gate the committed metrics/test.json).
gate() {
    local kind=$1 source_path=$2 work start baseline
    work=$(mktemp -d)
    (
        trap 'rm -rf "$work"' EXIT
        cd "$ROOT"
        git ls-files -z | xargs -0 cp --parents -t "$work"
        cd "$work"
        git init -q && git add -A && git -c user.name=ci -c user.email=ci@localhost commit -qm "ci snapshot"
        profile=()
        if [ -f "$ROOT/ci/profile-$kind.yaml" ]; then profile=("$ROOT/ci/profile-$kind.yaml"); fi
        glioseg params "${profile[@]}" --set "data.source=$source_path" "${forced[@]}" --out params.yaml
        start=$(date +%s)
        dvc repro evaluate
        echo "ci: $kind-data run took $(( $(date +%s) - start )) s"
        if [ "$write_baseline" = "--write-baseline" ]; then
            baseline="ci/baseline-$kind-$precision-$capability.json"
            cp metrics/test.json "$ROOT/$baseline"
            echo "ci: wrote $baseline"
        else
            python -m glioseg.evaluation.gate metrics/test.json "$ROOT/ci" "$kind" "$precision" "$capability"
        fi
    )
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
