"""Recipe pieces shared by several config files (the CASRGAN seed's GAN stage, its baselines, quick runs).

Config files load this by path (`config_base.load_sibling(__file__, '_recipes.py')`): they run both
imported and loaded by path, where configs/ is no package.
"""

import ml_collections

from mrisr_jax.config_base import base_config, stage

CASRGAN_GAN_LOSS = dict(pixel_loss='l1', pixel_weight=1e-2, perceptual_weight=1.0, adversarial_weight=5e-3)
# `FILE:ARGS` of the CASRGAN seed's baselines (SRCNN, DRRN, EDSR, RDN)
BASELINE_ARGS = dict(scale=(4, (2, 3, 4)), gan=False, quick=False)


def quick_logging(c: ml_collections.ConfigDict, every: int) -> None:
  c.log_every_steps = 50
  c.image_every_steps = every
  c.eval_every_steps = every
  c.checkpoint_every_steps = every


def casrgan_recipe_for(c: ml_collections.ConfigDict, gan: bool) -> None:
  """The CASRGAN seed's training of a baseline generator (SRCNN, DRRN, EDSR, RDN): L1 pre-training
  alone, or with the seed's `--gan` switch followed by the CASRGAN GAN stage (CASRGAN discriminator,
  VGG19 perceptual + batch-summed -log D + L1)."""
  c.stages = ml_collections.ConfigDict(
    dict(
      pretrain=stage(kind='generator', epochs=60),
      gan=stage(kind='gan', epochs=60, **CASRGAN_GAN_LOSS),
    )
  )
  c.stage_order = ('pretrain', 'gan') if gan else ('pretrain',)
  if gan:
    c.name += '_gan'


def quick_baseline(
  c: ml_collections.ConfigDict, model: dict, pretrain_epochs: int, gan_epochs: int, lr: float = 1e-3
) -> None:
  """The quick variant of a baseline recipe: a small model, a few hundred steps, random VGG."""
  c.name += '_quick'
  c.model.update(model)
  c.batch_size = 8
  c.data.hr_patch_size = 48 if c.model.scale != 3 else 36
  c.data.val_max_slices = 4
  c.loss.allow_random_vgg = True
  c.stages.pretrain.update(dict(epochs=pretrain_epochs, lr_g=lr, schedule_epochs=max(1, pretrain_epochs // 2)))
  c.stages.gan.update(
    dict(
      epochs=gan_epochs,
      lr_g=1e-4,
      lr_d=1e-4,
      schedule_epochs=max(1, gan_epochs),
      pixel_weight=1.0,
      adversarial_weight=1e-3,
    )
  )
  quick_logging(c, every=100)


def baseline_config(
  model: dict,
  quick_model: dict,
  *,
  scale: int = 4,
  gan: bool = False,
  quick: bool = False,
  upsampled_input: bool = False,
) -> ml_collections.ConfigDict:
  """A baseline generator of the CASRGAN seed (SRCNN, DRRN, EDSR, RDN): `FILE[:scale=2|3|4][,gan][,quick]`."""
  c = base_config(f'{model["name"]}_x{scale}', model, scale)
  if upsampled_input:
    # The model sees the bicubic-upsampled LR; any crop works, keep the seed's HR crop sizes.
    c.data.hr_patch_size = 96 if scale != 3 else 72
  casrgan_recipe_for(c, gan=gan)
  if quick:
    quick_baseline(c, quick_model, pretrain_epochs=60, gan_epochs=5)
  return c
