#!/bin/bash
# FLIP tiny (reduced: 64-d x 2 image tower, 64-d x 1 text tower, batch 64) at mask ratio 0.5 vs 0.0, run side by side (same machine load),
# both stopped by SIGTERM after the same wall-clock budget; the trainer checkpoints and exits.
cd "$(dirname "$0")/../.."
mkdir -p "${OUT:-runs/bench_language}"
export OMP_NUM_THREADS=1  # one thread per run: with 2 threads on a shared, oversubscribed CPU, OpenMP barriers spin and a step is ~10x slower
BUDGET=${BUDGET:-420}
for r in 0.5 0.0; do
  .venv/bin/mim train flip_tiny_fashion_mnist --set name=flip_r$r --set output_dir=${OUT:-runs/bench_language} \
    --set model.masker.ratio=$r --set model.unmasked_tuning=0.0 \
    --set model.encoder.embed_dim=64 --set model.encoder.depth=2 --set model.encoder.num_heads=2 --set model.text.width=64 --set model.text.depth=1 --set model.text.num_heads=2 --set model.embed_dim=64 --set train.batch_size=64 --set optim.lr=1.0e-3 \
    --set optim.warmup_epochs=0.02 --set train.epochs=1 --set train.log_every=5 \
    --set train.progress=false --set train.visualize=false --overwrite > ${OUT:-runs/bench_language}/flip_r$r.log 2>&1 &
  echo $! > ${OUT:-runs/bench_language}/flip_r$r.pid
done
sleep $BUDGET
for r in 0.5 0.0; do kill -TERM $(cat ${OUT:-runs/bench_language}/flip_r$r.pid); done
wait
echo finished
