"""Shared pytest fixtures: paths to the small real data sets in ../shared/data."""
import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """The read-only data folder beside the checkout (tests may read it; the product must not)."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"shared data not found at {SHARED_DATA}")
  return SHARED_DATA


@pytest.fixture(scope='module')
def corpus_file(shared_data, tmp_path_factory):
  """A 200 kB slice of tinyshakespeare (keeps SentencePiece training about a second)."""
  path = tmp_path_factory.mktemp('corpus') / 'shakespeare.txt'
  path.write_bytes((shared_data / 'tinyshakespeare' / 'input.txt').read_bytes()[:200_000])
  return str(path)


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
  return REPO_ROOT


def pytest_configure(config):  # pylint: disable=unused-argument
  """Compilation dominates many tests on a 2-core machine: share a persistent XLA cache."""
  import tempfile  # pylint: disable=g-import-not-at-top
  try:
    import jax  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  jax.config.update('jax_compilation_cache_dir',
                    os.path.join(tempfile.gettempdir(), 'gemma_adapt_test_jax_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
