"""The shape of the package: no import cycle, and inference that runs without TensorFlow."""
import ast
import json
import os
import pathlib
import subprocess
import sys

from conftest import subprocess_env

REPO = pathlib.Path(__file__).resolve().parents[1]


def import_graph() -> dict[str, set[str]]:
  """Module -> the lgvit modules it imports (anywhere in its body, functions included)."""
  files = {}
  for path in (REPO / 'lgvit').rglob('*.py'):
    parts = path.relative_to(REPO).with_suffix('').parts
    files['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path

  def target(name):  # 'lgvit.models.layers' if that is a module, else the package that holds the name
    return name if name in files else name.rsplit('.', 1)[0]

  graph = {}
  for module, path in files.items():
    package = module if path.name == '__init__.py' else module.rsplit('.', 1)[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        edges |= {target(a.name) for a in node.names if a.name.startswith('lgvit')}
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:
          base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1] + ([base] if base else []))
        if base.startswith('lgvit'):
          edges |= {target(f'{base}.{a.name}') for a in node.names}
    graph[module] = {e for e in edges if e in files and e != module}
  return graph


def find_cycle(graph):
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 'open':
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    state[node] = 'done'
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_lgvit_has_no_import_cycle():
  graph = import_graph()
  assert {'lgvit.train', 'lgvit.models.registry', 'lgvit.predict'} <= set(graph)
  assert find_cycle(graph) is None, ' -> '.join(find_cycle(graph))
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']  # the check can fail


def test_inference_modules_do_not_import_training_or_tensorflow():
  graph = import_graph()

  def reachable(start):
    seen, todo = set(), [start]
    while todo:
      for nxt in graph[todo.pop()] - seen:
        seen.add(nxt)
        todo.append(nxt)
    return seen

  for module in ('lgvit.predict', 'lgvit.export', 'lgvit.visualize', 'lgvit.modeling', 'lgvit.checkpoint'):
    assert not reachable(module) & {'lgvit.train', 'lgvit.data.pipeline', 'lgvit.data.augment'}, module


def test_export_predict_visualize_run_without_tensorflow(tmp_path):
  env = subprocess_env(PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / 'tests')]))
  proc = subprocess.run([sys.executable, 'tests/helpers/inference_without_tf.py', str(tmp_path)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report['codes'] == {'export': 0, 'predict_workdir': 0, 'predict_export': 0, 'visualize': 0}, proc.stdout
  assert report['loaded'] == [], report
  assert 'image.jpeg' in proc.stdout and (tmp_path / 'pics' / 'nommer_nominations.png').is_file()
