"""SRCNN (Dong et al. 2014; 9-1-5, 64/32 filters) as the CASRGAN seed trains it, on the
bicubic-upsampled LR (the pipeline provides it: the model declares `upsampled_input`), with the
reference's 0.1x learning rate on the last layer. L1 pre-training, or with `gan` the CASRGAN GAN stage
after it (the seed's `--gan` switch).

Arguments (comma-separated): scale=2|3|4 (default 4; `x2` works too), gan, quick.
"""

from mrisr_jax import config_base
from mrisr_jax.models.srcnn import LR_MULTIPLIERS

_recipes = config_base.load_sibling(__file__, '_recipes.py')

MODEL = dict(name='srcnn')  # 8,129 parameters, as the reference
QUICK = dict()  # SRCNN is small already


def get_config(arg: str | None = None):
  return build(**config_base.parse_args(arg, 'configs/srcnn.py', _recipes.BASELINE_ARGS))


def build(scale: int = 4, gan: bool = False, quick: bool = False):
  config = _recipes.baseline_config(MODEL, QUICK, scale=scale, gan=gan, quick=quick, upsampled_input=True)
  config.lr_multipliers.update(LR_MULTIPLIERS)  # {'reconstruction': 0.1}
  return config
