"""SR-DCGAN x4: an alias of configs/srdcgan.py (the name the README and users know).

Arguments: quick.
"""

from mrisr_jax import config_base

srdcgan = config_base.load_sibling(__file__, 'srdcgan.py')


def get_config(arg: str | None = None):
  return srdcgan.build(scale=4, **config_base.parse_args(arg, 'configs/srdcgan_x4.py', dict(quick=False)))
