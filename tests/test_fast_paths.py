"""Every optimised path computes what the straightforward one computes: the convolution's CPU weight
gradient, the XLA:CPU compile options, the windowed attention and remat."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mrisr_jax import compile_options
from mrisr_jax.models import casr as casr_lib
from mrisr_jax.models import conv, swin

pytestmark = pytest.mark.unit

HIGHEST = jax.lax.Precision.HIGHEST


def _plain_grads(x, kernel, padding, dy):
  y, vjp = jax.vjp(lambda a, k: conv.plain_conv(a, k, padding), x, kernel)
  return (y, *vjp(dy))


@pytest.mark.parametrize(
  'shape',
  [
    (2, 9, 11, 24, 8, 3, 1),  # more input than output channels: the swapped formulation
    (2, 9, 11, 8, 24, 3, 1),  # more output channels
    (1, 7, 7, 5, 5, 3, 0),  # no padding
    (3, 6, 10, 16, 4, 1, 0),  # 1x1
    (2, 8, 8, 4, 6, 5, 2),  # 5x5
    (2, 8, 8, 1, 6, 3, 1),  # one input channel (the head)
    (2, 12, 12, 6, 1, 3, 1),  # one output channel (the tail)
  ],
)
def test_conv_weight_gradient_formulations_equal_autodiff(shape):
  b, h, w, cin, cout, k, p = shape
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(b, h, w, cin)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(k, k, cin, cout)), jnp.float32)
  ho, wo = h + 2 * p - k + 1, w + 2 * p - k + 1
  dy = jnp.asarray(rng.normal(size=(b, ho, wo, cout)), jnp.float32)
  reference = conv.weight_grad_autodiff(x, dy, kernel.shape, (p, p))
  fast = conv.weight_grad_cpu(x, dy, kernel.shape, (p, p))
  np.testing.assert_allclose(fast, reference, rtol=1e-4, atol=1e-4 * float(jnp.abs(reference).max()))
  # through the custom VJP: value, input gradient and weight gradient as plain autodiff gives them
  y, dx, dw = _plain_grads(x, kernel, (p, p), dy)
  y2, vjp = jax.vjp(lambda a, kk: conv.conv2d(a, kk, (p, p)), x, kernel)
  dx2, dw2 = vjp(dy)
  np.testing.assert_array_equal(y2, y)
  np.testing.assert_allclose(dx2, dx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw2, dw, rtol=1e-4, atol=1e-4 * float(jnp.abs(dw).max()))


def test_conv_gradient_under_jit_and_bfloat16():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 12)), jnp.bfloat16)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 12, 4)), jnp.bfloat16)

  def loss(fn, a, k):
    return jnp.sum(fn(a, k, (1, 1)).astype(jnp.float32) ** 2)

  got = jax.jit(jax.grad(lambda a, k: loss(conv.conv2d, a, k), argnums=(0, 1)))(x, kernel)
  want = jax.jit(jax.grad(lambda a, k: loss(conv.plain_conv, a, k), argnums=(0, 1)))(x, kernel)
  for g, w in zip(got, want):
    assert g.dtype == w.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.float32(g), np.float32(w), rtol=0.05, atol=0.05 * float(jnp.abs(w).max()))


def test_compile_options_leave_a_train_step_unchanged(monkeypatch):
  """The CPU options change kernels, not sums: one Adam step of a small CASR agrees to float rounding."""
  model = casr_lib.CASR(
    scale=2,
    growth_rate0=16,
    depth=2,
    growth_rate=8,
    rdb_depth=2,
    embed_dim=12,
    patch_size=2,
    num_heads=2,
    window_size=2,
  )
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.uniform(size=(2, 8, 8, 1)), jnp.float32)
  y = jnp.asarray(rng.uniform(size=(2, 16, 16, 1)), jnp.float32)
  params = model.init(jax.random.PRNGKey(0), x)['params']
  tx = optax.adam(1e-3)

  def step(p):
    loss, g = jax.value_and_grad(lambda q: jnp.mean(jnp.abs(model.apply({'params': q}, x) - y)))(p)
    updates, _ = tx.update(g, tx.init(p), p)
    return loss, g, optax.apply_updates(p, updates)

  assert compile_options.compiler_options('cpu') == compile_options.CPU_OPTIONS
  assert compile_options.compiler_options('gpu') is None
  fast = compile_options.jit(step)(params)
  plain = jax.jit(step)(params)
  for a, b in zip(jax.tree.leaves(fast[:2]), jax.tree.leaves(plain[:2])):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
  monkeypatch.setenv('MRISR_JAX_XLA_CPU_OPTIONS', 'off')
  assert compile_options.compiler_options('cpu') is None
  monkeypatch.delenv('MRISR_JAX_XLA_CPU_OPTIONS')
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=')
  assert compile_options.compiler_options('cpu') is None  # the user's own XLA_FLAGS win


def _naive_window_attention(x, params, heads, w, shift):
  """Swin attention written as a loop over windows on the rolled grid (numpy, float64), mask by regions."""
  b, h, wd, c = x.shape
  hd = c // heads
  rolled = np.roll(x, (-shift, -shift), axis=(1, 2))
  regions = np.zeros((h, wd), int)
  if shift:
    bands = [slice(0, -w), slice(-w, -shift), slice(-shift, None)]
    for i, hs in enumerate(bands):
      for j, ws in enumerate(bands):
        regions[hs, ws] = 3 * i + j
  table = np.asarray(params['relative_position_bias_table'], np.float64)
  index = swin.relative_position_index(w)
  bias = table[index.reshape(-1)].reshape(w * w, w * w, heads).transpose(2, 0, 1)
  wq, bq = (np.asarray(params['qkv'][n], np.float64) for n in ('kernel', 'bias'))
  wp, bp = (np.asarray(params['proj'][n], np.float64) for n in ('kernel', 'bias'))
  out = np.zeros_like(rolled)
  for n in range(b):
    for i in range(0, h, w):
      for j in range(0, wd, w):
        tokens = rolled[n, i : i + w, j : j + w].reshape(w * w, c)
        reg = regions[i : i + w, j : j + w].reshape(-1)
        mask = np.where(reg[:, None] != reg[None, :], -100.0, 0.0)
        qkv = (tokens @ wq + bq).reshape(w * w, 3, heads, hd)
        heads_out = []
        for m in range(heads):
          q, k, v = qkv[:, 0, m] * hd**-0.5, qkv[:, 1, m], qkv[:, 2, m]
          logits = q @ k.T + bias[m] + mask
          p = np.exp(logits - logits.max(-1, keepdims=True))
          heads_out.append((p / p.sum(-1, keepdims=True)) @ v)
        out[n, i : i + w, j : j + w] = (np.concatenate(heads_out, -1) @ wp + bp).reshape(w, w, c)
  return np.roll(out, (shift, shift), axis=(1, 2))


@pytest.mark.parametrize('shift', [0, 2])
def test_windowed_attention_equals_a_loop_over_windows(shift):
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 8, 12, 12)).astype(np.float32)
  heads, w = 3, 4
  block = swin.SwinBlock(12, heads, w, shift)
  params = block.init(jax.random.PRNGKey(0), jnp.asarray(x), train=False)['params']
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.PRNGKey(4), a.shape), params)
  attn = params['attn']

  def attention_only(t):
    # the block's attention branch: partition (after the shift), attend, reverse, roll back
    b, h, wd, c = t.shape
    mask = jnp.asarray(swin.shifted_window_mask(h, wd, w, shift)) if shift else None
    rolled = jnp.roll(t, (-shift, -shift), axis=(1, 2))
    module = swin.WindowAttention(c, heads, w)
    out = module.apply({'params': attn}, swin.window_partition(rolled, w), mask, False)
    return jnp.roll(swin.window_reverse(out, w, h, wd, False), (shift, shift), axis=(1, 2))

  ours = np.asarray(attention_only(jnp.asarray(x)))
  theirs = _naive_window_attention(x.astype(np.float64), attn, heads, w, shift)
  np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=1e-4)


def test_remat_gives_identical_gradients():
  small = dict(
    scale=2,
    growth_rate0=16,
    depth=2,
    growth_rate=8,
    rdb_depth=2,
    embed_dim=12,
    patch_size=2,
    num_heads=2,
    window_size=2,
  )
  small.update(scan_unroll=2)  # unrolled, as on CPU
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.uniform(size=(2, 8, 8, 1)), jnp.float32)
  y = jnp.asarray(rng.uniform(size=(2, 16, 16, 1)), jnp.float32)
  plain, recomputed = casr_lib.CASR(**small), casr_lib.CASR(**small, remat=True)
  params = plain.init(jax.random.PRNGKey(0), x)['params']

  def grads(model):
    return jax.jit(jax.grad(lambda p: jnp.mean(jnp.abs(model.apply({'params': p}, x) - y))))(params)

  for a, b in zip(jax.tree.leaves(grads(plain)), jax.tree.leaves(grads(recomputed))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
