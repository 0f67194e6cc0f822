"""The train state: everything that changes during a run, as one pytree."""
from __future__ import annotations

from typing import Any

import flax
import jax


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # global optimizer step over all stages
  g_params: Any
  d_params: Any
  d_batch_stats: Any
  g_opt_state: Any
  d_opt_state: Any
  rng: jax.Array  # base key (uint32[2]); step keys are fold_in(rng, step) so resume is exact
