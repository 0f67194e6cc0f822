"""The configuration skeleton and the shared recipes (configs are data: every knob of a run lives here).

Config files in configs/ call one of the builders here and override fields. Stages run in
`stage_order`; each stage is configured in epochs and counted in steps (steps = epochs *
steps_per_epoch, one epoch = one random crop of every training slice). A stage's generator loss is

  pixel_weight * pixel_loss(SR, HR) + perceptual_weight * sum_k w_k crit(vgg_k(SR), vgg_k(HR))
  + style_weight * sum_k w_k mse(gram_k(SR), gram_k(HR)) + adversarial_weight * loss.gan (G side)

with the VGG layers and their weights in `config.loss`; 'gan' stages also train the discriminator.
"""
from __future__ import annotations

import ml_collections


def stage(**kw) -> ml_collections.ConfigDict:
  s = dict(
      kind='generator',  # 'generator' (content losses only) or 'gan' (adds D and the adversarial term)
      epochs=60,
      pixel_loss='l1',  # l1 | mse | charbonnier
      pixel_weight=1.0,
      perceptual_weight=0.0,  # VGG feature loss over config.loss.perceptual_layers
      style_weight=0.0,  # Gram-matrix loss over config.loss.style_layers
      adversarial_weight=0.0,  # 'gan' stages: weight of the G side of config.loss.gan
      lr_g=1e-4,
      lr_d=1e-4,
      b1=0.9, b2=0.999,  # Adam betas (G and D)
      # step: lr * factor ** floor(epoch / schedule_epochs) (staircase; schedule_epochs=1 gives a
      # per-epoch exponential); linear: the reference LinearLR 1 -> factor; constant.
      schedule='step',
      schedule_epochs=30,
      schedule_factor=0.5,
      schedule_factor_d=-1.0,  # D's factor; -1 = schedule_factor
      # > 0: lr ramps linearly over this many epochs (float ok) from lr / warm-up steps to lr, then the
      # schedule above continues (counted from the stage start); G and D alike. 0 = none.
      warmup_epochs=0.0,
      # DeepNorm residual weight for this stage (CASR); -1 = the model's default ((2N)^(1/4)).
      deepnorm_alpha=-1.0,
      dropout=0.0,  # dropout in the transformer blocks (CASR)
  )
  unknown = set(kw) - set(s)
  if unknown:
    raise KeyError(f'unknown stage fields: {sorted(unknown)}')
  s.update(kw)
  return ml_collections.ConfigDict(s)


def base_config(name: str, model: dict, scale: int) -> ml_collections.ConfigDict:
  """Everything but the stages: data, loss definitions, mesh, logging."""
  c = ml_collections.ConfigDict()
  c.name = name
  c.seed = 0
  c.model = ml_collections.ConfigDict(dict(scale=scale, in_channels=1, out_channels=1, dtype='float32', **model))
  c.discriminator = ml_collections.ConfigDict(dict(name='casrgan_d'))

  c.data = ml_collections.ConfigDict(dict(
      # --- where the data is (docs/data.md) ---
      root='',  # '' = the embedded sample (MNI152 T1 in fastMRI h5 form)
      format='auto',  # auto | fastmri (*.h5) | nifti (*.nii, *.nii.gz) | images (HR/ + LR/x{s}/ PNGs)
      train_split='train', val_split='val',  # sub-directories of root
      val_fraction=0.0,  # > 0: validation = this fraction of train_split's volumes, chosen by name
      volume_sample_rate=1.0,  # train on this fraction of the training volumes (chosen by name)
      skip_bad_files=False,  # True: skip unreadable/invalid files, count and log them; False: stop
      # --- fastMRI ---
      target_key='auto',  # reconstruction_rss | reconstruction_esc | kspace (RSS computed) | auto
      acquisitions=(),  # e.g. ('CORPD_FBK',): only these attrs['acquisition']; () = all
      scan='full',  # full: read every file at start (max, finiteness); header: attrs['max'], checks per read
      crop_to_recon_size=True,  # k-space targets: centre-crop to the ismrmrd_header recon size
      # --- NIfTI ---
      slice_axis=2,  # after reorienting to RAS: 0 sagittal, 1 coronal, 2 axial
      intensity_percentiles=(0.0, 99.5),  # per-volume clip and scale to [0, 1]
      min_slice_foreground=0.01,  # skip slices with fewer pixels above 0.1 than this fraction
      # --- image folders ---
      lr_source='auto',  # auto: LR/x{s}/ files when they exist | files | degrade (data.degradation of HR)
      # --- patches and degradation (docs/degradations.md) ---
      hr_patch_size=96 if scale != 3 else 72,  # HR crop side, or (height, width)
      # LR = these steps applied in order, e.g. ('area',) (the seed's downsample.py),
      # ('blur:1.0', 'area'), ('bicubic',), ('kspace:window=hamming',), ('bicubic', 'noise:snr=30'),
      # ('thick:axis=0,profile=gaussian',) (through-plane; models that take the upsampled input).
      degradation=('area',),
      flips=True,  # random horizontal and vertical flips
      transposes=False,  # random transposes (square patches and isotropic degradations only)
      num_workers=0, prefetch_buffer=2,
      val_max_volumes=0, val_max_slices=0,  # 0 = all
  ))
  c.batch_size = 16  # global, over all hosts and devices

  c.loss = ml_collections.ConfigDict(dict(
      vgg_arch='vgg19',
      # torchvision layer name -> weight; 'convX_Y' is before its ReLU, 'reluX_Y' after.
      perceptual_layers={'conv3_4': 1.0},  # CASRGAN: VGG19 features[:17], ends at conv3_4
      perceptual_criterion='mse',  # mse | l1
      style_layers={},
      vgg_imagenet_norm=False,  # normalise VGG inputs with the ImageNet mean/std (CASRGAN does not)
      vgg_weights='',  # torchvision vgg19-*.pth / vgg16-*.pth or a converted .npz
      allow_random_vgg=False,  # quick runs only: random VGG features, said in the log
      gan='bce_sum',  # bce_sum | nonsaturating | minimax | lsgan | hinge | ragan (losses.GAN_LOSSES)
  ))
  # > 0: keep an exponential moving average of the generator (BasicSR's net_g_ema, e.g. 0.999);
  # validation, images and `export --what ema` then use it. 0 = off.
  c.ema_decay = 0.0
  # > 1: each step runs the global batch as this many micro-batches (rows j, j+k, ...) and sums their
  # gradients before one update: batch_size / k crops in memory at a time. Must divide batch_size; keep
  # the per-device batch a multiple of it so no rows move between devices.
  c.grad_accum_steps = 1
  # Learning rates for another global batch: lr_g/lr_d are the rates at base_batch_size, times
  # batch_size / base_batch_size ('linear') or its square root ('sqrt'); 'none' = as written.
  c.lr_scaling = 'none'
  c.base_batch_size = 16  # the seed's batch
  c.lr_multipliers = ml_collections.ConfigDict()  # top-level generator param name -> lr factor
  c.stages = ml_collections.ConfigDict()
  c.stage_order = ()

  # Device mesh: batch over data x fsdp, kernels (and their Adam states) over fsdp; -1 = the remaining
  # devices. e.g. --config.mesh.fsdp=8 shards the kernels over each host's 8 GPUs (docs/scaling.md).
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  # ((regex on the '/'-joined parameter path, 'fsdp_last' | 'fsdp_largest' | 'replicated'), ...) tried
  # before sharding.DEFAULT_RULES (kernels' output channels over fsdp, the rest replicated).
  c.sharding_rules = ()

  c.log_every_steps = 50
  c.image_every_steps = 500
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  c.stop_after_steps = 0  # > 0: save and exit at this global step (time-boxed jobs); rerun to resume
  # a step with non-finite gradients is skipped inside the jitted step; this many in a row stop the run
  c.max_consecutive_skipped_steps = 10
  c.profile_steps = ''  # 'A:B': JAX profiler trace of steps A+1..B on process 0, in WORKDIR/profile
  c.keep_checkpoints = 3  # latest N, plus the best by validation PSNR
  c.eval_batch_size = 8  # slices per validation step (global)
  return c


CASRGAN_GAN_LOSS = dict(pixel_loss='l1', pixel_weight=1e-2, perceptual_weight=1.0, adversarial_weight=5e-3)


def casrgan_config(scale: int = 4) -> ml_collections.ConfigDict:
  """The CASRGAN seed: L1 pre-training, DeepNorm-off fine-tuning, GAN training."""
  c = base_config(f'casrgan_x{scale}', dict(
      name='casr', growth_rate0=128, depth=20, growth_rate=32, rdb_depth=6,
      n_stb=2, embed_dim=96, patch_size=6, num_heads=6, window_size=4, mlp_ratio=4.0,
      deepnorm=True, norm_before=False,
      reference_compat=False,  # True reproduces the reference's 3 attention deviations
      remat=False,  # recompute AFEB activations in the backward pass
      # AFEBs per scan iteration. 1 keeps compile time flat in depth (GPU/TPU); XLA:CPU runs scans
      # ~20x slower than straight-line code (docs/benchmarks.md), so 0 = auto: unrolled on CPU, 1 elsewhere.
      scan_unroll=0,
  ), scale)
  # The seed trains on 384 px HR; these crops keep the LR side (24) a multiple of patch*window.
  c.stages = ml_collections.ConfigDict(dict(
      pretrain=stage(kind='generator', epochs=60),
      finetune=stage(kind='generator', epochs=20, deepnorm_alpha=1.0),
      gan=stage(kind='gan', epochs=60, deepnorm_alpha=1.0, dropout=0.1, **CASRGAN_GAN_LOSS),
  ))
  c.stage_order = ('pretrain', 'finetune', 'gan')
  return c


def make_quick(c: ml_collections.ConfigDict, pretrain_epochs: int = 40) -> None:
  """Scale the CASRGAN recipe down so it runs to completion on 2 CPU cores in a few minutes.

  x4 (the README's main job) pre-trains for 100 epochs, long enough to pass bicubic on the sample;
  the x2/x3 quick runs keep the default 40 so that CI stays short.
  """
  c.name = c.name + '_quick'
  c.model.update(dict(growth_rate0=32, depth=4, growth_rate=16, rdb_depth=4, embed_dim=48,
                      patch_size=3, num_heads=3, window_size=4))
  c.batch_size = 8
  c.data.hr_patch_size = 24 * c.model.scale  # LR crops of 24 px at every scale (96 HR at x4)
  c.data.val_max_slices = 4
  c.loss.allow_random_vgg = True
  # A 0.3M-parameter model on 36 slices: a larger step size than the seed's 1e-4, same stages.
  c.stages.pretrain.update(dict(epochs=pretrain_epochs, lr_g=1e-3, schedule_epochs=30))
  c.stages.finetune.update(dict(epochs=5, lr_g=2.5e-4, schedule_epochs=5))
  # Random VGG features carry ~1e-4 of the perceptual signal ImageNet features do, so the seed's
  # balance (content held by the perceptual term) does not hold: L1 holds the content instead.
  c.stages.gan.update(dict(epochs=3, lr_g=1e-4, lr_d=1e-4, schedule_epochs=3, pixel_weight=1.0,
                           adversarial_weight=1e-3))
  quick_logging(c, every=100)


def quick_logging(c: ml_collections.ConfigDict, every: int) -> None:
  c.log_every_steps = 50
  c.image_every_steps = every
  c.eval_every_steps = every
  c.checkpoint_every_steps = every


def casrgan_recipe_for(c: ml_collections.ConfigDict, gan: bool) -> None:
  """The CASRGAN seed's training of a baseline generator (SRCNN, DRRN, EDSR, RDN): L1 pre-training
  alone, or with the seed's `--gan` switch followed by the CASRGAN GAN stage (CASRGAN discriminator,
  VGG19 perceptual + batch-summed -log D + L1)."""
  c.stages = ml_collections.ConfigDict(dict(
      pretrain=stage(kind='generator', epochs=60),
      gan=stage(kind='gan', epochs=60, **CASRGAN_GAN_LOSS),
  ))
  c.stage_order = ('pretrain', 'gan') if gan else ('pretrain',)
  if gan:
    c.name += '_gan'


def quick_baseline(c: ml_collections.ConfigDict, model: dict, pretrain_epochs: int, gan_epochs: int,
                   lr: float = 1e-3) -> None:
  """The quick variant of a baseline recipe: a small model, a few hundred steps, random VGG."""
  c.name += '_quick'
  c.model.update(model)
  c.batch_size = 8
  c.data.hr_patch_size = 48 if c.model.scale != 3 else 36
  c.data.val_max_slices = 4
  c.loss.allow_random_vgg = True
  c.stages.pretrain.update(dict(epochs=pretrain_epochs, lr_g=lr, schedule_epochs=max(1, pretrain_epochs // 2)))
  c.stages.gan.update(dict(epochs=gan_epochs, lr_g=1e-4, lr_d=1e-4, schedule_epochs=max(1, gan_epochs),
                           pixel_weight=1.0, adversarial_weight=1e-3))
  quick_logging(c, every=100)


def parse_arg(arg: str | None, path: str, known: tuple[str, ...]) -> set[str]:
  """'gan,quick' -> {'gan', 'quick'}; an unknown token is a one-line error naming the file."""
  tokens = {t.strip() for t in (arg or '').split(',') if t.strip()}
  unknown = tokens - set(known)
  if unknown:
    raise ValueError(f'{path}: unknown argument {",".join(sorted(unknown))!r} (known: {", ".join(known)}; '
                     'combine with commas, e.g. FILE:gan,quick)')
  return tokens


def scale_from(tokens: set[str], path: str, scales: tuple[int, ...], default: int) -> int:
  chosen = [int(t[1:]) for t in tokens if t.startswith('x') and t[1:].isdigit()]
  if len(chosen) > 1:
    raise ValueError(f'{path}: more than one scale in the argument ({", ".join(f"x{s}" for s in chosen)})')
  s = chosen[0] if chosen else default
  if s not in scales:
    raise ValueError(f'{path}: scale x{s} is not supported (known: {", ".join(f"x{v}" for v in scales)})')
  return s


def baseline_config(path: str, arg: str | None, model: dict, quick_model: dict, *,
                    upsampled_input: bool = False, extra_tokens: tuple[str, ...] = ()):
  """A baseline generator of the CASRGAN seed (SRCNN, DRRN, EDSR, RDN): `FILE[:x2|x3|x4][,gan][,quick]`.

  Returns (config, tokens) so the file can apply its own extra tokens.
  """
  tokens = parse_arg(arg, path, ('x2', 'x3', 'x4', 'gan', 'quick') + extra_tokens)
  scale = scale_from(tokens, path, (2, 3, 4), 4)
  c = base_config(f'{model["name"]}_x{scale}', model, scale)
  if upsampled_input:
    # The model sees the bicubic-upsampled LR; any crop works, keep the seed's HR crop sizes.
    c.data.hr_patch_size = 96 if scale != 3 else 72
  casrgan_recipe_for(c, gan='gan' in tokens)
  if 'quick' in tokens:
    quick_baseline(c, quick_model, pretrain_epochs=60, gan_epochs=5)
  return c, tokens


def fagan_config(scale: int, path: str, arg: str | None) -> ml_collections.ConfigDict:
  """FA-GAN (Jiang et al. 2021). The paper fixes: LFFB (3 paths, 1x1 fusion), GFFB (channel attention
  with reduction r, self-attention with gamma = 0 at init, weighted connection alpha = beta = 0.5),
  x2 upsampling stages, a spectrally normalised D, loss = VGG perceptual + pixel + adversarial, Adam
  lr 1e-4 beta1 0.9, bicubic LR. Every other number below is our choice, marked 'choice'."""
  tokens = parse_arg(arg, path, ('quick',))
  c = base_config(f'fagan_x{scale}', dict(
      name='fagan', n_feats=64,
      n_lffb=8,  # choice: the paper gives no count
      kernel_sizes=(3, 5, 7),  # choice: 'different kernel sizes'
      reduction=16,  # choice: r is not given (RCAN's 16)
      attention_at='lr',  # choice: GFFB on LR features; 'hr' = the paper's order, (H*W)^2 memory at HR
      connection='weighted', alpha=0.5, beta=0.5,
  ), scale)
  c.discriminator = ml_collections.ConfigDict(dict(name='fagan_sn_d', base_features=64, power_iterations=1))
  c.data.hr_patch_size = 96
  c.data.degradation = ('bicubic',)  # 'All low-resolution images ... are obtained by bicubic interpolation'
  # (assignment, not update: ConfigDict.update would merge the layer dicts)
  c.loss.perceptual_layers = {'relu5_4': 1.0}  # choice: SRGAN's VGG54 (the paper: j-th conv before the i-th pool)
  c.loss.gan = 'nonsaturating'  # 'the average discriminator probability': mean -log D(G(x)), BCE for D
  c.stages = ml_collections.ConfigDict(dict(
      # choice: MSE pre-training of the generator first, as SRGAN (which FA-GAN builds on) does
      pretrain=stage(kind='generator', epochs=20, pixel_loss='mse', schedule='constant'),
      # choice of weights: SRGAN's (VGG MSE scaled by 1/12.75^2 = 6.2e-3, adversarial 1e-3), pixel MSE 1
      gan=stage(kind='gan', epochs=80, pixel_loss='mse', pixel_weight=1.0, perceptual_weight=6.2e-3,
                adversarial_weight=1e-3, schedule='constant'),
  ))
  c.stage_order = ('pretrain', 'gan')
  if 'quick' in tokens:
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
    quick_logging(c, every=100)
  return c


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config of `FILE[:ARG]` (what --config takes), loaded by path; ConfigError if it cannot be."""
  import importlib.util
  import pathlib
  from mrisr_jax.config_check import ConfigError
  path, _, arg = str(spec).partition(':')
  if not pathlib.Path(path).is_file():
    raise ConfigError(f'{path}: no such config file')
  module_spec = importlib.util.spec_from_file_location(f'config_{pathlib.Path(path).stem}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'{path}: has no get_config(arg) function')
  return module.get_config(arg or None)
