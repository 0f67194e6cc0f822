"""Shared test utilities: tiny configs and running the entry point as a user would."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
# The reference's state_dict layouts (keys, shapes, dtypes, counts), vendored: tests/data/README.md.
REFERENCE_JSON = REPO / 'tests' / 'data' / 'reference_state_dicts.json'


def tiny_config():
  """The quick recipe shrunk further for tests (a 2-AFEB CASR, 3-step stages)."""
  sys.path.insert(0, str(REPO))
  from configs.casrgan_x4 import get_config

  c = get_config('quick')
  c.model.update(dict(growth_rate0=16, depth=2, growth_rate=8, rdb_depth=2, embed_dim=12, num_heads=2))
  c.batch_size = 4
  c.data.hr_patch_size = 48
  c.data.val_max_slices = 2
  c.data.val_max_volumes = 1
  c.log_every_steps = 2
  c.image_every_steps = 4
  c.eval_every_steps = 4
  c.checkpoint_every_steps = 2
  return c


def run_main(
  *args: str,
  env: dict | None = None,
  timeout: int = 600,
  module: str = 'mrisr_jax.main',
) -> subprocess.CompletedProcess:
  """`python -m module args` from the repository root (a .py path runs as a script).

  `timeout` guards against a hang, it is not a speed test: the runs that use the default (one-line
  errors, a few training steps) take well under a minute even on 2 loaded cores; pass more for more."""
  full_env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3', **(env or {})}
  command = [module] if module.endswith('.py') else ['-m', module]
  return subprocess.run(
    [sys.executable, *command, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
  )


def error_line(proc: subprocess.CompletedProcess) -> str:
  lines = [line for line in proc.stderr.splitlines() if line.startswith('mrisr_jax: error:')]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  return lines[0]


def random_variables(abstract, seed=0):
  """Kernels and biases U(+-1/sqrt(fan_in)); SN `u` normal; every other float (BN affine and running
  stats, PReLU slopes, the SAGAN gamma, SN sigma) U(0.5, 1.5), away from the trivial 0 and 1."""
  rng = np.random.default_rng(seed)

  def fill(node):
    if 'kernel' in node:
      bound = 1.0 / np.sqrt(np.prod(node['kernel'].shape[:-1]))
      return {k: rng.uniform(-bound, bound, v.shape).astype(np.float32) for k, v in node.items()}
    out = {}
    for k, v in node.items():
      if isinstance(v, dict):
        out[k] = fill(v)
      elif np.issubdtype(v.dtype, np.integer):
        out[k] = np.asarray(rng.integers(0, 100), v.dtype)
      elif k.endswith('/u'):
        out[k] = rng.normal(size=v.shape).astype(np.float32)
      else:
        out[k] = rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
    return out

  return fill(abstract)
