"""EDSR (Lim et al. 2017) as the CASRGAN seed trains it: L1 pre-training, or with `gan` the CASRGAN
GAN stage after it (the seed's `--gan` switch: CASRGAN discriminator, VGG19 perceptual + batch-summed
-log D + L1).

Arguments (comma-separated): x2 | x3 | x4 (default x4), gan, quick, baseline (16 blocks of 64
features, the reference's `edsr_x3_baseline`; res_scale stays the reference default 0.1).
  python -m mrisr_jax.main --config configs/edsr.py:x3,gan --workdir DIR
"""
from mrisr_jax import config_base

# The reference defaults (43,078,657 parameters at x4).
MODEL = dict(name='edsr', n_resblocks=32, n_feats=256, res_scale=0.1, kernel_size=3)
QUICK = dict(n_resblocks=4, n_feats=32)


def get_config(arg: str | None = None):
  config, tokens = config_base.baseline_config('configs/edsr.py', arg, MODEL, QUICK, extra_tokens=('baseline',))
  if 'baseline' in tokens and 'quick' not in tokens:
    config.model.update(dict(n_resblocks=16, n_feats=64))
    config.name = config.name.replace('edsr', 'edsr_baseline', 1)
  return config
