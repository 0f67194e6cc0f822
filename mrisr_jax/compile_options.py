"""XLA compile options for the project's jitted functions: faster CPU kernels, the same sums.

On CPU, XLA's YNNPACK library fusions for dots (`xla_cpu_experimental_ynn_fusion_type`) run the
convolution weight gradients 2-3x faster than XLA's default kernels (docs/benchmarks.md, "Where the CPU time
went"). The option only exists for the CPU compiler, so GPU/TPU compiles get no options at all.
`MRISR_JAX_XLA_CPU_OPTIONS=off` turns it off; an `XLA_FLAGS` that sets the flag itself wins.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax

YNN_FUSION_FLAG = 'xla_cpu_experimental_ynn_fusion_type'
CPU_OPTIONS = {YNN_FUSION_FLAG: 'LIBRARY_FUSION_TYPE_DOT'}
OFF = ('0', 'off', 'false', 'no')


def compiler_options(backend: str | None = None) -> dict[str, str] | None:
  """The options for a compile on `backend` (default: JAX's default backend); None when there are none."""
  if os.environ.get('MRISR_JAX_XLA_CPU_OPTIONS', '').strip().lower() in OFF:
    return None
  if YNN_FUSION_FLAG in os.environ.get('XLA_FLAGS', ''):
    return None
  if (backend or jax.default_backend()) != 'cpu':
    return None
  return dict(CPU_OPTIONS)


def jit(fn: Callable, **kwargs: Any) -> Callable:
  """`jax.jit(fn, **kwargs)` with this backend's `compiler_options`."""
  return jax.jit(fn, compiler_options=compiler_options(), **kwargs)
