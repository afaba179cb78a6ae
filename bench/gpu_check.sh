#!/usr/bin/env bash
# The GPU path of issue 12, measured in one short run (about 10 minutes on an H200, set-up included).
#
#   bash bench/gpu_check.sh             # on the GPU machine, from the repository root; results under $OUT
#   bash bench/gpu_check.sh --dry-run   # anywhere: every step, tiny and on the CPU (checks the script itself)
#
# Steps (each under its own time limit inside an overall budget, GPU_CHECK_BUDGET_S, default 540 s; a step
# that fails or runs out of time is recorded and the next one runs):
#   env       Python, torch (+CUDA), OpenCV, nvidia-smi
#   tests     (a) the CUDA tests (pytest -k cuda tests/cpfs/flow/test_flow_cuda.py) and the CPU tests that keep
#             the CUDA code paths honest (test_torch_tvl1.py, test_flow_backends.py)
#   speed     (b) bench/flow_tvl1_speed.py at 256 and 512 px, batch 1/8/32, OpenCV CPU TV-L1 in the same run
#             (goal: >= 100x one-thread CPU TV-L1 at 256x256)
#   accuracy  (b) bench/flow_tvl1_accuracy.py: Middlebury EPE torch vs OpenCV (goal: unchanged, ratio <= 1.10)
#   ingest    (d) the sample videos with --backend auto (which backend, frames/s, against decode alone)
#   train     (c) the cpu-hour and paper presets for a few hundred steps on that store (images/s, GPU memory,
#             share of step time waiting for the loader)
#
# Environment: $CPFS_PYTHON if set; else .venv/bin/python when it imports the project; else (a fresh GPU
# machine) a venv over the machine's python3, which holds a CUDA build of torch (pyproject's exact torch pin
# is not installed: it would replace that build), with the other dependencies of pyproject.toml installed
# from the wheels in .whl/ when that folder exists (the GPU machine reaches no package index), else from
# the index. Middlebury: ../shared/data/middlebury, or .gpu-data/middlebury carried in the repository.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$(mktemp -d /tmp/cpfs-gpu-check-XXXX)}
mkdir -p "$OUT"
BUDGET=${GPU_CHECK_BUDGET_S:-540}
T0=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

say() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*" | tee -a "$SUMMARY"; }

# step NAME MAX_SECONDS COMMAND...: run with a limit (the smaller of MAX_SECONDS and the budget left),
# output to $OUT/NAME.log, status to the summary.
step() {
  local name=$1 max=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - T0) ))
  local limit=$(( max < left ? max : left ))
  if (( limit < 10 )); then say "$name: SKIPPED (budget of ${BUDGET}s spent)"; return 0; fi
  say "$name: start (limit ${limit}s): $*"
  local t=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local status=ok; (( rc == 124 || rc == 137 )) && status="TIMED OUT" || { (( rc != 0 )) && status="FAILED (exit $rc)"; }
  say "$name: $status after $(( $(date +%s) - t ))s; last lines:"
  tail -n 12 "$OUT/$name.log" | sed 's/^/    /' | tee -a "$SUMMARY"
  return 0
}

python_env() {
  if [[ -n "${CPFS_PYTHON:-}" ]]; then PY=$CPFS_PYTHON; return 0; fi
  if [[ -x .venv/bin/python ]] && .venv/bin/python -c "import cpfs.ingest.steps, torch" 2>/dev/null; then
    PY=.venv/bin/python; return 0
  fi
  local venv=/tmp/cpfs-gpu-venv
  python3 -m venv --system-site-packages "$venv" || return 1
  PY=$venv/bin/python
  "$PY" - >/tmp/cpfs-gpu-requirements.txt <<'EOF'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for dep in project["dependencies"] + project["optional-dependencies"]["test"]:
    if dep.split(";")[0].replace(" ", "").split("=")[0] != "torch":  # keep the machine's CUDA torch
        print(dep)
EOF
  local src=()
  [[ -d .whl ]] && src=(--no-index --find-links .whl)
  # Best effort: a package that cannot be installed fails only the steps that import it (see each log).
  "$PY" -m pip install -q --disable-pip-version-check "${src[@]}" -r /tmp/cpfs-gpu-requirements.txt \
    || echo "pip could not install every dependency: the steps that need a missing one will fail" >&2
  return 0
}

say "gpu_check: $( ((DRY)) && echo 'DRY RUN (CPU, tiny)' || echo 'GPU run' ), results in $OUT, budget ${BUDGET}s"
if ! python_env >"$OUT/setup.log" 2>&1; then
  say "setup: FAILED, see setup.log:"; tail -n 20 "$OUT/setup.log" | tee -a "$SUMMARY"; exit 1
fi
say "python: $PY"
step env 60 "$PY" bench/gpu_check.py env
command -v nvidia-smi >/dev/null && nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1

if [[ ! -d ../shared/data/middlebury && -d .gpu-data/middlebury ]]; then
  mkdir -p ../shared/data && ln -sfn "$PWD/.gpu-data/middlebury" ../shared/data/middlebury
fi
STORE=$(mktemp -d /tmp/cpfs-gpu-store-XXXX)/store.zarr

if ((DRY)); then
  export CPFS_TEST_CUDA_DEVICE=cpu  # the CUDA tests' bodies, on the CPU
  step tests 300 "$PY" -m pytest -q -rs -x -p no:cacheprovider tests/cpfs/flow/test_flow_cuda.py -k cuda
  step speed 120 "$PY" bench/flow_tvl1_speed.py --device cpu --sizes 48 --batch-sizes 1 2 --pairs 2 \
    --opencv-pairs 1 --compile off --threads 1
  step accuracy 60 "$PY" bench/flow_tvl1_accuracy.py --help  # Middlebury on CPU torch takes minutes: only load it
  step ingest 180 "$PY" bench/gpu_check.py ingest --store "$STORE" --size 64 --max-frames 40 --json "$OUT/ingest.json"
  for preset in cpu-hour paper; do
    step "train-$preset" 180 "$PY" bench/gpu_check.py train --store "$STORE" --preset "$preset" --steps 3 \
      --device cpu --batch-size 2 --num-workers 0 --json "$OUT/train-$preset.json"
  done
else
  step tests 120 "$PY" -m pytest -q -rs -p no:cacheprovider tests/cpfs/flow/test_flow_cuda.py tests/cpfs/flow/test_torch_tvl1.py \
    tests/cpfs/flow/test_flow_backends.py
  step speed 200 "$PY" bench/flow_tvl1_speed.py --device cuda --sizes 256 512 --batch-sizes 1 8 32
  step accuracy 100 "$PY" bench/flow_tvl1_accuracy.py --device cuda --video-pairs 2
  step ingest 120 "$PY" bench/gpu_check.py ingest --store "$STORE" --size 256 --json "$OUT/ingest.json"
  step train-cpu-hour 90 "$PY" bench/gpu_check.py train --store "$STORE" --preset cpu-hour --steps 300 --device cuda \
    --json "$OUT/train-cpu-hour.json"
  step train-paper 120 "$PY" bench/gpu_check.py train --store "$STORE" --preset paper --steps 200 --device cuda \
    --json "$OUT/train-paper.json"
fi
rm -rf "$(dirname "$STORE")"
say "done in $(( $(date +%s) - T0 ))s"
