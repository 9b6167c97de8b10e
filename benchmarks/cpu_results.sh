#!/usr/bin/env bash
# Produces benchmarks/cpu/*: the CPU tables of benchmarks/cpu_results.md. Run from the repository root
# on an otherwise idle machine; TORCH_PY is a Python with torch (for the machine anchor only).
#
# A cloud VM's speed drifts by tens of percent over minutes, so the torch anchor is timed right
# before and right after each block of lgvit timings; compare_official.py uses the mean of the two
# and prints their spread.
set -euo pipefail
OUT=benchmarks/cpu
TORCH_PY=${TORCH_PY:-python}
FLAGSHIPS=resnet50,nommer_t,cotnet50,lesa_resnet50,salg_t,swin_t
mkdir -p $OUT
anchor() {  # anchor THREADS SUFFIX
  if [ "$1" = 1 ]; then taskset -c 0 $TORCH_PY benchmarks/torch_anchor.py --threads 1 > $OUT/anchor_1t_$2.json
  else $TORCH_PY benchmarks/torch_anchor.py --threads 2 > $OUT/anchor_2t_$2.json; fi
}
for T in 2 1; do
  PIN=$([ $T = 1 ] && echo 1 || echo 0)  # lgvit.benchmark --threads: 1 = one pinned core, 0 = all
  anchor $T before
  python -m lgvit.benchmark --xla-cpu-eigen --models $FLAGSHIPS --mode infer --threads $PIN --out $OUT/infer_${T}t | tee $OUT/infer_${T}t.txt
  python -m lgvit.benchmark --xla-cpu-eigen --models $FLAGSHIPS --mode train --threads $PIN --warmup 1 --repeats 5 --out $OUT/train_${T}t | tee $OUT/train_${T}t.txt
  anchor $T after
done
python benchmarks/compare_official.py $OUT | tee $OUT/compare.md
# Every registered model (inference, 2 cores), and the flagships under XLA's default CPU flags (YNNPACK).
python -m lgvit.benchmark --xla-cpu-eigen --models all --mode infer --out $OUT/infer_2t_all | tee $OUT/infer_2t_all.txt
python -m lgvit.benchmark --models $FLAGSHIPS --mode infer --out $OUT/infer_2t_default | tee $OUT/infer_2t_default.txt
