"""Assembles the tables of benchmarks/tpu_aot.md from the logs of benchmarks/tpu_aot.sh.

    python benchmarks/tpu_aot_table.py > /tmp/tables.md
"""
import glob
import os

FLAGSHIPS = ('nommer_b', 'cotnet50', 'se_cotnetd152', 'salg_s', 'lesa_wrn50')
LOGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tpu_aot_logs')


def rows(log):
  """{model: {column: value}} from the markdown rows a log holds (the last run of a model wins)."""
  out, header = {}, None
  path = os.path.join(LOGS, log + '.log')
  for line in open(path) if os.path.exists(path) else ():
    if line.startswith('| model'):
      header = [c.strip() for c in line.strip().strip('|').split('|')]
    elif line.startswith('| ') and header and not line.startswith('|---'):
      cells = [c.strip() for c in line.strip().strip('|').split('|')]
      out[cells[0]] = dict(zip(header, cells))
  return out


def main():
  native, cpu, v4 = rows('v5e8_native'), rows('v5e8_cpu'), rows('v4_8')
  cols = ('batch/chip', 'total GiB', 'fits', 'max batch/chip')
  print('| model | v5e-8: ' + ' | v5e-8: '.join(cols) + ' | v4-8: ' + ' | v4-8: '.join(cols) + ' |')
  print('|' + '---|' * (1 + 2 * len(cols)))
  for m in sorted(set(native) | set(v4)):
    cells = [native.get(m, {}).get(c, '–') for c in cols] + [v4.get(m, {}).get(c, '–') for c in cols]
    print(f'| {m} | ' + ' | '.join(cells) + ' |')
  print()
  print('| model | kernels | batch/chip | args GiB | temp GiB | total GiB | MB accessed/img | GFLOP/img |')
  print('|---|---|---|---|---|---|---|---|')
  for m in [f for f in FLAGSHIPS if f in native or f in cpu]:
    for path, table in (('native', native), ('cpu', cpu)):
      r = table.get(m)
      if r:
        print(f"| {m} | {path} | {r['batch/chip']} | {r['args GiB']} | {r['temp GiB']} | {r['total GiB']} | "
              f"{r.get('MB accessed/img', '–')} | {r['GFLOP/img']} |")
  for log in sorted(glob.glob(os.path.join(LOGS, 'multihost*.log'))):
    print()
    print(open(log).read().strip())


if __name__ == '__main__':
  main()
