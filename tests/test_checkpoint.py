"""Checkpoint retention: the latest N survive, and so does the best by validation PSNR."""

import jax.numpy as jnp
import numpy as np
import pytest

from mrisr_jax.checkpoint import BEST_METRIC, Checkpointer

pytestmark = pytest.mark.unit


def test_keeps_latest_n_and_the_best_by_psnr(tmp_path):
  ckpt = Checkpointer(tmp_path, keep=2, async_save=False)
  psnr = {1: 20.0, 2: 31.0, 3: 25.0, 4: None, 5: 26.0}
  for step, value in psnr.items():
    state = {'w': jnp.full((3,), float(step))}
    ckpt.save(
      step, state, {'stage': 'pretrain', 'step': step}, metrics={BEST_METRIC: value} if value is not None else None
    )
  ckpt.wait()
  kept = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
  assert kept == [2, 4, 5]
  assert ckpt.latest_step() == 5
  restored = ckpt.restore_unsharded(2)
  np.testing.assert_array_equal(restored['w'], np.full((3,), 2.0))
  assert ckpt.restore_meta(2) == {'stage': 'pretrain', 'step': 2}
  ckpt.close()
