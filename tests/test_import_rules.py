"""The layout's import rules (docs/DESIGN.md, "Import rules"), checked over the source's import graph.

Every `import` and `from ... import` in the project's packages is read with `ast` (module level and
inside functions alike: a lazy import is still a dependency) and resolved to a project module. The
rules below then hold, and the graph of project modules has no cycle.
"""
import ast
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ('tasks', 'pipelines', 'trainer')
# Entry points: parse flags and wire the library together; they may import anything.
ENTRY_POINTS = {
    'trainer.train', 'trainer.eval', 'trainer.adapt', 'trainer.export_hf', 'trainer.bench',
    'trainer.infer',
    'pipelines.cache_tasks', 'pipelines.train_vocab', 'pipelines.inspect_task', 'pipelines.demo',
    'pipelines.bench', 'pipelines.input_bench', 'pipelines.prepare_corpus',
    'pipelines.cache_index',
}
TF_LIKE = ('tensorflow', 'seqio', 't5', 'apache_beam', 'tensorflow_text', 'tensorflow_datasets')


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(REPO).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def _modules():
  found = {}
  for package in PACKAGES:
    for path in sorted((REPO / package).rglob('*.py')):
      found[_module_name(path)] = path
  return found


MODULES = _modules()


def _resolve(name: str) -> str:
  """The longest project module that `name` (a dotted import target) names or lies in."""
  parts = name.split('.')
  while parts:
    candidate = '.'.join(parts)
    if candidate in MODULES:
      return candidate
    parts.pop()
  return ''


def _imports(module: str):
  """(target, line) for each import in `module`: project modules resolved, others as written."""
  path = MODULES[module]
  tree = ast.parse(path.read_text(encoding='utf-8'), filename=str(path))
  is_package = path.name == '__init__.py'
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name, node.lineno
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        anchor = module.split('.') if is_package else module.split('.')[:-1]
        anchor = anchor[:len(anchor) - (node.level - 1)]
        base = '.'.join(anchor + ([base] if base else []))
      for alias in node.names:
        full = f'{base}.{alias.name}'
        yield (full if _resolve(full) == full else base), node.lineno


def _graph():
  edges = {}
  for module in MODULES:
    edges[module] = []
    for target, line in _imports(module):
      edges[module].append((target, line))
  return edges


GRAPH = _graph()


def _in(module: str, package: str) -> bool:
  return module == package or module.startswith(package + '.')


def _violations(rule):
  bad = []
  for module, targets in GRAPH.items():
    for target, line in targets:
      reason = rule(module, target)
      if reason:
        bad.append(f'{MODULES[module].relative_to(REPO)}:{line} imports {target}: {reason}')
  return bad


def test_the_graph_is_read():
  assert 'trainer.model.transformer' in MODULES and 'tasks.cli' in MODULES
  targets = {t for t, _ in GRAPH['trainer.model.transformer']}
  assert any(_in(t, 'trainer.model') for t in targets)
  assert 'flax.linen' in targets or 'flax' in targets


def test_model_imports_nothing_of_ours_and_no_data_or_config_library():
  def rule(module, target):
    if not _in(module, 'trainer.model'):
      return ''
    project = _resolve(target)
    if project and not _in(project, 'trainer.model'):
      return 'trainer.model imports only trainer.model'
    if target.split('.')[0] in TF_LIKE + ('gin',):
      return 'the model is flax only: no TF, seqio, Beam or gin'
    return ''
  assert not _violations(rule), '\n'.join(_violations(rule))


def test_checkpoint_imports_only_model():
  def rule(module, target):
    if not _in(module, 'trainer.checkpoint'):
      return ''
    project = _resolve(target)
    if project and not (_in(project, 'trainer.checkpoint') or _in(project, 'trainer.model')):
      return 'trainer.checkpoint imports only trainer.model'
    if target.split('.')[0] in TF_LIKE + ('gin',):
      return 'checkpoints are TF-free and gin-free'
    return ''
  assert not _violations(rule), '\n'.join(_violations(rule))


DATA_SIDE = ('trainer.training.data', 'trainer.training.feature_converters',
             'trainer.training.grain_loader', 'trainer.training.numpy_converters',
             'trainer.evaluation.seqio_eval')


def test_only_the_data_side_of_training_reads_tasks_caches_and_tf():
  def rule(module, target):
    if not _in(module, 'trainer') or module in ENTRY_POINTS or module in DATA_SIDE:
      return ''
    project = _resolve(target)
    if module == 'trainer.gin_flags' and project == 'tasks.cli':
      return ''  # the gin entry points' shared flags: UserError, --module_import
    if project and (_in(project, 'tasks') or _in(project, 'pipelines')):
      return f'only {", ".join(DATA_SIDE)} (and entry points) import tasks/pipelines'
    if target.split('.')[0] in TF_LIKE:
      return f'only {", ".join(DATA_SIDE)} (and entry points) import TF/seqio/Beam'
    return ''
  assert not _violations(rule), '\n'.join(_violations(rule))


def test_only_entry_points_and_the_gin_module_import_gin():
  def rule(module, target):
    if target.split('.')[0] != 'gin' or module in ENTRY_POINTS or module == 'trainer.gin_flags':
      return ''
    return 'gin belongs to entry points (and trainer.gin_flags)'
  assert not _violations(rule), '\n'.join(_violations(rule))


def test_tasks_import_neither_trainer_nor_pipelines():
  def rule(module, target):
    project = _resolve(target)
    if _in(module, 'tasks') and project and not _in(project, 'tasks'):
      return 'tasks is the bottom layer'
    if (_in(module, 'pipelines') and module not in ENTRY_POINTS and project and
        _in(project, 'trainer')):
      return 'pipelines library code does not import the trainer'
    return ''
  assert not _violations(rule), '\n'.join(_violations(rule))


def test_no_import_cycle_among_project_modules():
  edges = {m: sorted({_resolve(t) for t, _ in ts} - {'', m}) for m, ts in GRAPH.items()}
  # A package __init__ is imported by every module below it; that edge is not a design choice.
  edges = {m: [t for t in ts if not _in(m, t) or t == m] for m, ts in edges.items()}
  state, stack, cycles = {}, [], []

  def visit(m):
    state[m] = 1
    stack.append(m)
    for t in edges.get(m, ()):
      if state.get(t) == 1:
        cycles.append(stack[stack.index(t):] + [t])
      elif t not in state:
        visit(t)
    stack.pop()
    state[m] = 2

  for m in sorted(edges):
    if m not in state:
      visit(m)
  assert not cycles, 'import cycles:\n' + '\n'.join(' -> '.join(c) for c in cycles)


def test_the_checker_sees_a_cycle_and_a_forbidden_import():
  """The checks above can fail: a fake graph with a cycle and a model importing training."""
  global GRAPH  # pylint: disable=global-statement
  saved = GRAPH
  try:
    GRAPH = {'trainer.model.layers': [('trainer.training.losses', 1)],
             'trainer.training.losses': [('trainer.model.layers', 1)]}
    with pytest.raises(AssertionError, match='import cycles'):
      test_no_import_cycle_among_project_modules()
    with pytest.raises(AssertionError, match='imports only trainer.model'):
      test_model_imports_nothing_of_ours_and_no_data_or_config_library()
  finally:
    GRAPH = saved


@pytest.mark.parametrize('module', ['tasks', 'tasks.cli', 'tasks.sources',
                                    'tasks.objectives.planning', 'tasks.objectives.numpy_impl',
                                    'trainer.model.transformer', 'trainer.checkpoint.checkpoints',
                                    'pipelines.cache.layout', 'pipelines.cache.plan',
                                    'pipelines.cache.records', 'pipelines.cache_index',
                                    'trainer.training.data', 'trainer.training.grain_loader',
                                    'trainer.training.numpy_converters',
                                    'trainer.training.numpy_packing', 'pipelines.cache.storage'])
def test_light_modules_load_no_tensorflow_seqio_beam_or_gin(module):
  """Without seqio loaded nothing can be registered: importing these registers no task."""
  if module not in MODULES:
    pytest.fail(f'{module} is not a module of the layout')
  code = (f'import sys, importlib; importlib.import_module({module!r}); '
          'print(",".join(m for m in ("tensorflow", "seqio", "apache_beam", "gin") '
          'if m in sys.modules))')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == '', f'importing {module} loaded {proc.stdout.strip()}'
