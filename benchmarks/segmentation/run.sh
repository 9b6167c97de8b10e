#!/bin/bash
# UperNet CPU benchmark at 512x512 (docs/segmentation.md): inference at batch 2, a train step
# (forward, decode + 0.4 aux pixel cross-entropy, backward, SGD) at batch 1; load and CPU logged.
set -e
cd "$(dirname "$0")/../.."
OUT=benchmarks/segmentation
{ date -u; lscpu | grep -E 'Model name|^CPU\(s\)'; uptime; } > $OUT/machine.txt
python -m lgvit.benchmark --models upernet_nommer_t,upernet_swin_t --mode infer --batch 2 --size 512 \
  --warmup 1 --repeats 3 --out $OUT/infer_b2 | tee $OUT/infer_b2.txt
uptime >> $OUT/machine.txt
python -m lgvit.benchmark --models upernet_nommer_t,upernet_swin_t --mode train --batch 1 --size 512 \
  --warmup 1 --repeats 2 --out $OUT/train_b1 | tee $OUT/train_b1.txt
uptime >> $OUT/machine.txt
