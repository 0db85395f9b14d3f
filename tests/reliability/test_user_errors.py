"""Guarantee: a user's mistake ends the command with exit status 2 and ONE line that names the
cause (no traceback, no hang); bad input records never stop a run.

Real commands on tiny data: the cache job (`python -m pipelines.cache_tasks`) and the trainer
(`python -m trainer.train`); gin errors through the trainer's `run()` in this process.
"""
import json

import gin
import pytest

from tests.reliability import conftest as rel
from trainer import train as train_entry


def test_corpus_glob_matching_nothing(tmp_path, task_env):
  proc = rel.cache_job(tmp_path / 'cache', task_env(jsonl_file=tmp_path / 'nothing' / '*.jsonl'))
  err = rel.one_line_error(proc, 'cache_tasks')
  assert "split 'train'" in err and 'no file matches' in err, err


def test_missing_vocabulary_names_only_the_real_cause(tmp_path, task_env):
  corpus = tmp_path / 'docs.jsonl'
  corpus.write_text(json.dumps({'text': 'a document'}) + '\n')
  module = tmp_path / 'rel_tasks.py'  # the same tasks, with a SentencePiece file that is not there
  module.write_text(module.read_text().replace(
      'seqio.ByteVocabulary()', f'seqio.SentencePieceVocabulary("{tmp_path}/missing.model")'))
  proc = rel.cache_job(tmp_path / 'cache', task_env(jsonl_file=corpus))
  err = rel.one_line_error(proc, 'cache_tasks')
  assert 'vocabulary' in err and 'missing.model' in err and 'too short' not in err, err


def test_vocab_size_smaller_than_the_vocabulary(tmp_path, task_env, text_corpus):
  proc = rel.run_cmd(rel.train_args(tmp_path / 'run', steps=2, vocab_size=100),
                     task_env(text_file=text_corpus))
  err = rel.one_line_error(proc, 'train')
  assert 'outside the model\'s vocabulary (vocab_size 100' in err and 'diverged' not in err, err


def test_trainer_on_the_fly_with_a_lone_surrogate_trains_and_exits(tmp_path, task_env):
  corpus = tmp_path / 'docs.jsonl'
  lines = [json.dumps({'text': d}) for d in rel.good_docs(30)]
  lines.insert(1, '{"text": "a \\ud800 b"}')
  corpus.write_text('\n'.join(lines) + '\n')
  proc = rel.run_cmd(rel.train_args(tmp_path / 'run', task='reljsonl_lm', steps=2),
                     task_env(jsonl_file=corpus), timeout=240)  # a hang fails here
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert 'train: done at step 2' in proc.stdout and 'InternalError' not in proc.stderr


@pytest.fixture
def _clean_gin():
  yield
  gin.clear_config()


def test_run_gin_file_without_a_model_file(capsys, _clean_gin):
  gin.clear_config()
  rc = train_entry.run(['--gin_file=gin/runs/pretrain.gin', "--gin.MODEL_DIR='/tmp/unused'",
                        "--gin.MIXTURE_OR_TASK_NAME='x'", "--gin.TASK_FEATURE_LENGTHS={'targets': 8}",
                        '--gin.TRAIN_STEPS=1'])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and len(err.splitlines()) == 1, err
  assert 'no model file given' in err and 'gin/models/' in err, err
