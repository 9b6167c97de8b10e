"""lgvit's module graph, read from the source with ``ast`` (nothing is imported), for docs/architecture.md.

    python docs/module_graph.py                      # the working tree, as a mermaid flowchart
    python docs/module_graph.py --rev ac06545        # a git revision (read with git show, no checkout)
    python docs/module_graph.py --format layers      # the layers only, and the imports between them
    python docs/module_graph.py --format markdown    # both charts, as docs/architecture.md shows them
    python docs/module_graph.py --format text        # an adjacency list, one module a line

An edge ``a -> b`` means module ``a`` imports lgvit module ``b`` somewhere in its body (functions
included, relative imports resolved, ``importlib.import_module('lgvit....')`` with a literal name too);
``from lgvit.x import name`` goes to ``lgvit.x.name`` where that is a module, else to ``lgvit.x``.
The nodes are every module under ``lgvit/`` and ``main``, the training entry point (``main.py``).
tests/test_architecture.py checks its rules with :func:`import_graph`, :func:`find_cycle`, :data:`CLI_MODULES` and
:func:`runnable_modules`, and that the Before chart of docs/architecture.md is :func:`markdown`'s.
Standard library only.
"""
from __future__ import annotations

import argparse
import ast
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

#: The modules run as ``python -m`` commands, and their shared helpers (lgvit.cli). Libraries must not import
#: them (tests/test_architecture.py); ``main`` (main.py) is the other entry point.
CLI_MODULES = frozenset({
    'lgvit.predict', 'lgvit.evaluate', 'lgvit.export', 'lgvit.visualize', 'lgvit.benchmark', 'lgvit.aot',
    'lgvit.convert.__main__', 'lgvit.cli'})

#: The drawing's groups, in order: (key, title).
LAYERS = (('entry', 'Entry points and CLIs'), ('training', 'Training and evaluation'), ('tasks', 'Tasks'),
          ('data', 'Data'), ('models', 'Models and weight conversion'), ('shared', 'Shared'))
_TRAINING = {'lgvit.train', 'lgvit.optim', 'lgvit.bookkeeping', 'lgvit.evals'}
# Task-specific code from before lgvit/tasks/ existed (issue #33), drawn with the tasks.
_TASK_MODULES = {'lgvit.segmentation_task', 'lgvit.segmentation'}


def layer(module: str) -> str:
  """The group of docs/architecture.md's drawing that ``module`` belongs to (a key of :data:`LAYERS`)."""
  if module in CLI_MODULES or module == 'main':
    return 'entry'
  if module in _TRAINING:
    return 'training'
  if module in _TASK_MODULES or _under(module, 'lgvit.tasks'):
    return 'tasks'
  if _under(module, 'lgvit.data'):
    return 'data'
  if _under(module, 'lgvit.models') or _under(module, 'lgvit.convert'):
    return 'models'
  return 'shared'


def _under(module: str, package: str) -> bool:
  return module == package or module.startswith(package + '.')


def read_sources(source: str | pathlib.Path | None = None) -> dict[str, tuple[str, str]]:
  """Module -> (path relative to the repository, source text), for ``lgvit/**.py`` and ``main.py``.

  ``source``: None reads this repository's working tree; a ``pathlib.Path`` reads the checkout at that
  directory; a ``str`` is a git revision of this repository, read with ``git ls-tree``/``git show``.
  """
  if source is None or isinstance(source, pathlib.Path):
    root = REPO if source is None else source
    paths = sorted(p.relative_to(root).as_posix() for p in (root / 'lgvit').rglob('*.py'))
    paths += ['main.py'] if (root / 'main.py').is_file() else []
    return {_module_name(p): (p, (root / p).read_text()) for p in paths}
  listed = _git('ls-tree', '-r', '--name-only', source, '--', 'lgvit', 'main.py').splitlines()
  return {_module_name(p): (p, _git('show', f'{source}:{p}')) for p in sorted(listed) if p.endswith('.py')}


def _git(*args: str) -> str:
  proc = subprocess.run(['git', '-C', str(REPO), *args], capture_output=True, text=True)
  if proc.returncode:
    raise SystemExit(f'error: git {" ".join(args)}: {proc.stderr.strip()}')
  return proc.stdout


def _module_name(path: str) -> str:
  parts = pathlib.PurePosixPath(path).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _imported_names(tree: ast.AST, package: str):
  """Every name an import in ``tree`` reaches: ``x.y`` for ``import x.y``, ``x.name`` for ``from x import name``."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:  # `from ..x import y` in package a.b.c: a.b.x.y
        parts = package.split('.')
        base = '.'.join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      yield from (f'{base}.{a.name}' for a in node.names)
    elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
          and isinstance(node.args[0].value, str)
          and getattr(node.func, 'attr', getattr(node.func, 'id', None)) == 'import_module'):
      yield node.args[0].value


def import_graph(source: str | pathlib.Path | None = None) -> dict[str, set[str]]:
  """Module -> the lgvit modules it imports directly. ``source`` as in :func:`read_sources`."""
  files = read_sources(source)

  def target(name):  # 'lgvit.models.layers' if that is a module, else the package that holds the name
    return name if name in files else name.rsplit('.', 1)[0]

  graph = {}
  for module, (path, text) in files.items():
    package = module if path.endswith('__init__.py') else module.rsplit('.', 1)[0]
    edges = {target(n) for n in _imported_names(ast.parse(text, path), package) if _under(n, 'lgvit')}
    graph[module] = {e for e in edges if e in files and e != module}
  return graph


def runnable_modules(source: str | pathlib.Path | None = None) -> set[str]:
  """The lgvit modules that ``python -m`` runs: a ``__main__.py`` or an ``if __name__ == '__main__':`` block."""
  found = set()
  for module, (path, text) in read_sources(source).items():
    if module.startswith('lgvit') and (path.endswith('__main__.py') or any(
        isinstance(n, ast.If) and "__name__ == '__main__'" in ast.unparse(n.test) for n in ast.parse(text).body)):
      found.add(module)
  return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as ``[a, b, ..., a]`` (depth-first, in sorted order), or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
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


def _label(module: str) -> str:
  if module == 'main':
    return 'main.py'
  if module == 'lgvit':
    return 'lgvit/__init__'
  return module.removeprefix('lgvit.')


def _node_id(module: str) -> str:
  return module.replace('.', '_')


def mermaid(graph: dict[str, set[str]]) -> str:
  """A mermaid ``flowchart``, one subgraph per layer; arrows from a module to what it imports."""
  lines = ['flowchart LR']
  for key, title in LAYERS:
    members = sorted(m for m in graph if layer(m) == key)
    if members:
      lines.append(f'  subgraph {key}["{title}"]')
      lines += [f'    {_node_id(m)}["{_label(m)}"]' for m in members]
      lines.append('  end')
  for module in sorted(graph):
    lines += [f'  {_node_id(module)} --> {_node_id(t)}' for t in sorted(graph[module])]
  return '\n'.join(lines)


def layers_mermaid(graph: dict[str, set[str]]) -> str:
  """A mermaid ``flowchart`` of the layers: an arrow where modules of one import modules of another, labelled
  with the imports where there are at most three (the exceptions one looks for), else with their number."""
  edges = {}
  for module, targets in graph.items():
    for t in sorted(targets):
      if layer(module) != layer(t):
        edges.setdefault((layer(module), layer(t)), []).append(f'{_label(module)} → {_label(t)}')
  present = {layer(m) for m in graph}
  lines = ['flowchart TB'] + [f'  {key}["{title}"]' for key, title in LAYERS if key in present]
  for (a, b), pairs in sorted(edges.items()):
    lines.append(f'  {a} -->|"{"<br>".join(sorted(pairs)) if len(pairs) <= 3 else len(pairs)}"| {b}')
  return '\n'.join(lines)


def markdown(graph: dict[str, set[str]], title: str = '') -> str:
  """docs/architecture.md's section: the layers' chart, then every module's in a fold-out."""
  return '\n'.join([f'```mermaid\n{layers_mermaid(graph)}\n```', '', '<details><summary>Every module'
                     f'{" (" + title + ")" if title else ""}</summary>', '', f'```mermaid\n{mermaid(graph)}\n```',
                     '', '</details>'])


def text(graph: dict[str, set[str]]) -> str:
  """One line per module, ``module -> what it imports``, grouped by layer."""
  lines = []
  for key, title in LAYERS:
    members = sorted(m for m in graph if layer(m) == key)
    if members:
      lines += [f'# {title}'] + [f'{_label(m)} -> {", ".join(_label(t) for t in sorted(graph[m])) or "-"}'
                                 for m in members] + ['']
  return '\n'.join(lines).rstrip()


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--rev', help='a git revision to scan instead of the working tree, e.g. ac06545')
  parser.add_argument('--format', choices=('mermaid', 'layers', 'markdown', 'text'), default='mermaid',
                      help='mermaid: every module; layers: the layers and the imports between them; '
                      'markdown: both, as docs/architecture.md shows them; text: an adjacency list')
  args = parser.parse_args(argv)
  graph = import_graph(args.rev)
  print({'mermaid': mermaid, 'layers': layers_mermaid, 'markdown': markdown, 'text': text}[args.format](graph))
  cycle = find_cycle(graph)
  if cycle:
    print(f'import cycle: {" -> ".join(cycle)}', file=sys.stderr)
  return 1 if cycle else 0


if __name__ == '__main__':
  sys.exit(main())
