#!/usr/bin/env bash
# A short, seeded pipeline run gated by `glioseg check-metrics` against a committed baseline.
# On real data (../shared/lgg restored) when it is there, else on the embedded synthetic data.
# Runs in a temporary copy of the tracked files, so the checkout's params and data stay as they are.
#   bash ci/real_data_check.sh                    # run and gate
#   bash ci/real_data_check.sh --write-baseline   # run and store the result as the new baseline
#   GLIOSEG_CI_DATA=synthetic bash ci/real_data_check.sh   # the synthetic gate even where ../shared exists
set -euo pipefail
write_baseline=${1:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED_LGG="$ROOT/../shared/lgg"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PATH="$ROOT/.venv/bin:$PATH"

(cd "$ROOT" && git ls-files -z | xargs -0 cp --parents -t "$WORK")
cd "$WORK"
git init -q && git add -A && git -c user.name=ci -c user.email=ci@localhost commit -qm "ci snapshot"

if [ -f "$SHARED_LGG/restore.py" ] && [ "${GLIOSEG_CI_DATA:-}" != synthetic ]; then
    kind=real
    python "$SHARED_LGG/restore.py" "$WORK/lgg" --patients "${GLIOSEG_CI_PATIENTS:-40}" >/dev/null
    source_path="$WORK/lgg/kaggle_3m"
else
    echo "ci: running the metrics gate on the embedded synthetic data (../shared/lgg absent or not asked for)"
    kind=synthetic
    source_path=synthetic
fi
profile="$ROOT/ci/profile-$kind.yaml"
[ -f "$profile" ] || profile="$ROOT/params.yaml"
python - "$profile" "$source_path" <<'PY'
import sys, yaml
params = yaml.safe_load(open(sys.argv[1]))
params["data"]["source"] = sys.argv[2]
yaml.safe_dump(params, open("params.yaml", "w"), sort_keys=False)
PY
glioseg check-params params.yaml >/dev/null
start=$(date +%s)
dvc repro evaluate
echo "ci: $kind-data run took $(( $(date +%s) - start )) s"
if [ "$write_baseline" = "--write-baseline" ]; then
    cp metrics/test.json "$ROOT/ci/baseline-$kind.json"
    echo "ci: wrote ci/baseline-$kind.json"
else
    glioseg check-metrics metrics/test.json --baseline "$ROOT/ci/baseline-$kind.json" --rules "$ROOT/ci/floors.yaml"
fi
