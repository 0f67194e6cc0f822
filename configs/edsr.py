"""EDSR (Lim et al. 2017) as the CASRGAN seed trains it: L1 pre-training, or with `gan` the CASRGAN
GAN stage after it (the seed's `--gan` switch: CASRGAN discriminator, VGG19 perceptual + batch-summed
-log D + L1).

Arguments (comma-separated): scale=2|3|4 (default 4; `x2` works too), gan, quick, baseline (16 blocks
of 64 features, the reference's `edsr_x3_baseline`; res_scale stays the reference default 0.1).
  python -m mrisr_jax.main --config configs/edsr.py:scale=3,gan --workdir DIR
"""

from mrisr_jax import config_base

_recipes = config_base.load_sibling(__file__, '_recipes.py')

# The reference defaults (43,078,657 parameters at x4).
MODEL = dict(name='edsr', n_resblocks=32, n_feats=256, res_scale=0.1, kernel_size=3)
QUICK = dict(n_resblocks=4, n_feats=32)


def get_config(arg: str | None = None):
  return build(**config_base.parse_args(arg, 'configs/edsr.py', dict(_recipes.BASELINE_ARGS, baseline=False)))


def build(scale: int = 4, gan: bool = False, quick: bool = False, baseline: bool = False):
  config = _recipes.baseline_config(MODEL, QUICK, scale=scale, gan=gan, quick=quick)
  if baseline and not quick:
    config.model.update(dict(n_resblocks=16, n_feats=64))
    config.name = config.name.replace('edsr', 'edsr_baseline', 1)
  return config
