"""TransMRSR: a StyleSwin generative prior (stage 1), its self-distilled truncation centroids, and the
SR network with the prior as its decoder (stage 2), for thick-slice (through-plane) brain MRI.

Arguments (comma-separated):
  scale=4|8        slice thickening of the task (the architecture is the same for both)
  stage=all|prior|sr
                   all: prior in WORKDIR/prior (then its centroids), SR in WORKDIR/sr, in one job;
                   prior: only stage 1 (and centroids) in WORKDIR;
                   sr: only stage 2 in WORKDIR, from --config.transmrsr.prior_workdir=DIR (a stage-1
                   run) or --config.transmrsr.prior_weights=FILE (a StyleSwin checkpoint with g_ema)
  quick            64 px, few channels: both stages on the embedded sample in minutes on 2 CPU cores
  parity           the public code's conventions: 3-channel ImageNet-normalised input, the farthest centroid
  content=code|paper
                   VGG19 content taps {2,4,7} (the public code) or {2,4,7,10} (the paper)
Use: python -m mrisr_jax.main --config configs/transmrsr.py:scale=4,quick --workdir runs/transmrsr

Choices where the paper and the public code leave things open (docs/models.md, TransMRSR):
- thick slices: box profile (contiguous thick slices, no gap) along axis 1 of each slice, the LR
  brought back to the HR grid with the library's bicubic (data.degradation, as SRCNN/DRRN's
  through-plane path); `thick:profile=gaussian` is the other profile;
- NIfTI data: x-z planes (data.slice_axis=1 after RAS reorientation), thickened along z;
- slices smaller than the network are zero-padded to it (data.pad_to_patch), larger ones tiled.
"""

import ml_collections

from mrisr_jax import config_base
from mrisr_jax.config_base import base_config
from mrisr_jax.config_base import stage as stage_section

_recipes = config_base.load_sibling(__file__, '_recipes.py')

ARGS = dict(
  scale=(4, (4, 8)),
  stage=('all', ('all', 'prior', 'sr')),
  quick=False,
  parity=False,
  content=('code', ('code', 'paper')),
)

# VGG19 `features` taps of the public code (TransMRSR models/Transmrsr.py): content {2, 4, 7}, style
# {1, 3, 5, 9, 13}; the paper names content {2, 4, 7, 10}.
CONTENT_TAPS = {'code': ('conv1_2', 'pool1', 'conv2_2'), 'paper': ('conv1_2', 'pool1', 'conv2_2', 'conv3_1')}
STYLE_TAPS = ('relu1_1', 'relu1_2', 'conv2_1', 'pool2', 'relu3_2')


def get_config(arg: str | None = None):
  return build(**config_base.parse_args(arg, 'configs/transmrsr.py', ARGS))


def build(
  scale: int = 4, stage: str = 'all', quick: bool = False, parity: bool = False, content: str = 'code'
) -> ml_collections.ConfigDict:
  arch = dict(size=256, style_dim=512, channel_multiplier=1, channel_base=512, lr_mlp=0.01)
  c = base_config(
    f'transmrsr_x{scale}',
    dict(
      name='transmrsr',
      **arch,
      mlp_ratio=4.0,
      n_centroids=8,
      psi=0.9,
      sdt='farthest' if parity else 'nearest',  # the paper: nearest; the public code: farthest
      encoder_heads='public',  # the public code's head list (read in reverse resolution order)
      encoder_q_scale=False,  # the public encoder attention does not scale q by head_dim ** -0.5
      imagenet_input=parity,
    ),
    scale,
  )
  c.data.degradation = ('thick:axis=1,profile=box',)
  c.data.slice_axis = 1
  c.data.hr_patch_size = arch['size']
  c.data.pad_to_patch = True
  c.data.flips = True
  c.data.transposes = True  # the public code's H/W transpose (the thick axis then lies along rows or columns)
  c.batch_size = 6  # the paper's 2 x V100 batch
  c.base_batch_size = 6
  c.eval_batch_size = 4
  c.ema_decay = 0.0  # TransMRSR keeps no EMA of the SR network
  c.loss.perceptual_layers = {n: 1.0 for n in CONTENT_TAPS[content]}
  c.loss.style_layers = {n: 1.0 for n in STYLE_TAPS}
  c.loss.perceptual_criterion = 'mse'
  c.loss.vgg_imagenet_norm = True  # VGG sees the ImageNet-normalised grey image, as the public code feeds it
  c.stages = ml_collections.ConfigDict(
    dict(
      sr=stage_section(
        kind='generator',
        epochs=100,
        lr_g=1e-4,
        b1=0.5,
        b2=0.999,
        pixel_loss='l1',
        pixel_weight=1.0,
        perceptual_weight=0.5,
        style_weight=0.5,
        schedule='step',
        schedule_epochs=30,
        schedule_factor=0.5,
      )
    )
  )
  c.stage_order = ('sr',)
  # the paper: stop when validation PSNR has improved by no more than 0.05 dB for 10 evaluations
  c.early_stop_patience = 10
  c.early_stop_min_delta = 0.05

  c.transmrsr = ml_collections.ConfigDict(
    dict(
      stage=stage,
      prior_workdir='',  # stage=sr: a stage-1 run (its EMA generator and centroids)
      prior_weights='',  # stage=sr: or a StyleSwin checkpoint (.pt with 'g_ema'; torch needed)
      centroids='',  # '' = PRIOR_WORKDIR/centroids/centroids.npy; a .npy (K, style_dim) or a folder of .npy
      freeze_decoder=False,  # the paper's 'frozen GP' ablation (Adam still holds its moments)
    )
  )
  c.prior = ml_collections.ConfigDict(
    dict(
      **{k: arch[k] for k in ('size', 'style_dim', 'channel_multiplier', 'channel_base', 'lr_mlp')},
      n_mlp=8,
      channels=3 if parity else 1,  # 1: images in [-1, 1]; 3: the public code's ImageNet-normalised RGB
      d_channel_multiplier=2,
      d_channel_base=512,
      batch_size=32,
      steps=800_000,
      lr=2e-4,
      r1_gamma=10.0,
      r1_every=16,
      d_clip=5.0,
      ema_decay=0.5 ** (32 / 10000),
      planes=(0, 1, 2),  # NIfTI: HR slices of all three planes
      flips=True,
      log_every_steps=100,
      checkpoint_every_steps=5000,
      centroid_samples=60_000,
      n_centroids=8,
      centroid_seed=0,
    )
  )
  if quick:
    make_quick(c)
  return c


def make_quick(c: ml_collections.ConfigDict) -> None:
  """64 px, channel_base 64, style_dim 64: both stages to the end on the embedded sample in minutes."""
  c.name += '_quick'
  small = dict(size=64, style_dim=64, channel_base=64)
  c.model.update(small)
  c.prior.update(small)
  c.prior.update(
    dict(
      d_channel_base=64,
      batch_size=8,
      steps=100,
      lr=1e-3,
      log_every_steps=50,
      checkpoint_every_steps=100,
      centroid_samples=4000,
    )
  )
  c.data.hr_patch_size = 64
  c.data.val_max_slices = 2
  c.batch_size = 8
  c.base_batch_size = 8
  c.loss.allow_random_vgg = True
  c.stages.sr.update(dict(epochs=30, lr_g=1e-3, schedule_epochs=20))
  _recipes.quick_logging(c, every=40)
