"""`trainer.model.matmul`: 2-D matmul form of the dense contractions (CPU) against `dot_general`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.model import matmul


def _loss(fn):
  return lambda x, k: jnp.sum(jnp.tanh(fn(x, k)) ** 2)


@pytest.mark.parametrize('x_shape,k_shape,n_in', [((2, 5, 8), (8, 3, 4), 1),    # q_proj
                                                  ((2, 5, 3, 4), (3, 4, 8), 2),  # o_proj
                                                  ((7, 8), (8, 6), 1)])
def test_flat_and_plain_forms_agree_with_gradients(x_shape, k_shape, n_in):
  rng = np.random.RandomState(0)
  x = rng.randn(*x_shape).astype(np.float32)
  k = rng.randn(*k_shape).astype(np.float32)
  results = {}
  for flat in (True, False):
    with matmul.flat_dots(flat):
      def fn(a, b):
        return matmul.contract(a, b, num_input_axes=n_in)
      out = jax.jit(fn)(x, k)
      grads = jax.jit(jax.grad(_loss(fn), argnums=(0, 1)))(x, k)
    results[flat] = (out, grads)
  expected = np.tensordot(x, k, axes=n_in)
  for flat, (out, grads) in results.items():
    assert out.shape == x_shape[:len(x_shape) - n_in] + k_shape[n_in:], flat
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)
  for a, b in zip(results[True][1], results[False][1]):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_transposed_contraction_is_the_tied_logits():
  rng = np.random.RandomState(1)
  x = rng.randn(2, 3, 8).astype(np.float32)
  table = rng.randn(11, 8).astype(np.float32)
  for flat in (True, False):
    with matmul.flat_dots(flat):
      got = matmul.contract_transposed(x, table, preferred_element_type=jnp.float32)
    np.testing.assert_allclose(np.asarray(got), x @ table.T, rtol=1e-5, atol=1e-5)


def test_default_is_flat_on_cpu_only_and_the_context_restores():
  assert matmul.flat_dots_enabled() == (jax.default_backend() == 'cpu')
  with matmul.flat_dots(False):
    assert not matmul.flat_dots_enabled()
    with matmul.flat_dots(True):
      assert matmul.flat_dots_enabled()
    assert not matmul.flat_dots_enabled()
  assert matmul.flat_dots_enabled() == (jax.default_backend() == 'cpu')


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='XLA CPU lowering')
def test_cpu_weight_gradient_needs_no_transposed_copy_of_the_activations():
  """The reason for the 2-D form: on XLA CPU, the kernel gradient of `[B, L, D] x [D, F]` through
  an elementwise op materialises the cotangent transposed (`[F, B, L]`) with the `dot_general`
  form, and not with the 2-D form."""
  x = jnp.ones((4, 16, 32), jnp.float32)
  k = jnp.ones((32, 48), jnp.float32)

  def transposed_cotangents(flat):
    with matmul.flat_dots(flat):
      fn = lambda a, b: matmul.contract(a, b)  # pylint: disable=unnecessary-lambda-assignment
      hlo = jax.jit(jax.grad(_loss(fn), argnums=1)).lower(x, k).compile().as_text()
    return [line for line in hlo.splitlines() if ' transpose(' in line and 'f32[48,4,16]' in line]

  assert transposed_cotangents(False), 'expected the dot_general form to transpose the cotangent'
  assert not transposed_cotangents(True)
  with pytest.raises(ValueError, match='input axes'):
    matmul.contract(x, jnp.ones((31, 2)))


def test_plain_form_lowers_to_the_programs_the_model_had_before():
  """Off CPU (here forced by flat_dots(False)) the lowered programs are the old ones, op for op."""
  import re  # pylint: disable=g-import-not-at-top

  def text(fn, *args):
    return re.sub(r'loc\(.*?\)|#loc\d*|module @\S+', '', jax.jit(fn).lower(*args).as_text())

  x, k, table = jnp.ones((2, 3, 8)), jnp.ones((8, 4, 5)), jnp.ones((11, 8))
  with matmul.flat_dots(False):
    proj = text(lambda a, b: matmul.contract(a, b), x, k)
    logits = text(lambda a, b: matmul.contract_transposed(
        a, b, preferred_element_type=jnp.float32), x, table)
  assert proj == text(lambda a, b: jax.lax.dot_general(a, b, (((2,), (0,)), ((), ()))), x, k)
  assert logits == text(lambda a, b: jnp.einsum('bld,vd->blv', a, b,
                                                preferred_element_type=jnp.float32), x, table)
  with matmul.flat_dots(True):
    assert 'reshape' in text(lambda a, b: matmul.contract(a, b), x, k)
