"""gin/runs/adapt.gin (and distill.gin, which includes it) default to UL2: `CORPUS=NAME` trains and
evaluates on `NAME_ul2`, `OBJECTIVE` picks another of the corpus's tasks, `MIXTURE_OR_TASK_NAME`
still wins, and a run with neither stops in one line before writing anything."""
import gin
import pytest

from trainer import gin_flags
from trainer import train as train_entry

BASE = ["MODEL_DIR='/tmp/unused'", "TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 8}",
        'TRAIN_STEPS=1', "DECODER_ONLY_CHECKPOINT='/nonexistent'", 'VOCAB_SIZE=100']


@pytest.fixture(autouse=True)
def _clean_gin():
  yield
  gin.clear_config()


def _task_names(run_file, extra):
  gin.clear_config()
  gin_flags.setup_gin(gin_files=['gin/models/t5gemma2_tiny.gin', run_file],
                      gin_bindings=BASE + list(extra))
  return [gin.get_configurable(f'{scope}/trainer.training.data.DatasetConfig')().mixture_or_task_name
          for scope in ('train', 'eval')]


@pytest.mark.parametrize('run_file', ['gin/runs/adapt.gin', 'gin/runs/distill.gin'])
def test_ul2_is_the_default_objective(run_file):
  assert _task_names(run_file, ["CORPUS='pydoc'"]) == ['pydoc_ul2'] * 2
  assert _task_names(run_file, ["CORPUS='pydoc'", "OBJECTIVE='ul2_prefix_lm'"]) == [
      'pydoc_ul2_prefix_lm'] * 2
  assert _task_names(run_file, ["CORPUS='pydoc'", "MIXTURE_OR_TASK_NAME='mine_prefix_lm'"]) == [
      'mine_prefix_lm'] * 2


def test_the_default_names_a_registered_task():
  import seqio  # pylint: disable=g-import-not-at-top
  import tasks  # pylint: disable=g-import-not-at-top
  tasks.register_tasks()
  assert 'pydoc_ul2' in seqio.TaskRegistry.names()


def test_no_corpus_and_no_task_is_one_line(tmp_path, capsys):
  model_dir = tmp_path / 'run'
  argv = ['--gin_file=gin/models/t5gemma2_tiny.gin', '--gin_file=gin/runs/adapt.gin'] + [
      f'--gin.{b}' for b in BASE if not b.startswith('MODEL_DIR')] + [
          f"--gin.MODEL_DIR='{model_dir}'"]
  gin.clear_config()
  assert train_entry.run(argv) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and 'Traceback' not in err, err
  assert err.startswith('train: gin/runs/adapt.gin needs its data: pass --gin.CORPUS=NAME'), err
  assert not model_dir.exists()
