"""DRRN (Tai et al. 2017) as the CASRGAN seed trains it, on the bicubic-upsampled LR (the pipeline
provides it: the model declares `upsampled_input`): L1 pre-training, or with `gan` the CASRGAN GAN
stage after it (the seed's `--gan` switch).

Arguments (comma-separated): scale=2|3|4 (default 4; `x2` works too), gan, quick.
"""

from mrisr_jax import config_base

_recipes = config_base.load_sibling(__file__, '_recipes.py')

# The reference defaults: B=1 recursive block of U=25 shared units, 128 features (297,601 parameters).
MODEL = dict(name='drrn', num_recursive_blocks=1, num_units=25, features=128, kernel_size=3)
QUICK = dict(num_units=4, features=32)


def get_config(arg: str | None = None):
  return build(**config_base.parse_args(arg, 'configs/drrn.py', _recipes.BASELINE_ARGS))


def build(scale: int = 4, gan: bool = False, quick: bool = False):
  config = _recipes.baseline_config(MODEL, QUICK, scale=scale, gan=gan, quick=quick, upsampled_input=True)
  return config
