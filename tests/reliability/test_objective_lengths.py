"""Guarantee: UL2 / span corruption refuse feature lengths too short to mean anything (one line
naming the denoisers) and warn, naming them, when a denoiser cannot make spans of its kind."""
import pytest

from tasks.objectives import planning
from tasks import special_tokens as special_lib


def _special():
  # A vocabulary's special tokens: 3 mode tokens and 100 sentinels (ids are not used here).
  sentinels = tuple(range(200, 100, -1))
  return special_lib.SpecialTokens(
      mode_ids={m: 10 + i for i, m in enumerate(special_lib.MODE_TOKENS)},
      sentinel_ids=sentinels, mode_pieces={m: m for m in special_lib.MODE_TOKENS},
      sentinel_pieces=tuple(f'<extra_id_{i}>' for i in range(len(sentinels))), style='extra_id')


def test_ul2_at_2_2_is_refused_naming_the_denoisers():
  with pytest.raises(ValueError, match=r'at least 4 source tokens.*\[NLU\]span'):
    planning.plan_mixture({'inputs': 2, 'targets': 2}, {}, planning.UL2_DENOISERS,
                          special=_special())


def test_ul2_at_8_8_warns_about_the_x_denoisers(caplog):
  with caplog.at_level('WARNING'):
    plan = planning.plan_mixture({'inputs': 8, 'targets': 8}, {}, planning.UL2_DENOISERS,
                                 special=_special())
  degenerate = planning.degenerate_denoisers(plan.denoisers, plan.lengths)
  assert degenerate and all('span' in name for name in degenerate)
  assert any('[NLG]span(mu=64' in name for name in degenerate)  # an X-denoiser
  assert 'these denoisers make shorter spans' in caplog.text


def test_ul2_at_usual_lengths_is_quiet():
  plan = planning.plan_mixture({'inputs': 512, 'targets': 512}, {}, planning.UL2_DENOISERS,
                               special=_special())
  assert planning.degenerate_denoisers(plan.denoisers, plan.lengths) == ()
