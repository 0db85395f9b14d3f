"""The documentation cannot drift from the code.

Every `python -m MODULE ...` command in README.md and docs/*.md must name an existing module, flags
that module defines, gin files that exist; every `make X` a Makefile target. README blocks marked
`<!-- test: run -->` are run, in order, in one shell (with /tmp/ga pointed at a temporary folder).
"""
import functools
import json
import importlib.util
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = [REPO / 'README.md'] + sorted((REPO / 'docs').glob('*.md'))
FENCE = re.compile(r'(<!-- test: run -->\s*\n)?```(sh|bash)\n(.*?)```', re.S)


def shell_blocks(path: pathlib.Path):
  """(runnable, text) for each sh/bash block of a Markdown file."""
  return [(bool(m.group(1)), m.group(3)) for m in FENCE.finditer(path.read_text())]


def command_lines(block: str):
  """Logical command lines of a shell block: continuations joined, comments dropped."""
  joined = re.sub(r'\\\n\s*', ' ', block)
  for line in joined.splitlines():
    line = line.strip()
    if line and not line.startswith('#'):
      yield line


def python_commands():
  """(doc, module, [flag names], [gin files]) for every `python -m` command in the docs."""
  out = []
  for doc in DOCS:
    for _, block in shell_blocks(doc):
      for line in command_lines(block):
        if 'python -m ' not in line:
          continue
        words = shlex.split(line[line.index('python -m '):], comments=True)
        module = words[2]
        flags, gin_files = [], []
        for w in words[3:]:
          if w.startswith('--') and not w.startswith('--gin.'):
            name = w[2:].split('=', 1)[0]
            flags.append(name)
            if name == 'gin_file':
              gin_files.append(w.split('=', 1)[1])
        out.append((doc.name, module, flags, gin_files))
  return out


def test_docs_have_commands():
  cmds = python_commands()
  modules = {m for _, m, _, _ in cmds}
  assert len(cmds) >= 20, cmds
  for expected in ('pipelines.cache_tasks', 'pipelines.train_vocab', 'pipelines.inspect_task',
                   'trainer.train', 'trainer.eval', 'trainer.adapt', 'trainer.export_hf',
                   'trainer.bench'):
    assert expected in modules


def test_modules_and_gin_files_exist():
  problems = []
  for doc, module, _, gin_files in python_commands():
    if importlib.util.find_spec(module) is None:
      problems.append(f'{doc}: no module {module}')
    for g in gin_files:
      if not (REPO / g).is_file():
        problems.append(f'{doc}: {module}: no gin file {g}')
  assert not problems, '\n'.join(problems)


@functools.lru_cache(maxsize=None)
def module_help(module: str) -> str:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', JAX_PLATFORMS='cpu')
  for flag in ('--helpfull', '--help'):
    proc = subprocess.run([sys.executable, '-m', module, flag], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    # absl's --help/--helpfull exit with status 1 after printing the flags; ours exit 0.
    if proc.returncode in (0, 1) and '--' in text and 'Traceback' not in text:
      return text
  raise AssertionError(f'python -m {module} --help failed:\n{proc.stdout}\n{proc.stderr}')


def _documented_flags():
  by_module = {}
  for _, module, flags, _ in python_commands():
    by_module.setdefault(module, set()).update(flags)
  return sorted(by_module.items())


@pytest.mark.parametrize('module,flags', _documented_flags(), ids=lambda x: str(x)[:40])
def test_documented_flags_exist(module, flags):
  text = module_help(module)
  def defined(f):
    if re.search(rf'--(\[no\])?{re.escape(f)}\b', text):
      return True
    return f.startswith('no') and re.search(rf'--\[no\]{re.escape(f[2:])}\b', text)
  missing = [f for f in sorted(flags) if not defined(f)]
  assert not missing, f'python -m {module}: flags used in the docs but not defined: {missing}'


def test_make_targets_exist():
  targets = set(re.findall(r'^([A-Za-z][\w-]*):', (REPO / 'Makefile').read_text(), re.M))
  used = set()
  for doc in DOCS:
    for _, block in shell_blocks(doc):
      for line in command_lines(block):
        m = re.match(r'make\s+([\w-]+)', line)
        if m:
          used.add(m.group(1))
  assert {'demo', 'test'} <= used
  assert used <= targets, used - targets


def test_readme_runnable_blocks(tmp_path):
  """Runs the README's blocks marked `<!-- test: run -->`, in order, as a user would."""
  blocks = [text for runnable, text in shell_blocks(REPO / 'README.md') if runnable]
  assert len(blocks) >= 5
  script = 'set -euo pipefail\n' + '\n'.join(blocks).replace('/tmp/ga', str(tmp_path / 'ga'))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', JAX_PLATFORMS='cpu',
             GEMMA_ADAPT_DATA=str(tmp_path / 'data'),
             PATH=f'{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}')
  proc = subprocess.run(['bash', '-c', script], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=1500)
  assert proc.returncode == 0, f'README commands failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}'
  ga = tmp_path / 'ga'
  assert (ga / 'spm.model').is_file()
  assert any(p.name == 'COMPLETED' for p in (ga / 'cache').rglob('COMPLETED'))
  assert (ga / 'teacher' / 'model_config.json').is_file()
  assert (ga / 't5gemma' / 'metrics.jsonl').is_file()
  assert (ga / 'hf_t5gemma' / 'config.json').is_file()
  generated = [json.loads(l) for l in (ga / 'generated.jsonl').read_text().splitlines()]
  assert len(generated) == 2  # the inference block (checked alone: tests/test_readme_inference.py)
  assert all(set(r) == {'output_ids', 'text', 'score'} and r['output_ids'] for r in generated)
  assert 'UL2' in proc.stdout or '[NLU]' in proc.stdout or '[NLG]' in proc.stdout
