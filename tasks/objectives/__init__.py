"""Pretraining objectives: PrefixLM, UL2 mixture of denoisers, T5 span corruption, causal LM.

  planning       the maths both implementations share: `Denoiser`, `UL2_DENOISERS`, `span_counts`,
                 `raw_length`, `plan_mixture`, `denoisers_of` (no TensorFlow)
  preprocessors  the seqio preprocessors in tf.data: `prefix_lm`, `ul2`, `span_corruption`,
                 `causal_lm`, `denoise_mixture` (imports TensorFlow)
  numpy_impl     their vectorised NumPy twins for the Beam cache job (no TensorFlow)

The public names of `planning` and `preprocessors` are also names of this package, so task
registrations, gin files and docs write `objectives.ul2` or `objectives.Denoiser`. They are looked
up lazily: importing this package (or `planning`, or `numpy_impl`) imports no TensorFlow; naming a
preprocessor (`objectives.span_corruption`) imports `preprocessors`.
"""
import importlib

_PLANNING = ('SPAN', 'PREFIX_LM', 'CAUSAL_LM', 'Denoiser', 'r_denoiser', 'x_denoiser', 'S_DENOISER',
             'UL2_DENOISERS', 'T5_SPAN_CORRUPTION', 'validate_mixture', 'span_counts',
             'span_example_lengths', 'raw_length', 'require_lengths', 'MixturePlan',
             'plan_mixture', 'denoisers_of')
_PREPROCESSORS = ('denoise_mixture', 'ul2', 'prefix_lm', 'span_corruption', 'causal_lm',
                  'random_spans_mask')
_SUBMODULES = ('planning', 'preprocessors', 'numpy_impl')
__all__ = _PLANNING + _PREPROCESSORS + _SUBMODULES


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f'{__name__}.{name}')
  if name in _PLANNING:
    return getattr(importlib.import_module(f'{__name__}.planning'), name)
  if name in _PREPROCESSORS:
    return getattr(importlib.import_module(f'{__name__}.preprocessors'), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(__all__)
