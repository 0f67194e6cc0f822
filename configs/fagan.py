"""FA-GAN (Jiang et al. 2021, seeds/001): LFFB trunk, GFFB attention, x2 upsampling stages,
spectrally normalised discriminator; MSE pre-training, then VGG + MSE + adversarial training.
The paper's open numbers and our choices are commented in `fagan_config` below.

Arguments (comma-separated): scale=2|4|8 (default 4; `x2` works too), quick (a small model on the
embedded sample, CPU minutes).
  python -m mrisr_jax.main --config configs/fagan.py:scale=8 --workdir DIR
"""

import ml_collections

from mrisr_jax import config_base
from mrisr_jax.config_base import base_config, stage

_recipes = config_base.load_sibling(__file__, '_recipes.py')

ARGS = dict(scale=(4, (2, 4, 8)), quick=False)


def get_config(arg: str | None = None):
  return fagan_config(**config_base.parse_args(arg, 'configs/fagan.py', ARGS))


def fagan_config(scale: int = 4, quick: bool = False) -> ml_collections.ConfigDict:
  """FA-GAN (Jiang et al. 2021). The paper fixes: LFFB (3 paths, 1x1 fusion), GFFB (channel attention
  with reduction r, self-attention with gamma = 0 at init, weighted connection alpha = beta = 0.5),
  x2 upsampling stages, a spectrally normalised D, loss = VGG perceptual + pixel + adversarial, Adam
  lr 1e-4 beta1 0.9, bicubic LR. Every other number below is our choice, marked 'choice'."""
  c = base_config(
    f'fagan_x{scale}',
    dict(
      name='fagan',
      n_feats=64,
      n_lffb=8,  # choice: the paper gives no count
      kernel_sizes=(3, 5, 7),  # choice: 'different kernel sizes'
      reduction=16,  # choice: r is not given (RCAN's 16)
      attention_at='lr',  # choice: GFFB on LR features; 'hr' = the paper's order, (H*W)^2 memory at HR
      connection='weighted',
      alpha=0.5,
      beta=0.5,
    ),
    scale,
  )
  c.discriminator = ml_collections.ConfigDict(dict(name='fagan_sn_d', base_features=64, power_iterations=1))
  c.data.hr_patch_size = 96
  c.data.degradation = ('bicubic',)  # 'All low-resolution images ... are obtained by bicubic interpolation'
  # (assignment, not update: ConfigDict.update would merge the layer dicts)
  c.loss.perceptual_layers = {'relu5_4': 1.0}  # choice: SRGAN's VGG54 (the paper: j-th conv before the i-th pool)
  c.loss.gan = 'nonsaturating'  # 'the average discriminator probability': mean -log D(G(x)), BCE for D
  c.stages = ml_collections.ConfigDict(
    dict(
      # choice: MSE pre-training of the generator first, as SRGAN (which FA-GAN builds on) does
      pretrain=stage(kind='generator', epochs=20, pixel_loss='mse', schedule='constant'),
      # choice of weights: SRGAN's (VGG MSE scaled by 1/12.75^2 = 6.2e-3, adversarial 1e-3), pixel MSE 1
      gan=stage(
        kind='gan',
        epochs=80,
        pixel_loss='mse',
        pixel_weight=1.0,
        perceptual_weight=6.2e-3,
        adversarial_weight=1e-3,
        schedule='constant',
      ),
    )
  )
  c.stage_order = ('pretrain', 'gan')
  if quick:
    c.name += '_quick'
    c.model.update(dict(n_feats=16, n_lffb=2, reduction=4))
    c.discriminator.base_features = 16
    c.batch_size = 8
    c.data.hr_patch_size = {2: 32, 4: 48, 8: 64}[scale]  # LR crops of 16, 12, 8
    c.data.val_max_slices = 4
    c.loss.perceptual_layers = {'relu2_2': 1.0}  # shallow features: CPU minutes
    c.loss.allow_random_vgg = True
    c.stages.pretrain.update(dict(epochs=60, lr_g=1e-3, schedule='step', schedule_epochs=40))
    c.stages.gan.update(dict(epochs=5))
    _recipes.quick_logging(c, every=100)
  return c
