"""`python -m trainer.infer` and its library: layouts per checkpoint kind, JSONL in/out, resuming,
one-line errors."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from trainer.checkpoint import checkpoints
from trainer.checkpoint import hf_gemma2
from trainer.inference import decoding
from trainer.inference import infer
from trainer.model import config_io
from trainer.model.config import TransformerConfig
from trainer.model.transformer import Decoder

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))
CFG = TransformerConfig(vocab_size=40, embed_dim=32, num_layers=2, num_heads=2, num_kv_heads=1,
                        head_dim=16, mlp_dim=32, query_pre_attn_scalar=16, sliding_window=3)
PROMPTS = [[5, 6, 7, 8], [9, 3], [11, 12, 13], [20]]


@pytest.fixture(scope='module')
def checkpoints_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('ckpts')
  params = meta.unbox(Decoder(CFG).init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32)))
  rng = np.random.RandomState(0)
  params = jax.tree_util.tree_map(
      lambda x: np.asarray(x) + 0.3 * rng.randn(*x.shape).astype(np.float32), params['params'])
  trainer_dir = str(root / 'trainer')
  checkpoints.save_params(trainer_dir, params)
  config_io.write_model_config(CFG, trainer_dir)
  hf_dir = str(root / 'hf')
  hf_gemma2.export_decoder(params, CFG, hf_dir)
  inputs = root / 'in.jsonl'
  inputs.write_text(''.join(json.dumps({'input_ids': p, 'id': i}) + '\n'
                            for i, p in enumerate(PROMPTS)))
  return {'params': params, 'trainer': trainer_dir, 'hf': hf_dir, 'inputs': str(inputs),
          'root': root}


def _run(ckpt, out, **kw):
  args = dict(checkpoint_path=ckpt, input_file=kw.pop('input_file', None), output_file=str(out),
              max_decode_length=5, batch_size=3, log=lambda m: None)
  args.update(kw)
  return infer.infer(**args)


def _read(path):
  return [json.loads(l) for l in open(path, encoding='utf-8')]


def test_layouts_outputs_and_resume(checkpoints_dir, tmp_path):
  c = checkpoints_dir
  out = tmp_path / 'trainer.jsonl'
  summary = _run(c['trainer'], out, input_file=c['inputs'])
  rows = _read(out)
  assert len(rows) == 4 and summary['examples'] == 4
  # Trainer checkpoint: seqio's PrefixLM layout [0, x..], bidirectional prompt (one batched call;
  # rows are independent).
  lengths = np.array([len(p) for p in PROMPTS])
  padded = np.array([p + [0] * (4 - len(p)) for p in PROMPTS], np.int32)
  lead = np.concatenate([np.zeros((4, 1), np.int32), padded], axis=1)
  want = decoding.generate(config=CFG, params=c['params'], prompt_tokens=lead,
                           prompt_lengths=lengths + 1, max_decode_length=5,
                           bidirectional_prompt=True)
  for b, row in enumerate(rows):
    assert row['output_ids'] == want.tokens[b, :want.lengths[b]].tolist()
    assert row['score'] == pytest.approx(float(want.scores[b]), abs=1e-4)
  # HF directory: the prompt as given (transformers' semantics).
  hf_out = tmp_path / 'hf.jsonl'
  _run(c['hf'], hf_out, input_file=c['inputs'])
  want = decoding.generate(config=CFG, params=c['params'], prompt_tokens=padded,
                           prompt_lengths=lengths, max_decode_length=5)
  for b, row in enumerate(_read(hf_out)):
    assert row['output_ids'] == want.tokens[b, :want.lengths[b]].tolist()
  # Interrupted run: one complete line and half a line; the rerun finishes the same bytes.
  full = out.read_bytes()
  first_end = full.index(b'\n') + 1
  out.write_bytes(full[:first_end + 7])
  summary = _run(c['trainer'], out, input_file=c['inputs'])
  assert summary['resumed_after'] == 1 and summary['examples'] == 3
  assert out.read_bytes() == full
  # Beam and seeded sampling run through the same path; sampling is reproducible.
  for method, extra in (('beam', dict(num_beams=3)), ('sample', dict(top_k=5, seed=3))):
    a, b = tmp_path / f'{method}_a.jsonl', tmp_path / f'{method}_b.jsonl'
    _run(c['trainer'], a, input_file=c['inputs'], decode_method=method, **extra)
    _run(c['trainer'], b, input_file=c['inputs'], decode_method=method, **extra)
    assert a.read_bytes() == b.read_bytes() and len(_read(a)) == 4


@pytest.mark.parametrize('line,kw,message', [
    ({'input_ids': []}, {}, 'empty prompt'),
    ({'input_ids': [3, 40]}, {}, 'outside the vocabulary'),
    ({'input_ids': [3, 4, 5, 6]}, dict(max_input_length=3), 'MAX_INPUT_LENGTH=3'),
    ({'text': 'hello'}, {}, 'needs a vocabulary'),
    ({'input_ids': [3], 'text': 'x'}, {}, 'exactly one of'),
    ({'input_ids': [3]}, dict(top_p=1.5, decode_method='sample'), 'top_p'),
    ({'input_ids': [3]}, dict(num_beams=0, decode_method='beam'), 'num_beams'),
])
def test_bad_input_is_rejected_before_writing(checkpoints_dir, tmp_path, line, kw, message):
  path = tmp_path / 'in.jsonl'
  path.write_text(json.dumps({'input_ids': [4, 5]}) + '\n' + json.dumps(line) + '\n')
  out = tmp_path / 'out.jsonl'
  with pytest.raises(ValueError, match=message):
    _run(checkpoints_dir['trainer'], out, input_file=str(path), **kw)
  assert not out.exists()


def test_left_truncation_keeps_the_last_tokens():
  ids = infer.prompt_ids([{'input_ids': [3, 4, 5, 6]}], vocab_size=40, kind='hf', encode=None,
                         max_input_length=2, truncate='left')
  assert ids == [[5, 6]]


def test_command_line_progress_summary_and_one_line_errors(checkpoints_dir, tmp_path):
  c = checkpoints_dir
  out = tmp_path / 'cli.jsonl'
  base = [sys.executable, '-m', 'trainer.infer', '--gin_file=gin/runs/infer.gin',
          f'--gin.INPUT_FILE="{c["inputs"]}"', f'--gin.OUTPUT_FILE="{out}"',
          '--gin.MAX_DECODE_LENGTH=4', '--gin.BATCH_SIZE=2']
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.run(base + [f'--gin.CHECKPOINT_PATH="{c["hf"]}"'], capture_output=True,
                        text=True, env=env, cwd=REPO, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'infer: 2/4 examples' in proc.stderr and 'infer: summary' in proc.stderr
  summary = json.loads(proc.stderr.split('infer: summary ', 1)[1].splitlines()[0])
  assert summary['examples'] == 4 and summary['time_to_first_token_s'] > 0
  assert len(_read(out)) == 4
  unknown = tmp_path / 'llama'
  unknown.mkdir()
  (unknown / 'config.json').write_text(json.dumps({'model_type': 'llama'}))
  proc = subprocess.run(base + [f'--gin.CHECKPOINT_PATH="{unknown}"',
                                f'--gin.OUTPUT_FILE="{tmp_path / "x.jsonl"}"'],
                        capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
  assert proc.returncode == 2
  assert 'llama' in proc.stderr and 'Traceback' not in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1
  # The run gin's mesh is the one decoding uses: fsdp=2 on this 1-device run is refused.
  proc = subprocess.run(base + [f'--gin.CHECKPOINT_PATH="{c["hf"]}"',
                                '--gin.partitioning.MeshConfig.fsdp=2'],
                        capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
  assert proc.returncode == 2 and 'MeshConfig' in proc.stderr, proc.stderr[-2000:]
  assert len(proc.stderr.strip().splitlines()) == 1


def test_text_prompts_follow_the_checkpoint_kind():
  encode = lambda s: [ord(c) - 90 for c in s]  # 'ab' -> [7, 8]
  rows = [{'text': 'ab'}]
  assert infer.prompt_ids(rows, vocab_size=40, kind='hf', encode=encode,
                          max_input_length=None) == [[2, 7, 8]]  # BOS first (Gemma tokenizer)
  assert infer.prompt_ids(rows, vocab_size=40, kind='trainer', encode=encode,
                          max_input_length=None) == [[7, 8, 1]]  # EOS last (seqio inputs)


def test_only_process_zero_writes(checkpoints_dir, tmp_path, monkeypatch):
  """Multi-host: outputs are replicated, so a process other than 0 decodes but writes nothing."""
  monkeypatch.setattr(infer.jax, 'process_index', lambda: 1)
  out = tmp_path / 'host1.jsonl'
  summary = _run(checkpoints_dir['trainer'], out, input_file=checkpoints_dir['inputs'])
  assert summary['examples'] == 4 and summary['generated_tokens'] > 0
  assert not out.exists()


def test_a_distillation_checkpoint_decodes_its_student(checkpoints_dir, tmp_path):
  """A distillation run keeps its teacher in params['teacher']: infer decodes the student only."""
  c = checkpoints_dir
  params = dict(c['params'], teacher={'embedder': {'embedding': np.zeros((8, 4), np.float32)}})
  distilled = str(tmp_path / 'distilled')
  checkpoints.save_params(distilled, params)
  config_io.write_model_config(CFG, distilled)
  a, b = tmp_path / 'student.jsonl', tmp_path / 'plain.jsonl'
  # Under a mesh (as the command line runs), where params are placed tensor by tensor.
  from trainer.training import partitioning  # pylint: disable=g-import-not-at-top
  _run(distilled, a, input_file=c['inputs'],
       partitioner=partitioning.Partitioner(mesh_config=partitioning.MeshConfig()))
  _run(c['trainer'], b, input_file=c['inputs'])
  assert a.read_bytes() == b.read_bytes() and len(_read(a)) == 4
