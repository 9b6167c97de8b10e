#!/bin/bash
# Generates the raw logs behind benchmarks/tpu_aot.md, one model per process, most telling first.
#   nohup bash benchmarks/tpu_aot.sh > benchmarks/tpu_aot_logs/run.log 2>&1 &
# Each row is appended to benchmarks/tpu_aot_logs/<table>.log as soon as its compile ends, and
# `python benchmarks/tpu_aot_table.py` turns the logs into the tables.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/tpu_aot_logs
mkdir -p $OUT
FLAGSHIPS=${FLAGSHIPS:-"cotnet50 lesa_wrn50 se_cotnetd152 salg_s nommer_b"}
run() {  # run TABLE ARGS...
  local log=$OUT/$1.log; shift
  echo "### $(date -u +%FT%TZ) python -m lgvit.aot $*" >> $log
  $PY -m lgvit.aot "$@" 2>&1 | grep -E '^(v[0-9]|model |\||error)| does not fit: ' >> $log
}
done_in() { grep -q "^| $2 |" $OUT/$1.log 2>/dev/null; }  # skip what a log already holds
# 1. The multi-host compile (v4-32: 4 hosts, 16 chips): the sharding over several processes.
done_in multihost_v4_32 resnet50 || run multihost_v4_32 --topology v4:2x2x4 --models resnet50 --dtype bfloat16 \
  --batch-per-chip 32 --search none
# 2. Flagships at their recipe batch on v5e-8, native and CPU-rewrite kernels.
for m in $FLAGSHIPS; do
  done_in v5e8_native $m || run v5e8_native --topology v5e:2x4 --models $m --dtype bfloat16 --search one --bytes
  done_in v5e8_cpu $m || run v5e8_cpu --topology v5e:2x4 --models $m --dtype bfloat16 --search none --bytes --kernels cpu
done
# 3. Flagships on v4-8, then every other variant on both.
for m in $FLAGSHIPS; do
  done_in v4_8 $m || run v4_8 --topology v4:2x2x1 --models $m --dtype bfloat16 --search one
done
# MODELS="a b" restricts (and orders) the other variants, e.g. to finish the cheap ones first.
OTHERS=${MODELS:-$($PY -c "from lgvit.models import list_models; print(' '.join(n for n in list_models(task='classification') if n not in '$FLAGSHIPS'.split()))")}
# REVERSE=1 walks the other variants from the end: a second instance on a host with cores and memory
# to spare meets the first in the middle (keep one of them away from the NomMer-B/384 compiles' ~12+ GB).
[ "${REVERSE:-0}" = 1 ] && OTHERS=$(echo $OTHERS | tr ' ' '\n' | tac | tr '\n' ' ')
for m in $OTHERS; do
  done_in v5e8_native $m || run v5e8_native --topology v5e:2x4 --models $m --dtype bfloat16 --search one --bytes
  done_in v4_8 $m || run v4_8 --topology v4:2x2x1 --models $m --dtype bfloat16 --search one
done
