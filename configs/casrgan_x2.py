"""CASRGAN x2: an alias of configs/casrgan.py:scale=2 (the name the README and users know).

Arguments: quick.
"""

from mrisr_jax import config_base

casrgan = config_base.load_sibling(__file__, 'casrgan.py')


def get_config(arg: str | None = None):
  return casrgan.build(scale=2, **config_base.parse_args(arg, 'configs/casrgan_x2.py', dict(quick=False)))
