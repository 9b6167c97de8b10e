"""docs/launch.md's commands run as written: every ``main.py`` line parses (flags, config file, config
fields), and its explicit multi-process form is the one tests/test_distributed.py runs.

The lines are checked with ``main.py ... --only_check_args``: absl parses the flags and main.py's
parser loads the config with its overrides, then exits before anything is imported or trained.
"""
import pathlib
import re
import shlex
import subprocess
import sys

import pytest
from conftest import subprocess_env

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / 'docs' / 'launch.md'
SEPARATORS = {'&&', '||', ';', '|', 'do', 'then', 'done'}
DISTRIBUTED_FLAGS = ('--coordinator_address', '--num_processes', '--process_id')


def shell_lines(markdown: str) -> list[str]:
  """The lines of the ```bash blocks (backslash continuations joined) and the inline `... main.py --...`."""
  lines = []
  for block in re.findall(r'```bash\n(.*?)```', markdown, re.S):
    lines += block.replace('\\\n', ' ').splitlines()
  outside_blocks = re.sub(r'```.*?```', '', markdown, flags=re.S)
  return lines + re.findall(r'`([^`\n]*main\.py --[^`\n]*)`', outside_blocks)


def main_py_commands(line: str) -> list[list[str]]:
  """The arguments of every ``main.py`` invocation in a shell line, also inside quoted ``--command=``."""
  commands = []
  tokens = shlex.split(line, comments=True)
  for i, token in enumerate(tokens):
    if ' ' in token and 'main.py' in token:  # a quoted command line: ssh --command="... main.py ..."
      commands += main_py_commands(token.split('=', 1)[1] if token.startswith('--') else token)
    elif token.endswith('main.py'):
      args = []
      for arg in tokens[i + 1:]:
        if arg in SEPARATORS:
          break
        args.append(arg.rstrip(';'))
        if arg.endswith(';'):
          break
      commands.append(args)
  return commands


def doc_commands() -> list[list[str]]:
  return [c for line in shell_lines(LAUNCH.read_text()) for c in main_py_commands(line)]


def test_the_extraction_finds_quoted_continued_and_looped_invocations():
  doc = ('```bash\ngcloud ssh --command="cd x && .venv/bin/python main.py --config=c.py --multihost"\n'
         'srun python main.py \\\n  --workdir=w\n```\n'
         'loop: `until python main.py --workdir=/w; [ $? -ne 75 ]; do :; done`, '
         'not `main.py` alone\n')
  commands = [c for line in shell_lines(doc) for c in main_py_commands(line)]
  assert commands == [['--config=c.py', '--multihost'], ['--workdir=w'], ['--workdir=/w']]


def test_launch_doc_has_each_setting():
  commands = doc_commands()
  text = LAUNCH.read_text()
  assert len(commands) >= 6
  assert '--worker=all' in text and '#SBATCH' in text and 'srun ' in text and 'jax[cuda' in text
  assert any('--multihost' in c for c in commands)  # the TPU slice
  assert any(a.startswith('--workdir=gs://') or '$BUCKET' in a for c in commands for a in c)


@pytest.mark.parametrize('args', doc_commands(), ids=lambda args: ' '.join(args)[:60])
def test_every_main_py_line_in_the_launch_doc_parses(args):
  args = [re.sub(r'\$\w+', 'gs://my-bucket', a) for a in args]  # the shell variables of the TPU block
  result = subprocess.run([sys.executable, 'main.py', *args, '--only_check_args'], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, f'main.py {" ".join(args)}: {result.stderr.strip()}'


def test_the_explicit_multi_process_form_is_the_one_the_distributed_test_runs():
  """The flags of the doc's no-cluster-manager commands are those of test_distributed.py's two-process run."""
  explicit = [c for c in doc_commands() if any(a.startswith('--coordinator_address') for a in c)]
  assert len(explicit) >= 2
  used_by_doc = {a.split('=')[0] for c in explicit for a in c if a.split('=')[0] in DISTRIBUTED_FLAGS}
  test_source = (REPO / 'tests' / 'test_distributed.py').read_text()
  used_by_test = {flag for flag in DISTRIBUTED_FLAGS if f"'{flag}=" in test_source or f"f'{flag}=" in test_source}
  assert used_by_doc == used_by_test == set(DISTRIBUTED_FLAGS)
  # One command per process: the same line but for --process_id, which runs 0..N-1.
  process_ids = sorted(int(a.split('=')[1]) for c in explicit for a in c if a.startswith('--process_id='))
  num = {int(a.split('=')[1]) for c in explicit for a in c if a.startswith('--num_processes=')}
  assert len(num) == 1 and process_ids == list(range(num.pop()))
  assert len({tuple(a for a in c if not a.startswith('--process_id=')) for c in explicit}) == 1
