"""Stride-1 2-D convolution (NHWC, HWIO) whose weight gradient XLA:CPU computes fast.

XLA differentiates a convolution into a weight-gradient convolution whose window is the whole
image and whose input features are the batch (a handful). XLA:CPU runs that shape 3-5x slower than
PyTorch's oneDNN kernel, and it dominates a CPU train step. The same sum,
dW[i, j, ci, co] = sum_{b, h, w} x_pad[b, h + i, w + j, ci] * dy[b, h, w, co],
written as a convolution with the larger channel count as its output features runs near oneDNN's
speed (docs/benchmarks.md, "Where the CPU time went"). Other backends keep XLA's own gradient:
`lax.platform_dependent` picks the formulation when the step is lowered, so GPU/TPU code is unchanged.
The forward and input-gradient convolutions are XLA's own on every backend.
"""

from __future__ import annotations

import functools

import jax
from jax import lax

DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')


def plain_conv(x: jax.Array, kernel: jax.Array, padding: tuple[int, int]) -> jax.Array:
  """The straightforward stride-1 convolution with symmetric zero padding (ph, pw)."""
  ph, pw = padding
  return lax.conv_general_dilated(x, kernel, (1, 1), ((ph, ph), (pw, pw)), dimension_numbers=DIMENSIONS)


def weight_grad_cpu(x: jax.Array, dy: jax.Array, kernel_shape: tuple[int, ...], padding: tuple[int, int]) -> jax.Array:
  """dW of `plain_conv` as one convolution over the image, output features the larger channel count.

  The zero padding is the convolution's own (no padded copy of x), and only the tensor with the
  smaller channel count needs a layout change.
  """
  kh, kw, cin, cout = kernel_shape
  ph, pw = padding
  if cout <= cin:
    # Correlate dy with the image as kernel: output (cout, kh, kw, cin) at offsets kh-1-i, kw-1-j.
    pad = ((kh - 1 - ph, kh - 1 - ph), (kw - 1 - pw, kw - 1 - pw))
    out = lax.conv_general_dilated(dy, x, (1, 1), pad, dimension_numbers=('CHWN', 'IHWO', 'NHWC'))
    return out[:, ::-1, ::-1, :].transpose(1, 2, 3, 0)
  # Correlate the image with dy as kernel: output (cin, kh, kw, cout).
  out = lax.conv_general_dilated(x, dy, (1, 1), ((ph, ph), (pw, pw)), dimension_numbers=('CHWN', 'IHWO', 'NHWC'))
  return out.transpose(1, 2, 0, 3)


def weight_grad_autodiff(x: jax.Array, dy: jax.Array, kernel_shape: tuple[int, ...], padding) -> jax.Array:
  """XLA's own weight gradient (the transpose of `plain_conv` in its kernel)."""
  kernel = jax.numpy.zeros(kernel_shape, dy.dtype)
  return jax.vjp(lambda k: plain_conv(x, k, padding), kernel)[1](dy)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x: jax.Array, kernel: jax.Array, padding: tuple[int, int]) -> jax.Array:
  """`plain_conv` with the backend's fastest weight gradient; values and gradients are the same sums."""
  return plain_conv(x, kernel, padding)


def _conv2d_fwd(x, kernel, padding):
  return plain_conv(x, kernel, padding), (x, kernel)


def _conv2d_bwd(padding, residuals, dy):
  x, kernel = residuals
  dx = jax.vjp(lambda v: plain_conv(v, kernel, padding), x)[1](dy)[0]
  shape = kernel.shape
  dw = lax.platform_dependent(
    x,
    dy,
    cpu=lambda a, b: weight_grad_cpu(a, b, shape, padding),
    default=lambda a, b: weight_grad_autodiff(a, b, shape, padding),
  )
  return dx, dw.astype(kernel.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)
