r"""GPU performance run in one budgeted command: attention microbenchmark, train-step MFU, levers.

  python scripts/gpu_perf.py --part=all --budget_s=480 --out_dir=$OUT

runs, most important first, and starts no row it cannot finish before the budget:

  1. `attention`: fwd+bwd of the reference and the fused (tokamax) kernel, Gemma 2 2B heads, with
     the numerics check of the fused gradients against the reference;
  2. `train_step`: MFU of t5gemma_2b_2b at 2048/2048 and gemma2_2b at 4096 with the best known
     settings (scan over layers, remat 'dots', fused attention, chunked loss, bf16 compute);
  3. `lever`: the same settings on a shape that compiles in seconds (t5gemma_2b_2b widths, 8 + 8
     layers, 2048/2048), one change at a time against that one baseline.

Results: `gpu_perf.json` (`device`, `jax_version`, `rows`; each row has `part`, `model` (the gin
model file's name), `length`, `encoder_length`, `batch`, `step_time_s`, `tokens_per_s`, `mfu`
(percent, `trainer/training/flops.py`), `tflops`, `check`, `compile_s`, `error`, `command`), rewritten
after every row, and `gpu_perf.md` (the markdown tables). A row that fails, times out or is skipped
for the budget is a row with its `error`; the run goes on. `--rows=lever:3,train:gemma2` reruns
chosen rows (ids in the tables); `--part=compile` (any backend, not in 'all') compiles the train
step without running it and prints compile seconds and XLA's memory analysis per variant.

Every row runs in a subprocess (fresh XLA flags, clean device memory, a hard timeout): the
attention part as `gpu_perf.py --part=attention`, train steps as `python -m trainer.bench`, all
with JAX's persistent compilation cache in `--cache_dir` (a rerun on the same machine skips the
compiles). The parent never initialises a JAX backend, so it holds no device memory.

Attention FLOP/s count only the (query, key) pairs the mask lets through, 4 * H * Dh FLOPs per pair
forward and 3x that for forward + backward, so masked-out work is never counted as done; B=2,
L=4096, 8 query / 4 kv heads, head_dim 256, bf16, soft-cap 50, two packed segments per row.
Every size is a flag, so the whole plan also runs at toy size on CPU (tests/scripts/test_gpu_perf.py).
No TensorFlow, seqio or Beam is imported, here or in what this runs.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpu_perf_parts import COMPILE_VARIANTS, attention_part, compile_part, new_row  # pylint: disable=g-import-not-at-top,wrong-import-position,line-too-long

# Best known settings of the train step (a gin macro or binding -> value); `{loss}` is the model
# wrapper's class, filled in per model file.
BEST = (('SCAN_LAYERS', 'True'), ('REMAT', "'dots'"),
        ('config.TransformerConfig.attention_impl', "'fused'"),
        ('models.{loss}.loss_chunk_size', '{chunk}'), ('ACTIVATION_DTYPE', "'bfloat16'"))
XLA_TUNED = ('--xla_gpu_enable_latency_hiding_scheduler=true '
             '--xla_gpu_enable_highest_priority_async_stream=true '
             '--xla_gpu_enable_command_buffer=')
# Lever rows, most telling first: (label, overrides of BEST, extra benchmark bindings, env).
LEVERS = (
    ('baseline: best known settings', {}, [], {}),
    ('reference attention', {'config.TransformerConfig.attention_impl': "'reference'"}, [], {}),
    ('full loss (no chunking)', {'models.{loss}.loss_chunk_size': 'None'}, [], {}),
    ("remat 'none'", {'REMAT': "'none'"}, [], {}),
    ('bf16 params', {'PARAM_DTYPE': "'bfloat16'"}, [], {}),
    ('bf16 params + fp32 master copy', {'PARAM_DTYPE': "'bfloat16'"},
     ["benchmark.master_dtype='float32'"], {}),
    ('XLA flags: latency-hiding scheduler, no command buffers', {}, [], {'XLA_FLAGS': XLA_TUNED}),
    ("remat 'full'", {'REMAT': "'full'"}, [], {}),
    # Last: unrolled 8 + 8 layers compile 7x slower than scanned on XLA CPU (docs/performance.md).
    ('unrolled layers (no scan)', {'SCAN_LAYERS': 'False'}, [], {}),
)
# ---------------------------------------------------------------------------------------------
# Train steps (subprocesses running trainer.bench).

_HEAD = re.compile(r'bench: .*\| (\d+) x ([^|]+?) \| mesh .*\| compile ([\d.]+) s')
_STEP = re.compile(r'step time ([\d.]+) ms \| ([\d,]+) tokens/s \| ([\d.]+) (T|G)FLOP/s \| '
                   r'MFU (\S+)')
_FELL_BACK = re.compile(r'attention_impl=fused: (.*?); using the reference attention instead')


def bench_command(gin_file: str, bindings, *, steps: int) -> list:
  return ([sys.executable, '-m', 'trainer.bench', f'--gin_file={gin_file}',
           f'--gin.benchmark.steps={steps}'] + [f'--gin.{b}' for b in bindings])


def bench_run(gin_file: str, bindings, env_extra, *, steps: int, timeout: float) -> dict:
  """One `python -m trainer.bench` run -> row fields (figures, or `error`)."""
  cmd = bench_command(gin_file, bindings, steps=steps)
  env = dict(os.environ, **env_extra)
  env['PYTHONPATH'] = os.pathsep.join(p for p in (REPO_ROOT, env.get('PYTHONPATH')) if p)
  shown = ' '.join([f'{k}="{v}"' for k, v in env_extra.items()] +
                   ['python', '-m'] + [c if ' ' not in c and "'" not in c else f'"{c}"'
                                       for c in cmd[2:]])
  t0 = time.perf_counter()
  fields = {'command': shown}
  try:
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=max(timeout, 1))
  except subprocess.TimeoutExpired:
    return dict(fields, wall_s=time.perf_counter() - t0,
                error=f'timed out after {timeout:.0f} s (row cap or budget)')
  fields['wall_s'] = time.perf_counter() - t0
  text = out.stdout + out.stderr
  head, step = _HEAD.search(text), _STEP.search(text)
  if out.returncode != 0 or not step:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    err = next((l for l in reversed(lines) if 'Error' in l or 'error' in l),
               lines[-1] if lines else f'exit {out.returncode}')
    return dict(fields, error=err.strip()[:200])
  ms, tokens, rate, unit, mfu = step.groups()
  fields.update(step_time_s=float(ms) / 1e3, tokens_per_s=float(tokens.replace(',', '')),
                tflops=float(rate) / (1 if unit == 'T' else 1e3),
                mfu=float(mfu.rstrip('%')) if mfu.endswith('%') else None)
  if head:
    fields.update(device=head.group(2).strip(), compile_s=float(head.group(3)))
  fell_back = _FELL_BACK.search(text)
  if fell_back:
    fields['check'] = f'fused attention FELL BACK to the reference: {fell_back.group(1)}'
  return fields


def _model_name(gin_file: str) -> str:
  return os.path.splitext(os.path.basename(gin_file))[0]


def _best(gin_file: str, chunk: int) -> dict:
  """BEST with the model wrapper's class and the loss chunk filled in."""
  with open(os.path.join(REPO_ROOT, gin_file) if not os.path.isabs(gin_file) else gin_file) as f:
    loss = 'EncoderDecoderModel' if 'EncoderDecoderModel' in f.read() else 'DecoderOnlyModel'
  return {k.format(loss=loss): v.format(chunk=chunk) for k, v in BEST}, loss


def plan(args) -> list:
  """The rows of --part=all, most important first: dicts with id, part, label, model, gin file,
  lengths, batch, bindings (list), env, steps, cap_s."""
  rows = [dict(id='attention', part='attention', cap_s=args.attention_cap_s)]
  for rid, gin_file, (length, enc), batch in (
      ('train:t5gemma', args.t5_model, args.t5_lengths, args.t5_batch),
      ('train:gemma2', args.dec_model, (args.dec_length, None), args.dec_batch)):
    best, _ = _best(gin_file, args.loss_chunk)
    rows.append(dict(id=rid, part='train_step', label='best known settings', gin_file=gin_file,
                     length=length, encoder_length=enc, batch=batch, overrides=best,
                     extra=[], env={}, steps=args.steps, cap_s=args.train_cap_s))
  best, loss = _best(args.lever_model, args.loss_chunk)
  shape = {'encoder_length': args.lever_lengths[1] if loss == 'EncoderDecoderModel' else None,
           'length': args.lever_lengths[0],
           'batch': args.lever_batch}
  layers = ([f'{s}/config.TransformerConfig.num_layers={args.lever_layers}'
             for s in ('encoder', 'decoder')] if loss == 'EncoderDecoderModel'
            else [f'config.TransformerConfig.num_layers={args.lever_layers}'])
  for i, (label, changes, extra, env) in enumerate(LEVERS):
    changes = {k.format(loss=loss): v for k, v in changes.items()}
    rows.append(dict(id=f'lever:{i}', part='lever', label=label, gin_file=args.lever_model,
                     overrides=dict(best, **changes), extra=layers + list(extra), env=env,
                     steps=args.lever_steps, cap_s=args.lever_cap_s, **shape))
  return rows


def _train_bindings(spec: dict, common) -> list:
  out = [f'{k}={v}' for k, v in spec['overrides'].items()] + list(spec['extra'])
  out += [f'benchmark.batch_size={spec["batch"]}', f'benchmark.length={spec["length"]}']
  if spec.get('encoder_length'):
    out.append(f'benchmark.encoder_length={spec["encoder_length"]}')
  return out + list(common)


def _common_bindings(args) -> list:
  peak = [f'benchmark.peak_flops={args.peak_flops}'] if args.peak_flops else []
  return peak + list(args.binding)


def _table(header, rows):
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join('' if c is None else str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines)


def _f(x, fmt):
  return None if x is None else format(x, fmt)


def markdown(results: dict) -> str:
  rows = results['rows']
  out = [f"# gpu_perf: {results['device']}, jax {results['jax_version']}, budget "
         f"{results['budget_s']:.0f} s, wall {results['wall_s']:.0f} s\n"]
  att = [r for r in rows if r['part'] == 'attention']
  if att:
    r0 = att[0]
    out.append(f"## Attention fwd+bwd, bf16, B={r0['batch']} L={r0['length']} H=8 K=4 Dh=256 "
               'soft-cap 50, 2 segments/row\n')
    out.append(_table(('mask, impl', 'ms', 'TFLOP/s (visible pairs)', '% of peak', 'check', 'error'),
                      [(r['label'], _f(r['step_time_s'] and 1e3 * r['step_time_s'], '.2f'),
                        _f(r['tflops'], '.1f'), _f(r['mfu'], '.1f'), r['check'], r['error'])
                       for r in att]) + '\n')
  for part, title in (('train_step', 'Train step (trainer.bench, adafactor, donated state)'),
                      ('lever', 'Levers (one change at a time from the baseline row)')):
    sel = [r for r in rows if r['part'] == part]
    if not sel:
      continue
    out.append(f'## {title}\n')
    out.append(_table(
        ('id', 'model', 'lengths', 'batch', 'row', 'step ms', 'tokens/s', 'TFLOP/s', 'MFU %',
         'compile s', 'check', 'error'),
        [(r['id'], r['model'], f"{r['encoder_length']}/{r['length']}" if r['encoder_length']
          else r['length'], r['batch'], r['label'],
          _f(r['step_time_s'] and 1e3 * r['step_time_s'], '.1f'), _f(r['tokens_per_s'], ',.0f'),
          _f(r['tflops'], '.1f'), _f(r['mfu'], '.1f'), _f(r['compile_s'], '.1f'), r['check'],
          r['error']) for r in sel]) + '\n')
    out.append('Commands (repository root, after the wheel install):\n')
    out += [f"- `{r['id']}`: `{r['command']}`" for r in sel if r['command']]
    out.append('')
  return '\n'.join(out)


def _write(path: str, results: dict) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(results, f, indent=1)
  os.replace(tmp, path)


def run_all(args) -> dict:
  """Runs the plan's chosen rows within the budget; writes JSON after each row, markdown at end."""
  t_start = time.time()
  deadline = t_start + args.budget_s - args.reserve_s
  os.makedirs(args.out_dir, exist_ok=True)
  json_path = os.path.join(args.out_dir, 'gpu_perf.json')
  import jax  # pylint: disable=g-import-not-at-top  (version only: no backend is initialised)
  results = {'device': None, 'jax_version': jax.__version__, 'budget_s': args.budget_s,
             'started': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(t_start)),
             'wall_s': 0.0, 'rows': []}
  # Each row is alone on the device: let it take 95% of the memory, not JAX's default 75% (the
  # 2B-2B step at batch 2 needs about 64 GiB of temporaries + 42 GiB of state and outputs).
  env = {'XLA_PYTHON_CLIENT_MEM_FRACTION': os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION', '.95')}
  if args.cache_dir:
    env.update(JAX_COMPILATION_CACHE_DIR=os.path.abspath(args.cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='1')
  chosen = set(args.rows.split(',')) if args.rows else None
  for spec in plan(args):
    if chosen is not None and spec['id'] not in chosen:
      continue
    left = deadline - time.time()
    base = {'id': spec['id'], 'part': spec['part'], 'label': spec.get('label')}
    if spec['part'] != 'attention':
      base.update(model=_model_name(spec['gin_file']), length=spec['length'],
                  encoder_length=spec['encoder_length'], batch=spec['batch'],
                  settings=_train_bindings(spec, _common_bindings(args)))
    if left < args.min_row_s:
      results['rows'].append(new_row(**base, error=f'skipped: {max(left, 0):.0f} s of the '
                                     f'budget left (a row needs >= {args.min_row_s:g} s)'))
    elif spec['part'] == 'attention':
      results['rows'] += _attention_subprocess(args, env, timeout=min(spec['cap_s'], left),
                                               results=results)
    else:
      fields = bench_run(spec['gin_file'], base['settings'], dict(env, **spec['env']),
                         steps=spec['steps'], timeout=min(spec['cap_s'], left))
      results['device'] = results['device'] or fields.pop('device', None)
      fields.pop('device', None)
      results['rows'].append(new_row(**dict(base, **fields)))
    last = results['rows'][-1]
    print(f"# {last['id']} {last['label']}: step {_f(last['step_time_s'], '.4f')} s, "
          f"MFU {_f(last['mfu'], '.1f')}%, {last['error'] or last['check'] or 'ok'}", flush=True)
    results['wall_s'] = time.time() - t_start
    _write(json_path, results)
  results['device'] = results['device'] or 'unknown (no row reached the device)'
  results['wall_s'] = time.time() - t_start
  _write(json_path, results)
  text = markdown(results)
  with open(os.path.join(args.out_dir, 'gpu_perf.md'), 'w') as f:
    f.write(text + '\n')
  print('\n' + text, flush=True)
  return results


def _attention_subprocess(args, env, *, timeout: float, results: dict) -> list:
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'attention.json')
    cmd = [sys.executable, os.path.abspath(__file__), '--part=attention', f'--json_out={path}',
           f'--attention_batch={args.attention_batch}', f'--attention_length={args.attention_length}',
           f'--attention_window={args.attention_window}', f'--iters={args.iters}',
           f'--budget_s={max(timeout - 15, 1):.0f}', f'--cache_dir={args.cache_dir}']
    if args.peak_flops:
      cmd.append(f'--peak_flops={args.peak_flops}')
    error = None
    t0 = time.perf_counter()
    try:
      out = subprocess.run(cmd, cwd=REPO_ROOT, env=dict(os.environ, **env), capture_output=True,
                           text=True, timeout=max(timeout, 1))
      if out.returncode != 0:
        lines = [l for l in (out.stdout + out.stderr).strip().splitlines() if l.strip()]
        error = (lines[-1] if lines else f'exit {out.returncode}')[:200]
    except subprocess.TimeoutExpired:
      error = f'timed out after {timeout:.0f} s (row cap or budget)'
    done = {'rows': []}
    if os.path.exists(path):
      with open(path) as f:
        done = json.load(f)
    results['device'] = results['device'] or done.get('device')
  rows = done['rows']
  for row in rows:
    row['command'] = ('python scripts/gpu_perf.py --part=attention ' +
                      ' '.join(c for c in cmd[4:8]))
  if error or not rows:
    rows.append(new_row(id='attention', part='attention', label='attention (rest)',
                        wall_s=time.perf_counter() - t0, error=error or 'no rows written'))
  return rows


def _pair(text: str):
  a, _, b = text.partition(',')
  return int(a), (int(b) if b else None)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--part', choices=('all', 'attention', 'compile'), default='all',
                 help="'all': the budgeted plan; 'attention' alone; 'compile' (any backend)")
  p.add_argument('--budget_s', type=float, default=480, help='wall-clock budget of the run')
  p.add_argument('--reserve_s', type=float, default=5, help='kept back for writing the results')
  p.add_argument('--min_row_s', type=float, default=25,
                 help='a row is started only with at least this much budget left')
  p.add_argument('--rows', default='', help='comma-separated row ids to run (default: all), '
                 'e.g. attention,train:t5gemma,train:gemma2,lever:0,lever:3')
  p.add_argument('--out_dir', default=os.environ.get('OUT', 'gpu_perf_out'))
  p.add_argument('--cache_dir', default=os.path.join(REPO_ROOT, '.jax_cache'),
                 help="JAX persistent compilation cache ('' to switch it off)")
  p.add_argument('--json_out', default='', help='--part=attention: write its rows here')
  p.add_argument('--peak_flops', type=float, default=None,
                 help='peak FLOP/s per device (default: trainer/training/flops.py table)')
  p.add_argument('--attention_batch', type=int, default=2)
  p.add_argument('--attention_length', type=int, default=4096)
  p.add_argument('--attention_window', type=int, default=1024)
  p.add_argument('--iters', type=int, default=10)
  p.add_argument('--attention_cap_s', type=float, default=150)
  p.add_argument('--t5_model', default='gin/models/t5gemma_2b_2b.gin')
  p.add_argument('--t5_lengths', type=_pair, default=(2048, 2048), help='DECODER,ENCODER')
  p.add_argument('--t5_batch', type=int, default=2)
  p.add_argument('--dec_model', default='gin/models/gemma2_2b.gin')
  p.add_argument('--dec_length', type=int, default=4096)
  p.add_argument('--dec_batch', type=int, default=2)
  p.add_argument('--steps', type=int, default=10, help='timed steps of the train_step rows')
  p.add_argument('--train_cap_s', type=float, default=200)
  p.add_argument('--lever_model', default='gin/models/t5gemma_2b_2b.gin')
  p.add_argument('--lever_layers', type=int, default=8, help='layers per stack of the lever rows')
  p.add_argument('--lever_lengths', type=_pair, default=(2048, 2048), help='DECODER,ENCODER')
  p.add_argument('--lever_batch', type=int, default=2)
  p.add_argument('--lever_steps', type=int, default=5)
  p.add_argument('--lever_cap_s', type=float, default=90)
  p.add_argument('--loss_chunk', type=int, default=2048, help='tokens per loss chunk')
  p.add_argument('--binding', action='append', default=[],
                 help="extra gin binding for every train row, e.g. 'VOCAB_SIZE=256' (toy models)")
  p.add_argument('--compile_gin_file', default='gin/models/t5gemma_2b_2b.gin')
  p.add_argument('--compile_binding', action='append', default=[],
                 help="extra gin binding for --part=compile, e.g. 'VOCAB_SIZE = 32000'")
  p.add_argument('--compile_variants', default='',
                 help='comma-separated COMPILE_VARIANTS indices (default: all), e.g. 0,1')
  p.add_argument('--compile_batch', type=int, default=2)
  p.add_argument('--compile_length', type=int, default=2048)
  p.add_argument('--compile_encoder_length', type=int, default=2048)
  return p


def parse_args(argv=None):
  return build_parser().parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  unknown = set(filter(None, args.rows.split(','))) - {r['id'] for r in plan(args)}
  if unknown:
    build_parser().error(f'--rows: unknown row ids {sorted(unknown)}; the ids are '
                         f"{', '.join(r['id'] for r in plan(args))}")
  if args.part == 'all':
    run_all(args)
    return 0
  if args.cache_dir:
    os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.abspath(args.cache_dir))
  import jax  # pylint: disable=g-import-not-at-top
  device = f'{jax.device_count()} x {jax.devices()[0].device_kind}'
  print(f'# gpu_perf: {device}, jax {jax.__version__}', flush=True)
  if args.part == 'attention':
    def emit(rows):
      if args.json_out:
        _write(args.json_out, {'device': device, 'jax_version': jax.__version__, 'rows': rows})
    rows = attention_part(batch=args.attention_batch, length=args.attention_length,
                          window=args.attention_window, iters=args.iters,
                          peak_flops=args.peak_flops, emit=emit,
                          deadline=time.time() + args.budget_s)
    emit(rows)
    print(markdown({'device': device, 'jax_version': jax.__version__, 'budget_s': args.budget_s,
                    'wall_s': sum(r['wall_s'] or 0 for r in rows), 'rows': rows}), flush=True)
  if args.part == 'compile':
    variants = ([COMPILE_VARIANTS[int(i)] for i in args.compile_variants.split(',') if i.strip()]
                if args.compile_variants else COMPILE_VARIANTS)
    rows = compile_part(args.compile_gin_file, args.compile_binding,
                        batch_size=args.compile_batch, length=args.compile_length,
                        encoder_length=args.compile_encoder_length, variants=variants)
    print(f'\n## Train step compiled on {jax.default_backend()}: {args.compile_gin_file} '
          f'{args.compile_binding} batch {args.compile_batch}, length {args.compile_length} '
          f'(encoder {args.compile_encoder_length}), adafactor\n')
    print(_table(('variant', 'compile s', 'XLA temp GiB', 'XLA arguments GiB', 'params GiB',
                  'optimizer state GiB'), rows), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
