"""The train state: everything that changes during a run, as one pytree."""

from __future__ import annotations

from typing import Any

import flax
import jax


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # global optimizer step over all stages
  g_params: Any
  g_batch_stats: Any  # generator BatchNorm running statistics ({} for generators without)
  d_params: Any
  d_batch_stats: Any  # discriminator state: BatchNorm statistics or spectral-norm vectors
  g_opt_state: Any
  d_opt_state: Any
  rng: jax.Array  # base key (uint32[2]); step keys are fold_in(rng, step) so resume is exact
  # exponential moving average of g_params when config.ema_decay > 0, else {} (BasicSR's net_g_ema)
  g_ema_params: Any = flax.struct.field(default_factory=dict)
