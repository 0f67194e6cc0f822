"""SRCNN (Dong et al. 2014; 9-1-5, 64/32 filters) as the CASRGAN seed trains it, on the
bicubic-upsampled LR (the pipeline provides it: the model declares `upsampled_input`), with the
reference's 0.1x learning rate on the last layer. L1 pre-training, or with `gan` the CASRGAN GAN stage
after it (the seed's `--gan` switch).

Arguments (comma-separated): x2 | x3 | x4 (default x4), gan, quick.
"""
from mrisr_jax import config_base
from mrisr_jax.models.srcnn import LR_MULTIPLIERS

MODEL = dict(name='srcnn')  # 8,129 parameters, as the reference
QUICK = dict()  # SRCNN is small already


def get_config(arg: str | None = None):
  config, _ = config_base.baseline_config('configs/srcnn.py', arg, MODEL, QUICK, upsampled_input=True)
  config.lr_multipliers.update(LR_MULTIPLIERS)  # {'reconstruction': 0.1}
  return config
