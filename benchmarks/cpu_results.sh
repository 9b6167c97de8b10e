#!/usr/bin/env bash
# Produces benchmarks/cpu/*: the CPU tables of benchmarks/cpu_results.md. Run from the repository root
# on an otherwise idle machine; TORCH_PY is a Python with torch (for the machine anchor only).
set -euo pipefail
OUT=benchmarks/cpu
TORCH_PY=${TORCH_PY:-python}
FLAGSHIPS=resnet50,nommer_t,cotnet50,lesa_resnet50,salg_t,swin_t
mkdir -p $OUT
taskset -c 0 $TORCH_PY benchmarks/torch_anchor.py --threads 1 > $OUT/anchor_1t.json
$TORCH_PY benchmarks/torch_anchor.py --threads 2 > $OUT/anchor_2t.json
python -m lgvit.benchmark --xla-cpu-eigen --models all --mode infer --out $OUT/infer_2t | tee $OUT/infer_2t.txt
python -m lgvit.benchmark --xla-cpu-eigen --models $FLAGSHIPS --mode train --warmup 1 --repeats 5 --out $OUT/train_2t | tee $OUT/train_2t.txt
python -m lgvit.benchmark --xla-cpu-eigen --models $FLAGSHIPS --mode infer --threads 1 --out $OUT/infer_1t | tee $OUT/infer_1t.txt
python -m lgvit.benchmark --xla-cpu-eigen --models $FLAGSHIPS --mode train --threads 1 --warmup 1 --repeats 5 --out $OUT/train_1t | tee $OUT/train_1t.txt
python benchmarks/compare_official.py $OUT | tee $OUT/compare.md
# The same inference table under XLA's default CPU flags (YNNPACK), for comparison.
python -m lgvit.benchmark --models $FLAGSHIPS --mode infer --out $OUT/infer_2t_default | tee $OUT/infer_2t_default.txt
