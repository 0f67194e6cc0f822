"""FA-GAN x4: an alias of configs/fagan.py:scale=4 (the name the README and users know).

Arguments: quick.
"""

from mrisr_jax import config_base

fagan = config_base.load_sibling(__file__, 'fagan.py')


def get_config(arg: str | None = None):
  return fagan.fagan_config(scale=4, **config_base.parse_args(arg, 'configs/fagan_x4.py', dict(quick=False)))
