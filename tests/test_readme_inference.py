"""The README's inference block runs as written on a tiny T5Gemma checkpoint, and its JSONL is right.

The README chain (`tests/test_readme.py::test_readme_runnable_blocks`) runs the block after a
20-step distillation; this test runs the same block alone, in seconds: a tiny random T5Gemma
trainer checkpoint and a SentencePiece vocabulary stand at the paths it names (/tmp/ga pointed at
a temporary folder), and each output line must be what `decoding.generate` gives for its prompt.
"""
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from tasks import vocab as vocab_lib
from trainer.checkpoint import checkpoints
from trainer.inference import decoding
from trainer.model import config_io
from trainer.model.config import EncoderDecoderConfig, TransformerConfig
from trainer.model.transformer import EncoderDecoder

REPO = pathlib.Path(__file__).resolve().parents[1]
RUNNABLE = re.compile(r'<!-- test: run -->\s*\n```(?:sh|bash)\n(.*?)```', re.S)
MAX_DECODE_LENGTH = 16  # the block's --gin.MAX_DECODE_LENGTH


def readme_infer_block() -> str:
  blocks = [b for b in RUNNABLE.findall((REPO / 'README.md').read_text(encoding='utf-8'))
            if 'python -m trainer.infer' in b]
  assert len(blocks) == 1, 'expected one runnable README block with python -m trainer.infer'
  return blocks[0]


@pytest.fixture(scope='module')
def ga(corpus_file, tmp_path_factory):
  """/tmp/ga as the block expects it: spm.model and a trainer checkpoint at t5gemma/."""
  root = tmp_path_factory.mktemp('readme') / 'ga'
  root.mkdir()
  model, _ = vocab_lib.train_vocabulary(input_files=[corpus_file], vocab_size=600,
                                        output_prefix=str(root / 'spm'))
  assert model == str(root / 'spm.model')
  stack = dict(vocab_size=600, embed_dim=32, num_layers=2, num_heads=2, num_kv_heads=1,
               head_dim=16, mlp_dim=64, query_pre_attn_scalar=16, sliding_window=4)
  cfg = EncoderDecoderConfig(encoder=TransformerConfig(**stack), decoder=TransformerConfig(**stack))
  ones = jnp.ones((1, 4), jnp.int32)
  params = meta.unbox(EncoderDecoder(cfg).init(jax.random.PRNGKey(0), ones, ones)['params'])
  rng = np.random.RandomState(0)
  params = jax.tree_util.tree_map(
      lambda x: np.asarray(x) + 0.3 * rng.randn(*x.shape).astype(np.float32), params)
  ckpt = root / 't5gemma'
  checkpoints.save_params(str(ckpt), params)
  config_io.write_model_config(cfg, str(ckpt))
  return root, cfg, params


def test_readme_inference_block_writes_the_documented_jsonl(ga):
  root, cfg, params = ga
  script = 'set -euo pipefail\n' + readme_infer_block().replace('/tmp/ga', str(root))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')])),
             PATH=f'{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}')
  proc = subprocess.run(['bash', '-c', script], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert 'infer: 2/2 examples' in proc.stderr
  summary = json.loads(proc.stderr.split('infer: summary ', 1)[1].splitlines()[0])
  assert summary['examples'] == 2 and summary['decode_method'] == 'greedy'
  lines = (root / 'generated.jsonl').read_text(encoding='utf-8').splitlines()
  rows = [json.loads(l) for l in lines]
  assert len(rows) == 2 and all(set(r) == {'output_ids', 'text', 'score'} for r in rows)
  # The prompts as the block writes them: a text line (seqio's inputs: EOS appended) and ids.
  vocab = vocab_lib.get_vocabulary(str(root / 'spm.model'))
  prompts = [list(vocab.encode('def main():')) + [1], [5, 6, 7]]
  tokens = np.zeros((2, max(map(len, prompts))), np.int32)
  for b, p in enumerate(prompts):
    tokens[b, :len(p)] = p
  want = decoding.generate(config=cfg, params=params, prompt_tokens=tokens,
                           max_decode_length=MAX_DECODE_LENGTH)
  for b, row in enumerate(rows):
    ids = row['output_ids']
    assert ids == want.tokens[b, :want.lengths[b]].tolist()
    assert 1 <= len(ids) <= MAX_DECODE_LENGTH and all(0 <= t < 600 for t in ids)
    assert row['text'] == vocab.decode([t for t in ids if t != 1])
    assert row['score'] == pytest.approx(float(want.scores[b]), abs=1e-4) and row['score'] < 0
