"""The resolved run: a config checked once and turned into frozen, typed specs.

A config file returns an `ml_collections.ConfigDict` (easy to override from the command line); the
entry points call `resolve(config)` once, and everything below them (recipe, data pipeline, sources,
validation, sharding) reads these specs: no module re-reads, re-defaults or re-validates the raw
config. The defaults of the data and stage fields live here, in the dataclasses; `config_base`
builds its ConfigDicts from them.

Every check names the key and the value at fault in one line (`ConfigError`), including the ones
that need two sections at once (a crop that does not fit the scale, a degradation the model cannot
invert).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterator, Mapping

import ml_collections
import numpy as np

from mrisr_jax.errors import ConfigError
from mrisr_jax.data.errors import DataError

STAGE_KINDS = ('generator', 'gan')
SCHEDULES = ('constant', 'linear', 'step')
LOSS_WEIGHTS = ('pixel_weight', 'perceptual_weight', 'style_weight', 'adversarial_weight')
LR_SCALINGS = ('none', 'linear', 'sqrt')
FORMATS = ('auto', 'fastmri', 'nifti', 'images', 'tfds')
LR_SOURCES = ('auto', 'files', 'degrade')


def _require(cond: bool, msg: str) -> None:
  if not cond:
    raise ConfigError(msg)


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _plain(value):
  """ConfigDict/list values as hashable plain Python (tuples, tuples of pairs)."""
  if isinstance(value, (ml_collections.ConfigDict, dict)):
    return tuple((str(k), _plain(v)) for k, v in value.items())
  if isinstance(value, (list, tuple)):
    return tuple(_plain(v) for v in value)
  return value


def _get(section, key: str, default):
  """section[key] for a ConfigDict, dict or attribute object; `default` when absent or None."""
  if section is None:
    return default
  if isinstance(section, Mapping) or hasattr(section, 'get'):
    try:
      value = section.get(key, default)
    except (KeyError, AttributeError):
      value = default
  else:
    value = getattr(section, key, default)
  return default if value is None else value


# ---------------------------------------------------------------------------------------------- data
@dataclasses.dataclass(frozen=True)
class DataSpec:
  """config.data, resolved: `hr_patch_size` is (height, width), `degradation` a tuple of parsed-valid
  steps. The defaults below are the only ones (docs/data.md, docs/degradations.md)."""

  # --- where the data is ---
  root: str = ''  # '' = the embedded sample (MNI152 T1 in fastMRI h5 form)
  format: str = 'auto'  # auto | fastmri (*.h5) | nifti (*.nii, *.nii.gz) | images (HR/ + LR/x{s}/ PNGs) | tfds
  # data.format=tfds: a built fastmri_slices dataset (tools/build_tfds.py); train/val_split name its splits
  tfds_dir: str = ''  # TFDS data directory ('' = TFDS's default, ~/tensorflow_datasets)
  tfds_name: str = ''  # e.g. 'fastmri_slices/singlecoil_knee' (config), optionally ':1.0.0'
  train_split: str = 'train'  # sub-directories of root
  val_split: str = 'val'
  val_fraction: float = 0.0  # > 0: validation = this fraction of train_split's volumes, chosen by name
  volume_sample_rate: float = 1.0  # train on this fraction of the training volumes (chosen by name)
  skip_bad_files: bool = False  # True: skip unreadable/invalid files, count and log them; False: stop
  # --- fastMRI ---
  target_key: str = 'auto'  # reconstruction_rss | reconstruction_esc | kspace (RSS computed) | auto
  acquisitions: tuple[str, ...] = ()  # e.g. ('CORPD_FBK',): only these attrs['acquisition']; () = all
  scan: str = 'full'  # full: read every file at start (max, finiteness); header: attrs['max'], checks per read
  crop_to_recon_size: bool = True  # k-space targets: centre-crop to the ismrmrd_header recon size
  # --- NIfTI ---
  slice_axis: int = 2  # after reorienting to RAS: 0 sagittal, 1 coronal, 2 axial
  intensity_percentiles: tuple[float, float] = (0.0, 99.5)  # per-volume clip and scale to [0, 1]
  min_slice_foreground: float = 0.01  # skip slices with fewer pixels above 0.1 than this fraction
  # --- image folders ---
  lr_source: str = 'auto'  # auto: LR/x{s}/ files when they exist | files | degrade (data.degradation of HR)
  # --- patches and degradation ---
  hr_patch_size: tuple[int, int] = (96, 96)  # HR crop (height, width); the config may give one int
  # LR = these steps applied in order, e.g. ('area',) (the seed's downsample.py), ('blur:1.0', 'area'),
  # ('bicubic',), ('kspace:window=hamming',), ('bicubic', 'noise:snr=30'),
  # ('thick:axis=0,profile=gaussian',) (through-plane; models that take the upsampled input).
  degradation: tuple[str, ...] = ('area',)
  # zero-pad slices smaller than the crop up to it (centred, the extra pixel top/left, as TransMRSR's
  # public Crop); False: such volumes are bad files
  pad_to_patch: bool = False
  flips: bool = True  # random horizontal and vertical flips
  transposes: bool = False  # random transposes (square patches and isotropic degradations only)
  num_workers: int = 0  # grain worker processes (0: threads in this process)
  prefetch_buffer: int = 2  # elements read ahead per reader
  val_max_volumes: int = 0  # 0 = all
  val_max_slices: int = 0  # evenly spaced slices per validation volume; 0 = all

  @classmethod
  def defaults(cls) -> dict:
    """The fields with their defaults, as a config section (hr_patch_size as one int)."""
    d = {f.name: f.default for f in dataclasses.fields(cls)}
    d['hr_patch_size'] = d['hr_patch_size'][0]
    return d

  @property
  def lr_from_files(self):
    """The image sources' pairing switch: 'auto', True (LR files) or False (degrade the HR)."""
    return {'auto': 'auto', 'files': True, 'degrade': False}[self.lr_source]

  def get(self, key: str, default=None):  # the data readers' small dict-like view
    return getattr(self, key, default)


def _data_error(cond: bool, msg: str) -> None:
  if not cond:
    raise DataError(msg)


def _patch(value) -> tuple[int, int]:
  sides = list(value) if isinstance(value, (tuple, list)) else [value]
  _data_error(
    len(sides) in (1, 2) and all(_is_int(v) and v >= 1 for v in sides),
    f'data.hr_patch_size: {value!r} must be a positive integer or (height, width)',
  )
  return int(sides[0]), int(sides[-1])


def _degradation(value) -> tuple[str, ...]:
  from mrisr_jax.data import degrade

  steps = (value,) if isinstance(value, str) else tuple(value)
  try:
    degrade.parse_degradation(steps)
  except ValueError as e:
    raise DataError(str(e)) from None
  return steps


def _fraction(value, key: str, allow_zero: bool) -> float:
  ok = _is_number(value) and (0 <= value if allow_zero else 0 < value) and value <= 1
  _data_error(ok, f'data.{key}: {value!r} must be a number in {"[0" if allow_zero else "(0"}, 1]')
  return float(value)


def _count(value, key: str) -> int:
  _data_error(_is_int(value) and value >= 0, f'data.{key}: {value!r} must be an integer >= 0')
  return int(value)


def _one_of(value, key: str, known) -> str:
  _data_error(value in known, f'data.{key}: {value!r} is not one of {list(known)}')
  return str(value)


def data_spec(section) -> DataSpec:
  """A DataSpec from config.data (a ConfigDict, a dict of some of its fields, or a DataSpec): missing
  fields take the defaults; a bad value is one DataError naming `data.KEY` and the value (`resolve`
  turns it into a ConfigError naming `config.data.KEY`)."""
  if isinstance(section, DataSpec):
    return section
  known = [f.name for f in dataclasses.fields(DataSpec)]
  if section is not None:
    keys = section.keys() if hasattr(section, 'keys') else vars(section).keys()
    unknown = sorted(set(keys) - set(known))
    _data_error(
      not unknown, f'data.{unknown[0] if unknown else ""}: not a data field; known: {", ".join(sorted(known))}'
    )
  base = DataSpec()
  v = {name: _plain(_get(section, name, getattr(base, name))) for name in known}
  v['format'] = _one_of(v['format'], 'format', FORMATS)
  v['scan'] = _one_of(v['scan'], 'scan', ('full', 'header'))
  v['lr_source'] = _one_of(v['lr_source'], 'lr_source', LR_SOURCES)
  _data_error(
    _is_int(v['slice_axis']) and v['slice_axis'] in (0, 1, 2), f'data.slice_axis: {v["slice_axis"]!r} must be 0, 1 or 2'
  )
  pct = v['intensity_percentiles']
  _data_error(
    isinstance(pct, tuple) and len(pct) == 2 and all(map(_is_number, pct)) and 0 <= pct[0] < pct[1] <= 100,
    f'data.intensity_percentiles: {pct!r} must satisfy 0 <= low < high <= 100',
  )
  acq = v['acquisitions']
  v['acquisitions'] = (acq,) if isinstance(acq, str) else tuple(acq)
  v['val_fraction'] = _fraction(v['val_fraction'], 'val_fraction', allow_zero=True)
  _data_error(v['val_fraction'] < 1, f'data.val_fraction: {v["val_fraction"]} must be in [0, 1)')
  v['volume_sample_rate'] = _fraction(v['volume_sample_rate'], 'volume_sample_rate', allow_zero=False)
  v['min_slice_foreground'] = float(v['min_slice_foreground'])
  v['intensity_percentiles'] = tuple(float(x) for x in pct)
  v['hr_patch_size'] = _patch(v['hr_patch_size'])
  v['degradation'] = _degradation(v['degradation'])
  for name in ('num_workers', 'prefetch_buffer', 'val_max_volumes', 'val_max_slices'):
    v[name] = _count(v[name], name)
  for name in ('flips', 'transposes', 'skip_bad_files', 'crop_to_recon_size', 'pad_to_patch'):
    v[name] = bool(v[name])
  for name in ('root', 'train_split', 'val_split', 'target_key', 'tfds_dir', 'tfds_name'):
    v[name] = str(v[name])
  return DataSpec(**v)


# --------------------------------------------------------------------------------------------- model
@dataclasses.dataclass(frozen=True)
class ModelSpec(Mapping):
  """config.model (or config.discriminator): `name` and the module's own fields, exactly as the module
  names them (registry builds `Module(**fields)`). A read-only mapping, so the registry reads it as it
  reads a config section; `upsampled_input` and `size_multiple` come from the built module."""

  name: str
  fields: tuple[tuple[str, Any], ...]
  upsampled_input: bool = False
  size_multiple: int = 1
  fixed_size: int = 0  # > 0: the model's one input side in the HR grid (TransMRSR), larger slices are tiled

  def __getitem__(self, key):
    if key == 'name':
      return self.name
    for k, value in self.fields:
      if k == key:
        return value
    raise KeyError(key)

  def __iter__(self) -> Iterator[str]:
    yield 'name'
    yield from (k for k, _ in self.fields)

  def __len__(self) -> int:
    return 1 + len(self.fields)

  def __getattr__(self, key):  # model.scale, model.dtype, ... as on the ConfigDict
    if key.startswith('__') or key in ('name', 'fields', 'upsampled_input', 'size_multiple', 'fixed_size'):
      raise AttributeError(key)
    try:
      return self[key]
    except KeyError:
      raise AttributeError(key) from None

  def __hash__(self):
    return hash((self.name, self.fields))

  def to_dict(self) -> dict:
    """The section as plain JSON-ready data: name first, then the fields (tuples as lists)."""
    return json.loads(json.dumps({'name': self.name, **dict(self.fields)}))

  @property
  def scale(self) -> int:
    return int(self.get('scale', 1))

  @property
  def dtype(self) -> str:
    return str(self.get('dtype', 'float32'))


def _module_fields(section) -> tuple[tuple[str, Any], ...]:
  return tuple((str(k), _plain(v)) for k, v in section.items() if k != 'name')


# -------------------------------------------------------------------------------------------- stages
@dataclasses.dataclass(frozen=True)
class StageSpec:
  """One stage of the recipe (config.stages[name]); the defaults below are the only ones."""

  name: str = ''
  kind: str = 'generator'  # 'generator' (content losses only) or 'gan' (adds D and the adversarial term)
  epochs: int = 60
  pixel_loss: str = 'l1'  # l1 | mse | charbonnier
  pixel_weight: float = 1.0
  perceptual_weight: float = 0.0  # VGG feature loss over config.loss.perceptual_layers
  style_weight: float = 0.0  # Gram-matrix loss over config.loss.style_layers
  adversarial_weight: float = 0.0  # 'gan' stages: weight of the G side of config.loss.gan
  lr_g: float = 1e-4
  lr_d: float = 1e-4
  b1: float = 0.9  # Adam betas (G and D)
  b2: float = 0.999
  # step: lr * factor ** floor(epoch / schedule_epochs) (staircase; schedule_epochs=1 gives a per-epoch
  # exponential); linear: the reference LinearLR 1 -> factor; constant.
  schedule: str = 'step'
  schedule_epochs: int = 30
  schedule_factor: float = 0.5
  schedule_factor_d: float = -1.0  # D's factor; -1 = schedule_factor
  # > 0: lr ramps linearly over this many epochs (float ok) from lr / warm-up steps to lr, then the
  # schedule above continues (counted from the stage start); G and D alike. 0 = none.
  warmup_epochs: float = 0.0
  # DeepNorm residual weight for this stage (CASR); -1 = the model's default ((2N)^(1/4)).
  deepnorm_alpha: float = -1.0
  dropout: float = 0.0  # dropout in the transformer blocks (CASR)

  @classmethod
  def defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.name != 'name'}

  @property
  def factor_d(self) -> float:
    return self.schedule_factor if self.schedule_factor_d < 0 else self.schedule_factor_d

  def get(self, key: str, default=None):
    return getattr(self, key, default)


def _stage_spec(name: str, section, loss_names) -> StageSpec:
  key = f'config.stages.{name}'
  known = set(StageSpec.defaults())
  unknown = sorted(set(section.keys()) - known)
  _require(
    not unknown, f'{key}.{unknown[0] if unknown else ""} is not a stage field; known: {", ".join(sorted(known))}'
  )
  v = {**StageSpec.defaults(), **{k: _plain(x) for k, x in section.items()}}
  _require(v['kind'] in STAGE_KINDS, f'{key}.kind={v["kind"]!r}; known: {", ".join(STAGE_KINDS)}')
  _require(v['schedule'] in SCHEDULES, f'{key}.schedule={v["schedule"]!r}; known: {", ".join(SCHEDULES)}')
  _require(v['pixel_loss'] in loss_names, f'{key}.pixel_loss={v["pixel_loss"]!r}; known: {", ".join(loss_names)}')
  _require(_is_int(v['epochs']) and v['epochs'] >= 0, f'{key}.epochs={v["epochs"]!r} must be an integer >= 0')
  _require(
    _is_number(v['schedule_epochs']) and v['schedule_epochs'] > 0,
    f'{key}.schedule_epochs={v["schedule_epochs"]!r} must be > 0',
  )
  _require(
    _is_number(v['warmup_epochs']) and v['warmup_epochs'] >= 0,
    f'{key}.warmup_epochs={v["warmup_epochs"]!r} must be >= 0',
  )
  for w in LOSS_WEIGHTS:
    _require(_is_number(v[w]) and v[w] >= 0, f'{key}.{w}={v[w]!r} must be >= 0')
  _require(any(v[w] > 0 for w in LOSS_WEIGHTS), f'{key}: every loss weight is 0 ({", ".join(LOSS_WEIGHTS)})')
  if v['kind'] == 'gan':
    _require(
      v['adversarial_weight'] > 0,
      f'{key}.adversarial_weight={v["adversarial_weight"]}: a gan stage '
      'needs a positive adversarial weight (use kind=generator otherwise)',
    )
  return StageSpec(name=name, **v)


# ---------------------------------------------------------------------------------------------- loss
@dataclasses.dataclass(frozen=True)
class LossConfig:
  """config.loss: the VGG feature losses and the GAN loss shared by every stage."""

  vgg_arch: str = 'vgg19'
  # torchvision layer name -> weight; 'convX_Y' is before its ReLU, 'reluX_Y' after.
  perceptual_layers: tuple[tuple[str, float], ...] = (('conv3_4', 1.0),)  # CASRGAN: VGG19 features[:17]
  perceptual_criterion: str = 'mse'  # mse | l1
  style_layers: tuple[tuple[str, float], ...] = ()
  vgg_imagenet_norm: bool = False  # normalise VGG inputs with the ImageNet mean/std (CASRGAN does not)
  vgg_weights: str = ''  # torchvision vgg19-*.pth / vgg16-*.pth or a converted .npz
  allow_random_vgg: bool = False  # quick runs only: random VGG features, said in the log
  gan: str = 'bce_sum'  # bce_sum | nonsaturating | minimax | lsgan | hinge | ragan (losses.GAN_LOSSES)

  @classmethod
  def defaults(cls) -> dict:
    d = {f.name: f.default for f in dataclasses.fields(cls)}
    d['perceptual_layers'], d['style_layers'] = dict(d['perceptual_layers']), dict(d['style_layers'])
    return d


def loss_config(section) -> LossConfig:
  """A LossConfig from config.loss; a bad name or layer is one ConfigError naming the key."""
  from mrisr_jax import losses, registry
  from mrisr_jax.models import vgg as vgg_lib

  known = set(LossConfig.defaults())
  unknown = sorted(set(section.keys()) - known)
  _require(
    not unknown, f'config.loss.{unknown[0] if unknown else ""} is not a loss field; known: {", ".join(sorted(known))}'
  )
  v = {**LossConfig.defaults(), **dict(section.items())}
  registry.lookup(losses.GAN_LOSSES, 'config.loss.gan', v['gan'])
  _require(
    v['perceptual_criterion'] in ('mse', 'l1'),
    f'config.loss.perceptual_criterion={v["perceptual_criterion"]!r}; known: l1, mse',
  )
  for field in ('perceptual_layers', 'style_layers'):
    layers = tuple((str(n), float(w)) for n, w in dict(v[field]).items())
    for layer, _ in layers:
      try:
        vgg_lib.vgg_layer_index(v['vgg_arch'], layer)
      except ValueError as e:
        raise ConfigError(f'config.loss.{field}.{layer}: {e}') from None
    v[field] = layers
  v['vgg_weights'] = str(v['vgg_weights'])
  return LossConfig(**v)


# ----------------------------------------------------------------------------------------------- run
# The run-level fields with their defaults (config_base sets each of them; older configs may lack some).
RUN_DEFAULTS = dict(
  name='run',
  seed=0,
  batch_size=16,
  eval_batch_size=8,
  ema_decay=0.0,
  grad_accum_steps=1,
  lr_scaling='none',
  base_batch_size=16,
  log_every_steps=50,
  image_every_steps=500,
  eval_every_steps=1000,
  checkpoint_every_steps=1000,
  stop_after_steps=0,
  max_consecutive_skipped_steps=10,
  profile_steps='',
  keep_checkpoints=3,
  early_stop_patience=0,
  early_stop_min_delta=0.0,
)


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """The whole run, resolved. `config` is the ConfigDict it came from (for config.json and the
  TensorBoard hparams only)."""

  name: str
  seed: int
  model: ModelSpec
  discriminator: ModelSpec
  data: DataSpec
  loss: LossConfig
  stages: tuple[StageSpec, ...]  # in config.stage_order
  batch_size: int
  eval_batch_size: int
  ema_decay: float
  grad_accum_steps: int
  lr_scaling: str
  base_batch_size: int
  lr_multipliers: tuple[tuple[str, float], ...]
  mesh: tuple[tuple[str, int], ...]
  sharding_rules: tuple
  log_every_steps: int
  image_every_steps: int
  eval_every_steps: int
  checkpoint_every_steps: int
  stop_after_steps: int
  max_consecutive_skipped_steps: int
  profile_steps: str
  keep_checkpoints: int
  # > 0: stop the run after this many validations in a row that beat the best PSNR by <= min_delta dB
  early_stop_patience: int = 0
  early_stop_min_delta: float = 0.0
  config: Any = dataclasses.field(default=None, compare=False, repr=False)

  @property
  def scale(self) -> int:
    return self.model.scale

  @property
  def lr_patch_shape(self) -> tuple[int, int]:
    ph, pw = self.data.hr_patch_size
    return ph // self.scale, pw // self.scale

  @property
  def lr_scale(self) -> float:
    """The learning-rate factor for the global batch (config.lr_scaling): batch / base_batch_size
    ('linear'), its square root ('sqrt') or 1 ('none'); the stages' lr_g / lr_d are the rates at
    base_batch_size."""
    ratio = self.batch_size / self.base_batch_size
    return {'none': 1.0, 'linear': ratio, 'sqrt': ratio**0.5}[self.lr_scaling]

  def stage(self, name: str) -> StageSpec:
    return next(s for s in self.stages if s.name == name)

  def get(self, key: str, default=None):
    return getattr(self, key, default)


def parse_profile_steps(value: str) -> tuple[int, int]:
  """'A:B' -> (A, B) with 0 <= A < B; one-line ConfigError otherwise."""
  a, sep, b = str(value).partition(':')
  if not (sep and a.strip().isdigit() and b.strip().isdigit() and int(a) < int(b)):
    raise ConfigError(f'config.profile_steps={value!r} must be A:B with 0 <= A < B (steps)')
  return int(a), int(b)


def _model_spec(config) -> ModelSpec:
  from mrisr_jax import registry

  m = config.model
  cls = registry.generator_class(m.name)
  # the scale check is the generator's own (models.base.SRGenerator.scale_error); named by config key here
  _require(
    cls.scale_error(m.scale) is None,
    f'config.model.scale={m.scale!r} is not supported by {m.name} ({cls.__name__}); use one of {cls.supported_scales}',
  )
  registry.compute_dtype(m.dtype)
  # float16 needs loss scaling (its range underflows small gradients), which is not implemented
  for key, dtype in (
    ('config.model.dtype', m.dtype),
    ('config.discriminator.dtype', config.discriminator.get('dtype')),
  ):
    _require(dtype != 'float16', f'{key}={dtype!r} is not supported (no loss scaling); use bfloat16 or float32')
  g = registry.build_generator(m)  # names any config field the module lacks
  return ModelSpec(
    name=str(m.name),
    fields=_module_fields(m),
    upsampled_input=bool(g.upsampled_input),
    size_multiple=int(g.size_multiple),
    fixed_size=int(getattr(g, 'fixed_size', 0)),
  )


def _check_fit(model: ModelSpec, data: DataSpec) -> None:
  """The crop and the degradation against the model: the checks that need both sections."""
  from mrisr_jax.data import degrade

  s, (ph, pw) = model.scale, data.hr_patch_size
  p = ph if ph == pw else (ph, pw)
  factors = degrade.lr_factors(data.degradation, s)
  if not model.upsampled_input:
    _require(
      factors == (s, s),
      f'config.data.degradation={data.degradation!r} reduces (rows, columns) by '
      f'{factors}, but {model.name} upsamples both by {s}; anisotropic degradations (thick slices) '
      'need a model that takes the upsampled input (srcnn, drrn)',
    )
  _require(ph % s == 0 and pw % s == 0, f'config.data.hr_patch_size={p} is not divisible by config.model.scale={s}')
  _require(
    ph % factors[0] == 0 and pw % factors[1] == 0,
    f"config.data.hr_patch_size={p} is not divisible by the degradation's reduction {factors}",
  )
  m = model.size_multiple
  _require(
    (ph // s) % m == 0 and (pw // s) % m == 0,
    f'config.data.hr_patch_size={p}: the LR crop {ph // s}x{pw // s} must be a multiple of {m} for '
    f'{model.name} (e.g. model.patch_size*model.window_size)',
  )
  _require(
    not data.transposes or (ph == pw and (factors[0] == factors[1] or model.upsampled_input)),
    f'config.data.transposes=True needs a square crop and an isotropic degradation or a model that takes the '
    f'upsampled input (crop {p}, reduction {factors})',
  )


def resolve(config: ml_collections.ConfigDict) -> RunSpec:
  """Checks `config` and returns its RunSpec; the first problem is one ConfigError naming the key."""
  from mrisr_jax import losses, registry

  if isinstance(config, RunSpec):
    return config
  model = _model_spec(config)
  try:
    data = data_spec(config.data)
  except DataError as e:
    raise ConfigError(f'config.{e}' if str(e).startswith('data.') else f'config.data: {e}') from None
  _check_fit(model, data)
  g = {k: config.get(k, d) for k, d in RUN_DEFAULTS.items()}
  _require(
    _is_int(g['batch_size']) and g['batch_size'] > 0,
    f'config.batch_size={g["batch_size"]!r} must be a positive integer',
  )
  _require(
    _is_int(g['eval_batch_size']) and g['eval_batch_size'] > 0,
    f'config.eval_batch_size={g["eval_batch_size"]!r} must be a positive integer',
  )
  _require(
    _is_number(g['ema_decay']) and 0 <= g['ema_decay'] < 1,
    f'config.ema_decay={g["ema_decay"]!r} must be in [0, 1) (0 = no EMA)',
  )
  k = g['grad_accum_steps']
  _require(_is_int(k) and k >= 1, f'config.grad_accum_steps={k!r} must be an integer >= 1')
  _require(
    g['batch_size'] % k == 0,
    f'config.grad_accum_steps={k} does not divide config.batch_size='
    f'{g["batch_size"]} (each step splits the batch into {k} equal micro-batches)',
  )
  _require(g['lr_scaling'] in LR_SCALINGS, f'config.lr_scaling={g["lr_scaling"]!r}; known: {", ".join(LR_SCALINGS)}')
  base = g['base_batch_size']
  _require(_is_int(base) and base > 0, f'config.base_batch_size={base!r} must be a positive integer')
  for name in (
    'log_every_steps',
    'image_every_steps',
    'eval_every_steps',
    'checkpoint_every_steps',
    'keep_checkpoints',
    'max_consecutive_skipped_steps',
  ):
    _require(_is_int(g[name]) and g[name] > 0, f'config.{name}={g[name]!r} must be a positive integer')
  _require(
    _is_int(g['stop_after_steps']) and g['stop_after_steps'] >= 0,
    f'config.stop_after_steps={g["stop_after_steps"]!r} must be an integer >= 0 (0 = run to the end)',
  )
  if g['profile_steps']:
    parse_profile_steps(g['profile_steps'])
  _require(
    _is_int(g['early_stop_patience']) and g['early_stop_patience'] >= 0,
    f'config.early_stop_patience={g["early_stop_patience"]!r} must be an integer >= 0 (0 = off)',
  )
  _require(
    _is_number(g['early_stop_min_delta']) and g['early_stop_min_delta'] >= 0,
    f'config.early_stop_min_delta={g["early_stop_min_delta"]!r} must be a number >= 0 (dB)',
  )
  order = tuple(config.stage_order)
  _require(len(order) > 0, 'config.stage_order is empty')
  stages = []
  for name in order:
    _require(
      name in config.stages,
      f'config.stage_order names {name!r}, which is not in config.stages (known: {", ".join(config.stages.keys())})',
    )
    stage = _stage_spec(name, config.stages[name], tuple(losses.PIXEL_LOSSES))
    if stage.kind == 'gan':
      registry.discriminator_class(config.discriminator.name)
    stages.append(stage)
  loss = loss_config(config.loss)
  mesh = tuple((str(a), v) for a, v in dict(config.get('mesh', None) or {'data': -1, 'fsdp': 1}).items())
  rules = tuple(tuple(r) for r in (config.get('sharding_rules', ()) or ()))
  d = config.discriminator
  return RunSpec(
    name=str(g['name']),
    seed=int(config.get('seed', 0)),
    model=model,
    discriminator=ModelSpec(name=str(d.name), fields=_module_fields(d)),
    data=data,
    loss=loss,
    stages=tuple(stages),
    batch_size=int(g['batch_size']),
    eval_batch_size=int(g['eval_batch_size']),
    ema_decay=float(g['ema_decay']),
    grad_accum_steps=int(k),
    lr_scaling=str(g['lr_scaling']),
    base_batch_size=int(base),
    lr_multipliers=_plain(config.get('lr_multipliers', None) or {}),
    mesh=mesh,
    sharding_rules=rules,
    log_every_steps=int(g['log_every_steps']),
    image_every_steps=int(g['image_every_steps']),
    eval_every_steps=int(g['eval_every_steps']),
    checkpoint_every_steps=int(g['checkpoint_every_steps']),
    stop_after_steps=int(g['stop_after_steps']),
    max_consecutive_skipped_steps=int(g['max_consecutive_skipped_steps']),
    profile_steps=str(g['profile_steps']),
    keep_checkpoints=int(g['keep_checkpoints']),
    early_stop_patience=int(g['early_stop_patience']),
    early_stop_min_delta=float(g['early_stop_min_delta']),
    config=config,
  )
