"""Input benchmark: builds a real (small) Beam cache, reads it through trainer.training.data, prints figures."""
import os
import re
import subprocess
import sys

import pytest

from pipelines import input_bench


def test_parse_lengths():
  assert input_bench.parse_lengths('inputs:2048,targets:512') == {'inputs': 2048,
                                                                  'targets': 512}
  with pytest.raises(ValueError, match='--feature_lengths'):
    input_bench.parse_lengths('inputs=2048')


def test_required_tokens_per_s_follows_the_flops_counting():
  from trainer.model import config as config_lib
  from trainer.training import flops as flops_lib
  from trainer.training import models
  side = dict(vocab_size=1000, embed_dim=64, num_layers=2, num_heads=2, num_kv_heads=1,
              head_dim=32, mlp_dim=128, query_pre_attn_scalar=32, sliding_window=16)
  cfg = config_lib.EncoderDecoderConfig(encoder=config_lib.TransformerConfig(**side),
                                        decoder=config_lib.TransformerConfig(**side))
  model = models.EncoderDecoderModel(config=cfg)
  need = input_bench.required_tokens_per_s(model, {'inputs': 64, 'targets': 32}, mfu=0.5,
                                           peak_flops=1e12)
  flops = flops_lib.encoder_decoder_training_flops(cfg, 64, 32)
  assert need['tokens_per_example'] == 96
  assert need['rows_per_s'] == pytest.approx(0.5e12 / flops)
  assert need['tokens_per_s'] == pytest.approx(96 * 0.5e12 / flops)


def test_cli_builds_a_cache_and_reports_reader_headroom(shared_data, tmp_path, repo_root):
  text = (shared_data / 'tinyshakespeare' / 'input.txt').read_bytes()[:60_000]
  (tmp_path / 'corpus.txt').write_bytes(text)
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  cmd = [sys.executable, '-m', 'pipelines.input_bench', '--gin_file=gin/models/t5gemma_tiny.gin',
         f'--text_file={tmp_path / "corpus.txt"}', f'--work_dir={tmp_path / "work"}',
         '--feature_lengths=inputs:64,targets:64', '--batch_size=4', '--batches=30',
         '--peak_flops=1e12', '--gin.VOCAB_SIZE=2000', '--resume_at=2,20']
  out = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  assert (tmp_path / 'work' / 'cache' / 'input_bench_prefix_lm.in64_tg64' / 'COMPLETED').exists()
  read = re.search(r'read (\d+) rows .* \| ([\d,.]+) examples/s \| ([\d,]+) tokens/s', out.stdout)
  assert read, out.stdout
  assert int(read.group(1)) == 120  # 30 batches x 4 packed rows
  tokens_per_s = float(read.group(3).replace(',', ''))
  examples_per_s = float(read.group(2).replace(',', ''))
  assert tokens_per_s == pytest.approx(examples_per_s * 128, rel=0.01)  # 64 + 64 per row
  need = re.search(r'needs ([\d,]+) tokens/s .* reader ([\d.]+)x grain, ([\d.]+)x seqio',
                   out.stdout)
  assert need, out.stdout
  assert float(need.group(2)) == pytest.approx(
      tokens_per_s / float(need.group(1).replace(',', '')), rel=0.02)
  # Both loaders, side by side, read the same number of rows; resume timings for both.
  lines = re.findall(r'input_bench: (grain|seqio) read (\d+) rows', out.stdout)
  assert lines == [('grain', '120'), ('seqio', '120')], out.stdout
  resume = re.search(r'resume -> first batch \| at batch 2: grain ([\d.]+) s, seqio ([\d.]+) s '
                     r'\| at batch 20: grain ([\d.]+) s, seqio ([\d.]+) s', out.stdout)
  assert resume, out.stdout


def test_cli_bad_flags_are_one_line(repo_root):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-m', 'pipelines.input_bench',
                        '--gin_file=gin/models/t5gemma_tiny.gin', '--feature_lengths=oops', '--gin.VOCAB_SIZE=2000'],
                       cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1].startswith('input_bench: --feature_lengths'), (
      out.stderr[-1000:])
