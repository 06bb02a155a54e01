#!/bin/bash
# MILAN tiny (teacher: the FLIP ratio-0.5 run) vs MAE tiny, same encoder (64-d x 2), batch 64, side by side,
# both stopped by SIGTERM after the same wall-clock budget.
cd "$(dirname "$0")/../.."
mkdir -p "${OUT:-runs/bench_language}"
export OMP_NUM_THREADS=1  # one thread per run: with 2 threads on a shared, oversubscribed CPU, OpenMP barriers spin and a step is ~10x slower
BUDGET=${BUDGET:-420}
ENC="--set model.encoder.embed_dim=64 --set model.encoder.depth=2 --set model.encoder.num_heads=2 --set train.batch_size=64"
COMMON="--set output_dir=${OUT:-runs/bench_language} --set optim.warmup_epochs=0.02 --set train.epochs=1 --set train.log_every=5 --set train.progress=false --set train.visualize=false --overwrite"
.venv/bin/mim train milan_tiny_fashion_mnist --set name=milan_t $ENC --set model.teacher.source=${OUT:-runs/bench_language}/flip_r0.5 $COMMON > ${OUT:-runs/bench_language}/milan_t.log 2>&1 &
echo $! > ${OUT:-runs/bench_language}/milan_t.pid
.venv/bin/mim train mae_tiny_fashion_mnist --set name=mae_t $ENC $COMMON > ${OUT:-runs/bench_language}/mae_t.log 2>&1 &
echo $! > ${OUT:-runs/bench_language}/mae_t.pid
sleep $BUDGET
kill -TERM $(cat ${OUT:-runs/bench_language}/milan_t.pid) $(cat ${OUT:-runs/bench_language}/mae_t.pid)
wait
echo finished
