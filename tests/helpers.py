"""Shared test utilities: tiny configs and running the entry point as a user would."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


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


def run_main(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
  full_env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3', **(env or {})}
  return subprocess.run([sys.executable, '-m', 'mrisr_jax.main', *args], cwd=REPO, env=full_env,
                        capture_output=True, text=True, timeout=timeout)


def error_line(proc: subprocess.CompletedProcess) -> str:
  lines = [line for line in proc.stderr.splitlines() if line.startswith('mrisr_jax: error:')]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  return lines[0]
