"""CASRGAN x4: the seed's recipe (L1 pre-training, DeepNorm-off fine-tuning, GAN training).

Use: python -m mrisr_jax.main --config configs/casrgan_x4.py --workdir DIR
     python -m mrisr_jax.main --config configs/casrgan_x4.py:quick --workdir DIR   (CPU, minutes)
Override any field: --config.data.root=/data/fastmri_knee --config.batch_size=64
"""
from mrisr_jax import config_base


def get_config(arg: str | None = None):
  tokens = config_base.parse_arg(arg, 'configs/casrgan_x4.py', ('quick',))
  config = config_base.casrgan_config(scale=4)
  if 'quick' in tokens:
    config_base.make_quick(config, pretrain_epochs=100)  # the README's main job: minutes on 2 CPU cores
  return config
