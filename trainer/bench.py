r"""Step-time benchmark on synthetic batches: `python -m trainer.bench --gin_file=gin/models/X.gin`.

Runs the real train step (loss, gradients, optimiser update, sharding from the mesh rules) on random
token batches — no TensorFlow, seqio or Beam is imported — and prints step time, tokens/s and MFU
(`trainer.training.flops` counting; MFU is omitted where the device's peak is unknown, e.g. CPU, unless
`--gin.benchmark.peak_flops=...` gives it).

  python -m trainer.bench --gin_file=gin/models/gemma2_2b.gin --gin.benchmark.batch_size=8 \
      --gin.benchmark.length=2048 --gin.benchmark.steps=10

Options are the `benchmark()` arguments, bound with `--gin.benchmark.NAME=VALUE` (`steps`,
`batch_size`, `length`, `encoder_length`, `micro_batches`, `optimizer` ('adafactor'|'adamw'),
`master_dtype` (None | 'float32': fp32 master copy of bf16 params, `optimizers.with_master_copy`),
`mesh_data/mesh_fsdp/mesh_tensor`, `peak_flops`, `seed`). Model switches are the model file's
(`--gin.REMAT=...`, `--gin.PARAM_DTYPE=...`, `--gin.SCAN_LAYERS=True`).

The library is `trainer.training.benchmark`.
"""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import flags  # pylint: disable=g-import-not-at-top

from trainer import gin_flags  # pylint: disable=g-import-not-at-top
from trainer import host_malloc  # pylint: disable=g-import-not-at-top

flags.adopt_module_key_flags(gin_flags)
# The benchmark's own arguments are bound as `benchmark.NAME` (the function, registered here).
PRELUDE = ('from __gin__ import dynamic_registration', 'from trainer.training import benchmark',
           'benchmark.benchmark.model = %MODEL')


def main(argv) -> int:
  del argv
  import gin  # pylint: disable=g-import-not-at-top
  from trainer.training import benchmark  # pylint: disable=g-import-not-at-top
  gin.get_configurable(benchmark.benchmark)()
  return 0


def _benchmark_bindings(args):
  return [a.replace('--gin.benchmark.', '--gin.benchmark.benchmark.', 1) for a in args]


def run_cli(argv=None) -> int:
  """`argv`: the arguments without the program name (default: sys.argv[1:])."""
  host_malloc.tune_for_cpu()  # before TF/JAX start threads (trainer/host_malloc.py)
  return gin_flags.run(main, argv=argv, program='bench', prelude=PRELUDE,
                       rewrite_args=_benchmark_bindings)


if __name__ == '__main__':
  sys.exit(run_cli())
