#!/usr/bin/env bash
# A lent GPU's few minutes in one command: install mimkit from wheels, then the prepared checks, each
# under its own time limit, their outputs packed after every stage (a call stopped from outside
# keeps what it measured).
#
#   bash benchmarks/gpu_session.sh prepare            # here: wheels + Fashion-MNIST into .gpu/ (git-ignore it)
#   bash benchmarks/gpu_session.sh run OUT cuda [PY]  # there: OUT/all.tgz (+ bench_results.md)
#
# The 2026-11-30 H200 session ran `run` twice: T_TTT=0 and BENCH_ARGS="--merge <first results.json>
# --sections flops,compile,table2,memory,scaling,profile" the second time. Stage limits (seconds):
# T_BENCH, TL_BENCH (benchmarks/run.py --time-limit), T_TTT (0 skips), T_DEMO; TTT_CHUNK, DEMO_SET.
set -u
cmd=${1:-}; shift || true
if [ "$cmd" = prepare ]; then
  cd "$(dirname "$0")/.." && mkdir -p .gpu/whl .gpu/fmnist && rm -f .gpu/whl/*.whl
  .venv/bin/pip wheel -q --no-deps --no-build-isolation -w .gpu/whl . plugins/mae plugins/ttt_mae plugins/corruptions
  .venv/bin/pip download -q --no-deps --only-binary=:all: -d .gpu/whl lightly==1.6.0 cattrs
  rm -rf build plugins/*/build
  cp /usr/share/datasets/fashion-mnist/* .gpu/fmnist/
  exit 0
fi
[ "$cmd" = run ] || { echo "usage: $0 prepare | run OUT DEVICE [PY]"; exit 2; }
OUT_FINAL=$1; DEV=$2; PY=${3:-python3}; QUICK=${QUICK:-}
OUTD=/tmp/o; rm -rf $OUTD; mkdir -p $OUTD
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
t0=$(date +%s)
el() {
  echo "[+$(( $(date +%s) - t0 ))s] $*"
  tar czf $OUT_FINAL/all.tgz -C $OUTD . 2>/dev/null; cp $OUTD/bench/results.md $OUT_FINAL/bench_results.md 2>/dev/null
}
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
el "installed"
$PY - <<'PY' > $OUTD/env.txt 2>&1
import platform
import torch, timm
print("torch", torch.__version__, "timm", timm.__version__, "python", platform.python_version())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))
import mimkit.api
print("presets ok:", mimkit.api.build({"method": "mae_tiny_fashion_mnist"}).__class__.__name__)
PY
cat $OUTD/env.txt; el "env"
# 1. the GPU table (issue 17): sections started before --time-limit finish; results saved after each
timeout -k 5 ${T_BENCH:-330} $PY benchmarks/run.py --device $DEV ${QUICK:+--quick} --time-limit ${TL_BENCH:-200} \
  ${BENCH_ARGS:-} --out $OUTD/bench > $OUTD/bench.log 2>&1
echo "bench rc=$?"; tail -5 $OUTD/bench.log; el "bench"
# 2. batched TTT-MAE against the per-image loop (issue 13)
if [ "${T_TTT:-100}" != 0 ]; then
  timeout -k 5 ${T_TTT:-100} $PY benchmarks/ttt_mae_batched.py --device $DEV --configs ${TTT_CONFIGS:-tiny:128,tiny:32} \
    --images ${TTT_IMAGES:-64} --steps 2 --repeats 3 --no-profile ${TTT_CHUNK:+--chunk $TTT_CHUNK} \
    --out $OUTD/ttt_mae_batched > $OUTD/ttt.log 2>&1
  echo "ttt rc=$?"; tail -8 $OUTD/ttt.log; el "ttt"
fi
# 3. the demo recipe with its defaults (bf16 auto, compile auto = on for CUDA)
if [ "$DEV" = cuda ]; then mkdir -p /usr/share/datasets/fashion-mnist && cp .gpu/fmnist/* /usr/share/datasets/fashion-mnist/; fi
timeout -k 5 ${T_DEMO:-120} $PY -c "import sys; from mimkit.cli import main; sys.exit(main(sys.argv[1:]))" train \
  examples/fashion_mnist_mae.yaml --overwrite --set name=gpu_demo --set output_dir=/tmp/runs ${DEMO_SET:-} > $OUTD/demo.log 2>&1
echo "demo rc=$?"; tail -3 $OUTD/demo.log; el "demo"
for f in meta.json metrics.jsonl; do cp /tmp/runs/gpu_demo/$f $OUTD/demo_$f 2>/dev/null; done
el "done"
