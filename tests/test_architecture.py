"""The shape of the package (docs/architecture.md): no import cycle, libraries that import no CLI, an import
that leaves the environment alone, a training loop that names no task, inference without TensorFlow."""
import ast
import io
import json
import os
import pathlib
import re
import subprocess
import sys
import tokenize

import pytest

from conftest import subprocess_env

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'docs'))
from module_graph import CLI_MODULES, find_cycle, import_graph, markdown, runnable_modules  # noqa: E402

#: Library code, which a CLI may import but which must not import a CLI (issue #33).
LIBRARY_PACKAGES = ('lgvit.data', 'lgvit.models', 'lgvit.tasks')
LIBRARY_MODULES = ('lgvit.train',)
#: The task-agnostic entry points: the task is a config's choice, looked up by name in lgvit/tasks/.
TASK_AGNOSTIC_FILES = ('lgvit/train.py', 'lgvit/evaluate.py', 'main.py')


def test_lgvit_has_no_import_cycle():
  graph = import_graph()
  assert {'lgvit.train', 'lgvit.models.registry', 'lgvit.predict'} <= set(graph)
  assert find_cycle(graph) is None, ' -> '.join(find_cycle(graph))
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']  # the check can fail


def test_module_graph_resolves_every_kind_of_import(tmp_path):
  files = {
      'lgvit/__init__.py': '',
      'lgvit/a.py': 'import importlib\nfrom . import b\nfrom lgvit.sub.c import name\n'
                    'def f():\n  from .sub import c\n  return importlib.import_module("lgvit.d")\n',
      'lgvit/b.py': 'import lgvit.sub\nimport os\n',
      'lgvit/d.py': 'from lgvit import missing\n',
      'lgvit/sub/__init__.py': 'from ..b import something\n',
      'lgvit/sub/c.py': 'from . import name_in_package\n',
      'main.py': 'import lgvit.a\n',
  }
  for path, text in files.items():
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_text(text)
  assert import_graph(tmp_path) == {'lgvit': set(), 'lgvit.a': {'lgvit.b', 'lgvit.sub.c', 'lgvit.d'},
                                    'lgvit.b': {'lgvit.sub'}, 'lgvit.d': {'lgvit'}, 'lgvit.sub': {'lgvit.b'},
                                    'lgvit.sub.c': {'lgvit.sub'}, 'main': {'lgvit.a'}}
  assert find_cycle(import_graph(tmp_path)) == ['lgvit.b', 'lgvit.sub', 'lgvit.b']


def test_architecture_md_before_chart_is_the_scripts():
  # docs/architecture.md pastes `python docs/module_graph.py --rev ac06545 --format markdown`; a checkout without
  # that commit (a shallow clone) cannot redraw it.
  if subprocess.run(['git', 'cat-file', '-e', 'ac06545^{commit}'], cwd=REPO, capture_output=True).returncode:
    pytest.skip('commit ac06545 is not in this checkout')
  assert markdown(import_graph('ac06545')) in (REPO / 'docs' / 'architecture.md').read_text()


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
  """The modules ``start`` imports, directly or through others."""
  seen, todo = set(), [start]
  while todo:
    for nxt in graph.get(todo.pop(), set()) - seen:
      seen.add(nxt)
      todo.append(nxt)
  return seen


def library_cli_imports(graph: dict[str, set[str]], through_others: bool = False) -> set[tuple[str, str]]:
  """(library module, CLI module) for every import of a CLI module by lgvit/data, lgvit/models, lgvit/tasks or
  lgvit/train.py: direct ones, or also those through other modules."""
  def is_library(module):
    return module in LIBRARY_MODULES or any(module == p or module.startswith(p + '.') for p in LIBRARY_PACKAGES)

  return {(m, t) for m in graph if is_library(m)
          for t in (reachable(graph, m) if through_others else graph[m]) & CLI_MODULES}


def test_libraries_import_no_cli_module():
  graph = import_graph()
  # CLI_MODULES must name the real commands, or the check below would pass by missing one. lgvit.data.ade20k and
  # lgvit.data.coco are TFDS builders that can also prepare their datasets (`python -m lgvit.data.coco`): libraries.
  assert CLI_MODULES <= set(graph), CLI_MODULES - set(graph)
  assert runnable_modules() - CLI_MODULES <= {'lgvit.data.ade20k', 'lgvit.data.coco'}, runnable_modules() - CLI_MODULES
  assert library_cli_imports(graph) == set(), sorted(library_cli_imports(graph))
  # Nor through a module outside those folders (ac06545: train -> evals -> predict).
  assert library_cli_imports(graph, through_others=True) == set(), sorted(library_cli_imports(graph, True))
  fake = {'lgvit.train': {'lgvit.predict', 'lgvit.evals'}, 'lgvit.data.pipeline': {'lgvit.cli'},
          'lgvit.tasks.segmentation': {'lgvit.convert.__main__'}, 'lgvit.evaluate': {'lgvit.cli'},
          'lgvit.trainer': {'lgvit.cli'}, 'lgvit.evals': {'lgvit.visualize'}}
  direct = {('lgvit.train', 'lgvit.predict'), ('lgvit.data.pipeline', 'lgvit.cli'),
            ('lgvit.tasks.segmentation', 'lgvit.convert.__main__')}
  assert library_cli_imports(fake) == direct  # the checks can fail
  assert library_cli_imports(fake, through_others=True) == direct | {('lgvit.train', 'lgvit.visualize')}


#: Imports each argument's comma-separated modules in turn; prints what each step changed in os.environ.
_ENVIRON_PROBE = """
import json, os, sys
changed = {}
for step in sys.argv[1:]:
  before = dict(os.environ)
  for name in step.split(','):
    __import__(name)
  after = dict(os.environ)
  changed[step] = {k: [before.get(k), after.get(k)] for k in before.keys() | after.keys()
                   if before.get(k) != after.get(k)}
print(json.dumps(changed))
"""
#: What lgvit builds on, imported before lgvit's modules are: they set variables of their own (TensorFlow's KMP_*,
#: TPU_ML_PLATFORM, HDF5_PLUGIN_PATH), which are not lgvit's doing.
_LIBRARIES = 'jax,flax,optax,orbax.checkpoint,tensorflow,tensorflow_datasets'


def test_import_lgvit_leaves_environ_unchanged():
  # A fresh interpreter: this one's environment was changed by conftest (XLA_FLAGS), and lgvit is imported here.
  # LGVIT_XLA_CPU_KERNELS=eigen asks for a flag, which a program adds when it starts (lgvit.cpu_kernels.use), never
  # an import. `import lgvit` comes first, before any library, so it must change nothing at all.
  # tests/test_cpu_kernels.py imports every module of lgvit the same way.
  env = subprocess_env(JAX_PLATFORMS='cpu', LGVIT_XLA_CPU_KERNELS='eigen')
  steps = ('lgvit', _LIBRARIES, 'lgvit.train,lgvit.models,lgvit.tasks')
  proc = subprocess.run([sys.executable, '-c', _ENVIRON_PROBE, *steps], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  changed = json.loads(proc.stdout.strip().splitlines()[-1])  # {step: {variable: [before, after]}}
  assert changed['lgvit'] == {} and changed[steps[2]] == {}, changed


def task_names() -> set[str]:
  """The tasks: the modules of lgvit/tasks/ (one per task; base.py is the interface, a leading underscore marks a
  helper), and the names their task classes register under (a class attribute ``name = '...'``)."""
  modules = [p for p in (REPO / 'lgvit' / 'tasks').glob('*.py') if p.stem != 'base' and not p.stem.startswith('_')]
  registered = {node.value.value for p in modules for cls in ast.parse(p.read_text()).body
                if isinstance(cls, ast.ClassDef) for node in cls.body
                if isinstance(node, ast.Assign) and [getattr(t, 'id', None) for t in node.targets] == ['name']
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str) and node.value.value}
  return {p.stem for p in modules} | registered


def words(text: str) -> list[str]:
  """The lower-case words of an identifier or a string: split at non-letters, underscores and camelCase."""
  return [w.lower() for w in re.findall(r'[A-Z]?[a-z]+|[A-Z]+(?![a-z])', text)]


def task_mentions(source: str, names: set[str]) -> list[tuple[int, str]]:
  """(line, token) for every identifier (NAME token) and string literal that has a task name as a word
  (``segmentation``, ``SegmentationTask``, ``'configs/segmentation.py'``, the text of f-strings). Comments and
  docstrings do not count: they may say in prose what the code must not decide."""
  docstrings = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
      first = node.body[0]
      if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        docstrings.add((first.lineno, first.col_offset))
  kinds = {tokenize.NAME, tokenize.STRING, getattr(tokenize, 'FSTRING_MIDDLE', tokenize.STRING)}  # 3.12: f-strings
  return [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(io.StringIO(source).readline)
          if tok.type in kinds and tok.start not in docstrings and names & set(words(tok.string))]


def test_entry_points_name_no_task():
  """lgvit/train.py, lgvit/evaluate.py and main.py name no task (a module of lgvit/tasks/) in an identifier or a
  string literal: a config names its task and lgvit.tasks looks it up, so adding a task leaves them unchanged."""
  if not (REPO / 'lgvit' / 'tasks').is_dir():
    pytest.skip('lgvit/tasks/ does not exist yet (issue #33 moves the task code there)')
  names = task_names()
  assert {'classification', 'segmentation'} <= names, names
  found = {f: task_mentions((REPO / f).read_text(), names) for f in TASK_AGNOSTIC_FILES}
  assert found == {f: [] for f in TASK_AGNOSTIC_FILES}, {f: m for f, m in found.items() if m}
  sample = '''"""Trains any task; segmentation too."""
# classification or segmentation
def f(x):
  """Prose: classification."""
  SegmentationTask = x
  return f'{x}/classification', 'Segmentation_task', 'segmentations', x.segmentation
'''
  assert [line for line, _ in task_mentions(sample, names)] == [5, 6, 6, 6]  # the check can fail


def test_inference_modules_do_not_import_training_or_tensorflow():
  graph = import_graph()
  for module in ('lgvit.predict', 'lgvit.export', 'lgvit.visualize', 'lgvit.inference', 'lgvit.exporting',
                 'lgvit.introspection', 'lgvit.data.classes', 'lgvit.modeling', 'lgvit.checkpoint'):
    assert not reachable(graph, module) & {'lgvit.train', 'lgvit.data.pipeline', 'lgvit.data.augment'}, module


def test_export_predict_visualize_run_without_tensorflow(tmp_path):
  env = subprocess_env(PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / 'tests')]))
  proc = subprocess.run([sys.executable, 'tests/helpers/inference_without_tf.py', str(tmp_path)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report['codes'] == {'export': 0, 'predict_workdir': 0, 'predict_export': 0, 'visualize': 0}, proc.stdout
  assert report['loaded'] == [], report
  assert 'image.jpeg' in proc.stdout and (tmp_path / 'pics' / 'nommer_nominations.png').is_file()
