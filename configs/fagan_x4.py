"""FA-GAN x4 (Jiang et al. 2021, seeds/001): LFFB trunk, GFFB attention, x2 upsampling stages,
spectrally normalised discriminator; MSE pre-training, then VGG + MSE + adversarial training.
The paper's open numbers and our choices are commented in mrisr_jax/config_base.py:fagan_config.

Arguments: quick (a small model on the embedded sample, CPU minutes).
  python -m mrisr_jax.main --config configs/fagan_x4.py --workdir DIR
"""
from mrisr_jax import config_base


def get_config(arg: str | None = None):
  return config_base.fagan_config(4, 'configs/fagan_x4.py', arg)
