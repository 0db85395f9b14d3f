"""MetricsWriter across a resume from an older checkpoint: metrics.jsonl and TensorBoard (read back
with TensorBoard's own event loader) both give one value per (split, step), the replayed one."""
import json

from tensorboard.backend.event_processing import event_accumulator

from trainer.training import metrics as metrics_lib


def _segment(model_dir, resume_step, steps, *, offset):
  writer = metrics_lib.MetricsWriter(str(model_dir), stream=open('/dev/null', 'w'))
  writer.drop_after(resume_step)
  for step in steps:
    writer.write(step, {'loss': step + offset})
    if step % 2 == 0:
      writer.write(step, {'loss': step + offset + 0.5}, split='eval')
  writer.close()


def _shown(logdir, tag='loss'):
  acc = event_accumulator.EventAccumulator(
      str(logdir), size_guidance={event_accumulator.SCALARS: 0})
  acc.Reload()
  return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_resume_from_older_step_replaces_replayed_steps(tmp_path):
  _segment(tmp_path, 0, range(1, 7), offset=100)  # steps 1..6 logged, say checkpoint at 2
  _segment(tmp_path, 2, range(3, 6), offset=200)  # resumed at 2: replays 3..5, then stops
  _segment(tmp_path, 5, range(6, 9), offset=300)  # resumed at 5: 6..8
  want = {1: 101, 2: 102, 3: 203, 4: 204, 5: 205, 6: 306, 7: 307, 8: 308}
  assert _shown(tmp_path / 'train') == sorted(want.items())
  assert _shown(tmp_path / 'eval') == [(2, 102.5), (4, 204.5), (6, 306.5), (8, 308.5)]
  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert {(r['split'], r['step']): r['loss'] for r in lines} == {
      **{('train', s): v for s, v in want.items()},
      **{('eval', s): want[s] + 0.5 for s in (2, 4, 6, 8)}}
  assert len(lines) == 12  # one line per (split, step)
