"""RDN (Zhang et al. 2018) as the CASRGAN seed trains it: L1 pre-training, or with `gan` the CASRGAN
GAN stage after it (the seed's `--gan` switch).

Arguments (comma-separated): scale=2|3|4 (default 4; `x2` works too), gan, quick.
  python -m mrisr_jax.main --config configs/rdn.py:scale=2 --workdir DIR
"""

from mrisr_jax import config_base

_recipes = config_base.load_sibling(__file__, '_recipes.py')

# The reference defaults: G0=64, G=32, C=6, D=20 (5,577,057 parameters at x4).
MODEL = dict(name='rdn', growth_rate0=64, growth_rate=32, num_layers=6, num_blocks=20, kernel_size=3)
QUICK = dict(growth_rate0=32, growth_rate=16, num_layers=4, num_blocks=4)


def get_config(arg: str | None = None):
  return build(**config_base.parse_args(arg, 'configs/rdn.py', _recipes.BASELINE_ARGS))


def build(scale: int = 4, gan: bool = False, quick: bool = False):
  config = _recipes.baseline_config(MODEL, QUICK, scale=scale, gan=gan, quick=quick)
  return config
