"""The cardiac perceptual-loss SR network x4: an alias of configs/perceptual.py (the name the README
and users know).

Arguments (comma-separated): model1 | model2 | model3 | model4 (or model=N), quick.
"""

from mrisr_jax import config_base

perceptual = config_base.load_sibling(__file__, 'perceptual.py')


def get_config(arg: str | None = None):
  return perceptual.build(**config_base.parse_args(arg, 'configs/perceptual_x4.py', perceptual.ARGS))
