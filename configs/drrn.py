"""DRRN (Tai et al. 2017) as the CASRGAN seed trains it, on the bicubic-upsampled LR (the pipeline
provides it: the model declares `upsampled_input`): L1 pre-training, or with `gan` the CASRGAN GAN
stage after it (the seed's `--gan` switch).

Arguments (comma-separated): x2 | x3 | x4 (default x4), gan, quick.
"""
from mrisr_jax import config_base

# The reference defaults: B=1 recursive block of U=25 shared units, 128 features (297,601 parameters).
MODEL = dict(name='drrn', num_recursive_blocks=1, num_units=25, features=128, kernel_size=3)
QUICK = dict(num_units=4, features=32)


def get_config(arg: str | None = None):
  config, _ = config_base.baseline_config('configs/drrn.py', arg, MODEL, QUICK, upsampled_input=True)
  return config
