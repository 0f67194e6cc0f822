"""The default configuration (configs are data: every knob of a run lives here).

Config files in configs/ build on `casrgan_config` and override fields. Stages run in
`stage_order`; each stage is configured in epochs and counted in steps
(steps = epochs * steps_per_epoch, one epoch = one random crop of every training slice).
"""
from __future__ import annotations

import ml_collections


def _stage(**kw) -> ml_collections.ConfigDict:
  stage = dict(
      kind='generator',  # 'generator' (pixel loss only) or 'gan'
      epochs=60,
      pixel_loss='l1',  # generator stages: l1 | mse
      lr_g=1e-4,
      lr_d=1e-4,
      schedule='step',  # step (staircase, x0.5 every `schedule_epochs`) | linear (reference LinearLR 1 -> 0.5) | constant
      schedule_epochs=30,
      schedule_factor=0.5,
      # DeepNorm residual weight for this stage; -1 = the model's default ((2N)^(1/4)).
      deepnorm_alpha=-1.0,
      dropout=0.0,  # dropout in the transformer blocks
  )
  stage.update(kw)
  return ml_collections.ConfigDict(stage)


def casrgan_config(scale: int = 4) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = f'casrgan_x{scale}'
  c.seed = 0

  c.model = ml_collections.ConfigDict(dict(
      name='casr', scale=scale, in_channels=1, out_channels=1,
      growth_rate0=128, depth=20, growth_rate=32, rdb_depth=6,
      n_stb=2, embed_dim=96, patch_size=6, num_heads=6, window_size=4, mlp_ratio=4.0,
      deepnorm=True, norm_before=False,
      reference_compat=False,  # True reproduces the reference's 3 attention deviations
      remat=False,  # recompute AFEB activations in the backward pass
      # AFEBs per scan iteration. 1 keeps compile time flat in depth (GPU/TPU); XLA:CPU runs scans
      # ~20x slower than straight-line code (docs/benchmarks.md), so 0 = auto: unrolled on CPU, 1 elsewhere.
      scan_unroll=0,
      dtype='float32',  # computation dtype: float32 | bfloat16 (params stay float32)
  ))
  c.discriminator = ml_collections.ConfigDict(dict(name='casrgan_d'))

  c.data = ml_collections.ConfigDict(dict(
      root='',  # '' = the embedded sample (MNI152 T1 in fastMRI h5 form)
      train_split='train', val_split='val',
      target_key='auto',  # reconstruction_rss | reconstruction_esc | kspace | auto
      # The seed trains on 384 px HR; these crops keep the LR side (24 or 48) a multiple of patch*window.
      hr_patch_size=96 if scale != 3 else 72,
      flips=True,
      num_workers=0, prefetch_buffer=2,
      skip_bad_files=False,
      val_max_volumes=0, val_max_slices=0,
  ))
  c.batch_size = 16  # global, over all hosts and devices

  c.loss = ml_collections.ConfigDict(dict(
      vgg_arch='vgg19', vgg_last_layer=16,  # torchvision features[:17]: conv3_4 before ReLU
      vgg_weights='',  # torchvision vgg19-*.pth or converted .npz (required for the GAN stage)
      allow_random_vgg=False,  # quick runs only: random VGG features, said in the log
      perceptual_weight=1.0, adversarial_weight=5e-3, pixel_weight=1e-2,
      gan_pixel_loss='l1',
      adversarial_reduction='sum',  # the reference sums -log D(SR) over the batch
  ))

  c.stages = ml_collections.ConfigDict(dict(
      pretrain=_stage(kind='generator', epochs=60),
      finetune=_stage(kind='generator', epochs=20, deepnorm_alpha=1.0),
      gan=_stage(kind='gan', epochs=60, deepnorm_alpha=1.0, dropout=0.1),
  ))
  c.stage_order = ('pretrain', 'finetune', 'gan')

  c.mesh = ml_collections.ConfigDict(dict(data=-1))  # -1 = every device

  c.log_every_steps = 50
  c.image_every_steps = 500
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  c.stop_after_steps = 0  # > 0: save and exit at this global step (time-boxed jobs); rerun to resume
  c.keep_checkpoints = 3  # latest N, plus the best by validation PSNR
  c.eval_batch_size = 8  # slices per validation step (global)
  return c


def make_quick(c: ml_collections.ConfigDict) -> None:
  """Scale the recipe down so it runs to completion on 2 CPU cores in minutes."""
  c.name = c.name + '_quick'
  c.model.update(dict(growth_rate0=32, depth=4, growth_rate=16, rdb_depth=4, embed_dim=48,
                      patch_size=3, num_heads=3, window_size=4))
  c.batch_size = 8
  c.data.val_max_slices = 4
  c.loss.allow_random_vgg = True
  # Random VGG features carry ~1e-4 of the perceptual signal ImageNet features do, so the seed's
  # balance (content held by the perceptual term) does not hold: L1 holds the content instead.
  c.loss.update(dict(pixel_weight=1.0, adversarial_weight=1e-3))
  # A 0.3M-parameter model on 36 slices: a larger step size than the seed's 1e-4, same stages.
  c.stages.pretrain.update(dict(epochs=200, lr_g=1e-3, schedule_epochs=60))
  c.stages.finetune.update(dict(epochs=25, lr_g=2.5e-4, schedule_epochs=25))
  c.stages.gan.update(dict(epochs=15, lr_g=1e-4, lr_d=1e-4, schedule_epochs=15))
  c.log_every_steps = 50
  c.image_every_steps = 200
  c.eval_every_steps = 200
  c.checkpoint_every_steps = 200
