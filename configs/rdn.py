"""RDN (Zhang et al. 2018) as the CASRGAN seed trains it: L1 pre-training, or with `gan` the CASRGAN
GAN stage after it (the seed's `--gan` switch).

Arguments (comma-separated): x2 | x3 | x4 (default x4), gan, quick.
  python -m mrisr_jax.main --config configs/rdn.py:x2 --workdir DIR
"""
from mrisr_jax import config_base

# The reference defaults: G0=64, G=32, C=6, D=20 (5,577,057 parameters at x4).
MODEL = dict(name='rdn', growth_rate0=64, growth_rate=32, num_layers=6, num_blocks=20, kernel_size=3)
QUICK = dict(growth_rate0=32, growth_rate=16, num_layers=4, num_blocks=4)


def get_config(arg: str | None = None):
  config, _ = config_base.baseline_config('configs/rdn.py', arg, MODEL, QUICK)
  return config
