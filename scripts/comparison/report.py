"""The comparison's outputs: summary.json, a markdown page (mean +- 95% t-interval over seeds) and
a PNG (held-out PrefixLM loss against training tokens; SST-2 accuracy per system).

Every figure on the page comes from the run's summary; nothing is extrapolated.
"""
import dataclasses
import math
import os
from typing import Any, Dict

from scripts.comparison import stages as stages_lib
from scripts.comparison import stats

LM_LABELS = {
    'ed_adapted': 'encoder-decoder, adapted, PrefixLM',
    'ed_causal': 'encoder-decoder, adapted, PrefixLM, causal encoder',
    'ed_scratch': 'encoder-decoder, random init, PrefixLM',
    'ed_ul2': 'encoder-decoder, adapted, UL2',
    'ed_distill': 'encoder-decoder, adapted, PrefixLM + distillation',
    'dec_bidir': 'decoder-only PrefixLM, bidirectional prefix',
    'dec_causal': 'decoder-only PrefixLM, causal prefix',
}


# The effects the papers report, as paired differences over seeds (same seed = same data order
# and initial randomness for both systems): (name, system a, system b, which sign the paper's claim
# predicts for a - b; 0: no prediction). Held-out loss: lower is better; accuracy: higher is better.
LOSS_EFFECTS = (
    ('adaptation vs from scratch (T5Gemma)', 'ed_adapted', 'ed_scratch', -1),
    ('bidirectional vs causal encoder (T5Gemma ablation)', 'ed_adapted', 'ed_causal', -1),
    ('bidirectional vs causal prefix, decoder-only', 'dec_bidir', 'dec_causal', -1),
    ('distillation vs none (T5Gemma)', 'ed_distill', 'ed_adapted', -1),
    # Held-out PrefixLM loss favours the run trained on PrefixLM: no paper claim to test here.
    ('PrefixLM vs UL2 adaptation, held-out PrefixLM loss', 'ed_adapted', 'ed_ul2', 0),
)
ACCURACY_EFFECTS = (
    ('adaptation vs from scratch (T5Gemma)', 'encdec_prefix_lm', 'encdec_scratch', 1),
    ('bidirectional vs causal encoder (T5Gemma ablation)', 'encdec_prefix_lm', 'encdec_causal', 1),
    ('distillation vs none (T5Gemma)', 'encdec_distill', 'encdec_prefix_lm', 1),
    ('UL2 vs PrefixLM adaptation', 'encdec_ul2', 'encdec_prefix_lm', 0),
    ('encoder-decoder vs decoder-only (T5Gemma)', 'encdec_prefix_lm', 'decoder_only', 1),
    ('dropout 0.1 vs none, encoder mean pooling (Gemma Encoder)', 'encoder_mean',
     'encoder_mean_nodropout', 1),
    ('bidirectional vs causal prefix, decoder-only', 'decoder_only', 'decoder_only_causal', 1),
)


def paired_effects(per_system, effects):
  """[{name, a, b, diffs, mean, half, verdict}] for each effect whose two systems both ran.

  `per_system`: key -> {seed: value}. Verdict: 'reproduced' when the 95% interval of a - b
  excludes 0 on the side the paper predicts, 'opposite' when it excludes 0 on the other side,
  'not resolved' otherwise (or with fewer than 2 seeds); with no prediction (sign 0) 'a - b > 0' or
  'a - b < 0' when the interval excludes 0.
  """
  out = []
  for name, a, b, sign in effects:
    if a not in per_system or b not in per_system:
      continue
    seeds = sorted(set(per_system[a]) & set(per_system[b]))
    diffs = [per_system[a][sd] - per_system[b][sd] for sd in seeds
             if per_system[a][sd] is not None and per_system[b][sd] is not None]
    mean, half = stats.mean_ci(diffs) if diffs else (float('nan'), float('nan'))
    verdict = 'not resolved'
    if len(diffs) >= 2 and not math.isnan(half):
      if abs(mean) > half:
        if sign == 0:
          verdict = 'a - b > 0' if mean > 0 else 'a - b < 0'
        else:
          verdict = 'reproduced' if mean * sign > 0 else 'opposite'
    out.append({'name': name, 'a': a, 'b': b, 'diffs': diffs, 'mean': mean, 'half': half,
                'verdict': verdict})
  return out


def _flops(comparison, kind, s, factory):
  """Inference FLOPs of one SST-2 example at the truncation lengths (forward = training / 3);
  an encoder-decoder's from the config of the model `factory` builds (a causal encoder counts
  half its attention scores)."""
  from trainer.training import encoder_models  # pylint: disable=g-import-not-at-top
  from trainer.training import flops  # pylint: disable=g-import-not-at-top
  li, lt = s.sst2_inputs_length, s.sst2_targets_length
  if kind == 'decoder_only':
    return flops.decoder_only_training_flops(comparison.config(), li + lt) / 3.0
  if kind == 'encoder_decoder':
    return flops.encoder_decoder_training_flops(factory().config, li, lt) / 3.0
  return encoder_models.EncoderClassifierModel(
      config=comparison.config()).inference_flops_per_example(li)


def summarize(comparison, *, wall_seconds: float) -> Dict[str, Any]:
  s = comparison.s
  lm = {}
  for (key, seed), run in comparison.lm.items():
    entry = lm.setdefault(key, {'label': LM_LABELS[key], 'curves': {}, 'final': {}})
    entry['curves'][seed] = run['result']['curve']
    entry['final'][seed] = run['result']['final_heldout_loss']
  # Adaptation vs scratch: tokens each needs to reach the scratch run's final held-out loss.
  reach = {}
  if 'ed_adapted' in lm and 'ed_scratch' in lm:
    for seed in lm['ed_scratch']['curves']:
      if seed not in lm['ed_adapted']['curves']:
        continue
      target = lm['ed_scratch']['final'][seed]
      reach[seed] = {'target_loss': target,
                     'first_eval_tokens': lm['ed_adapted']['curves'][seed][0][0],
                     'adapted_tokens': stats.tokens_to_reach(lm['ed_adapted']['curves'][seed],
                                                            target),
                     'scratch_tokens': stats.tokens_to_reach(lm['ed_scratch']['curves'][seed],
                                                            target)}
  systems = comparison.ft_systems()
  ft = {}
  for (key, seed), run in comparison.ft.items():
    label, kind, factory = systems[key][0], systems[key][1], systems[key][4]
    row = ft.setdefault(key, {'label': label, 'kind': kind, 'accuracy': {}, 'stopped_at': {},
                              'last_step': {}, 'heldout_curve': {},
                              'num_params': run['result']['num_params'],
                              'inference_flops': _flops(comparison, kind, s, factory)})
    rounds = run['result']['rounds']
    row['accuracy'][seed] = run['result']['accuracy']
    row['stopped_at'][seed] = run['result']['best']['step']  # the selected (best) round
    row['last_step'][seed] = rounds[-1]['step']  # < the cap: ended by early stopping
    row['heldout_curve'][seed] = [(r['step'], r['heldout_accuracy']) for r in rounds]
  return {'settings': dataclasses.asdict(s), 'seeds': comparison.seeds,
          'corpus': comparison.corpus['result'], 'sst2': comparison.ft_data['result'],
          'pretrain': {k: comparison.pretrained['result'][k]
                       for k in ('first_loss', 'last_loss', 'final_heldout_loss', 'num_params')},
          'lm': lm, 'tokens_to_reach': reach, 'finetune': ft, 'bow': comparison.bow_result,
          'effects': {
              'heldout_loss': paired_effects({k: v['final'] for k, v in lm.items()},
                                             LOSS_EFFECTS),
              'accuracy': paired_effects({k: v['accuracy'] for k, v in ft.items()},
                                         ACCURACY_EFFECTS)},
          'stages': comparison.store.log, 'wall_seconds': round(wall_seconds, 1),
          'jobs': comparison.jobs}


def _ci(values):
  return stats.format_ci(list(values))


def markdown(summary, *, argv, plot_name) -> str:
  s = summary['settings']
  lines = ['# Scaled-down comparison (measured)', '',
           f'Generated by `python {" ".join(argv)}`; every number below was measured by that '
           f'run (seeds {summary["seeds"]}; mean +- half-width of the 95% t-interval over '
           'seeds).', '',
           '## Held-out PrefixLM loss (same data, steps and batch for every system)', '',
           '| system | held-out loss at the end | seeds |', '|---|---|---|']
  for entry in summary['lm'].values():
    finals = [v for v in entry['final'].values() if v is not None]
    lines.append(f"| {entry['label']} | {stats.format_ci(finals, 3)} | {len(finals)} |")
  if summary['tokens_to_reach']:
    lines += ['', 'Training tokens to reach the from-scratch run\'s final held-out loss:', '']
    lines.append('("<=" = already at or below the target at the first evaluation: an upper '
                 'bound.)')
    lines.append('')
    for seed, r in sorted(summary['tokens_to_reach'].items()):
      first = r.get('first_eval_tokens')

      def fmt(t, first=first):
        if t is None:
          return 'not reached'
        return f'<= {t:,.0f}' if t == first else f'{t:,.0f}'
      lines.append(f"- seed {seed}: target {r['target_loss']:.3f}; adapted "
                   f"{fmt(r['adapted_tokens'])}, from scratch {fmt(r['scratch_tokens'])}")
  cap = s['ft_round_steps'] * s['ft_max_rounds']
  lines += ['', '## SST-2 after fine-tuning (early stopping on a held-out slice of train)', '',
            f"Training rows packed (up to {s.get('ft_max_segments', 1)} examples per row for "
            f"an encoder; 1 = unpacked). Held-out accuracy every {s['ft_round_steps']} steps; a "
            f"run ends after {s['ft_patience']} evaluations without improvement (counted after "
            f"step {s.get('ft_patience_start_round', 0) * s['ft_round_steps']}) or at the cap "
            f"of {cap} steps; the dev set is scored on the params of the best held-out round. "
            '"Best step (last step)": the selected step, and where the run ended (= the cap: '
            'not ended by early stopping).', '',
            '| system | dev accuracy (%) | seeds | best step (last step) | parameters | '
            'inference FLOPs / example |', '|---|---|---|---|---|---|']
  early = total_runs = 0
  for row in summary['finetune'].values():
    last = row.get('last_step', {})
    stops = ', '.join(f'{v} ({last[k]})' if k in last else str(v)
                      for k, v in row['stopped_at'].items())
    early += sum(1 for v in last.values() if v < cap)
    total_runs += len(last)
    lines.append(f"| {row['label']} | {_ci(row['accuracy'].values())} | {len(row['accuracy'])} "
                 f"| {stops} | {row['num_params']:,} | {row['inference_flops']:.3g} |")
  b = summary['bow']
  lines.append(f"| bag-of-words logistic regression (reference) | {b['accuracy']:.2f} | "
               f"deterministic | - | - | - |")
  if total_runs:
    lines += ['', f'{early} of {total_runs} fine-tuning runs ended by early stopping' + (
        f'; the others reached the cap of {cap} steps.' if early < total_runs else '.')]
  effects = summary.get('effects', {})
  if any(effects.values()):
    lines += ['', '## The papers\' effects, as paired differences (a - b, same seeds)', '',
              'Verdict: "reproduced" when the 95% t-interval of a - b excludes 0 on the side the '
              'paper predicts (lower loss, higher accuracy), "opposite" when it excludes 0 on the '
              'other side, "not resolved" when it includes 0.', '',
              '| effect | measure | a | b | a - b | per seed | verdict |',
              '|---|---|---|---|---|---|---|']
    for measure, rows in (('held-out loss', effects.get('heldout_loss', [])),
                          ('dev accuracy (points)', effects.get('accuracy', []))):
      for e in rows:
        digits = 3 if 'loss' in measure else 2
        per_seed = ', '.join(f'{d:+.{digits}f}' for d in e['diffs'])
        lines.append(f"| {e['name']} | {measure} | {e['a']} | {e['b']} | "
                     f"{stats.format_ci(e['diffs'], digits)} | "
                     f"{per_seed} | {e['verdict']} |")
  lines += ['', f'Dev examples scored: {b["dev_examples"]}; SST-2 split: {summary["sst2"]}.',
            f'Settings: {s}', '', f'![curves and accuracies]({plot_name})', '',
            '## Stages (wall time of the run that produced each; "reused" = taken from '
            'the work directory)', '', '| stage | seconds | reused |', '|---|---|---|']
  for e in summary['stages']:
    lines.append(f"| {e['name']} | {e['seconds']} | {'yes' if e['reused'] else 'no'} |")
  total = sum(float(e['seconds']) for e in summary['stages'])
  jobs = summary.get('jobs', 0)
  lines.append(f'\nSum of the stage times: {total:.0f} s ({total / 60:.1f} min). Wall time of '
               f'this invocation: {summary["wall_seconds"]} s.')
  if jobs:
    lines.append(f'The lm_* and ft_* stages ran {jobs} at a time, each in a worker process '
                 'pinned to one core (`--jobs`), so their times overlap.')
  return '\n'.join(lines) + '\n'


def plot(summary, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax1, ax3, ax2) = plt.subplots(1, 3, figsize=(19, 5))
  for i, entry in enumerate(summary['lm'].values()):
    color = f'C{i}'
    for j, curve in enumerate(entry['curves'].values()):
      if curve:
        xs, ys = zip(*curve)
        ax1.plot(xs, ys, color=color, marker='o', alpha=0.8,
                 label=entry['label'] if j == 0 else None)
  ax1.set_xlabel('training tokens (inputs + targets)')
  ax1.set_ylabel('held-out PrefixLM loss')
  ax1.legend(fontsize=7)
  rows = list(summary['finetune'].values())
  for i, r in enumerate(rows):  # held-out accuracy against fine-tuning steps, mean over seeds
    by_step = {}
    for curve in r.get('heldout_curve', {}).values():
      for step, acc in curve:
        by_step.setdefault(step, []).append(acc)
    if by_step:
      steps = sorted(by_step)
      ax3.plot(steps, [sum(by_step[t]) / len(by_step[t]) for t in steps], marker='.',
               color=f'C{i % 10}', linestyle='-' if i < 10 else '--', label=r['label'])
  ax3.set_xlabel('fine-tuning steps')
  ax3.set_ylabel('SST-2 held-out accuracy (%), mean over the seeds still running')
  ax3.legend(fontsize=6)
  labels = [r['label'] for r in rows] + ['bag of words']
  means, errs = [], []
  for r in rows:
    m, h = stats.mean_ci(list(r['accuracy'].values()))
    means.append(m)
    errs.append(0.0 if math.isnan(h) else h)
  means.append(summary['bow']['accuracy'])
  errs.append(0.0)
  ax2.barh(range(len(labels)), means, xerr=errs, color='C0')
  ax2.set_yticks(range(len(labels)))
  ax2.set_yticklabels(labels, fontsize=7)
  ax2.axvline(50, color='grey', linestyle=':')
  ax2.set_xlabel('SST-2 dev accuracy (%), mean +- 95% CI')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_outputs(summary, *, workdir: str, markdown: str = None, plot: str = None,
                  argv=()) -> None:
  stages_lib.write_json(os.path.join(workdir, 'summary.json'), summary)
  png = plot or os.path.join(workdir, 'comparison.png')
  globals()['plot'](summary, png)
  md = markdown or os.path.join(workdir, 'comparison.md')
  rel = os.path.relpath(png, os.path.dirname(os.path.abspath(md)))
  text = globals()['markdown'](summary, argv=list(argv), plot_name=rel)
  with open(md, 'w', encoding='utf-8') as f:
    f.write(text)
  print(text, flush=True)
