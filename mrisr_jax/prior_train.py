"""TransMRSR stage 1: training the StyleSwin generative prior on HR slices (the loop around
`prior_steps.prior_step`).

The data are the HR slices of the training split (all three planes of NIfTI volumes, the stored
planes of other formats), zero-padded to a square (the extra pixel top/left, as the public code's
Crop), reduced to `config.prior.size` by area averaging when larger and zero-padded when smaller, flipped
left-right at random, in the prior's image space (`prior_steps.to_prior_space`). The loop shares
the SR trainer's parts: the mesh (batch over the data axis, the networks replicated), the orbax
Checkpointer (resume from the newest good step; a failure never removes the last good one), the
preemption guard and the workdir lock. It ends with a grid of EMA samples in WORKDIR/images.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time

import grain
import jax
import ml_collections
import numpy as np
from absl import logging

from mrisr_jax import compile_options, prior_steps, report, sharding, workdir_lock
from mrisr_jax.checkpoint import Checkpointer, abstract_like, workdir_path
from mrisr_jax.data import degrade, pipeline, splits
from mrisr_jax.errors import ConfigError
from mrisr_jax.preemption import Preempted, PreemptionGuard

STAGE = 'prior'


def _pad_square(x: np.ndarray, side: int) -> np.ndarray:
  h, w = x.shape
  top, left = (side - h + 1) // 2, (side - w + 1) // 2
  out = np.zeros((side, side), np.float32)
  out[top : top + h, left : left + w] = x
  return out


def prior_image(x: np.ndarray, size: int) -> np.ndarray:
  """A slice (H, W) in [0, 1] -> (size, size): zero-padded to a square, then area-reduced to `size`
  (or zero-padded to it when the square is smaller)."""
  side = max(x.shape)
  if side > size:
    factor = -(-side // size)
    square = _pad_square(x, size * factor)
    return degrade.area_downsample(square, factor).astype(np.float32)
  return _pad_square(x, size)


class PriorImage(grain.transforms.RandomMap):
  def __init__(self, size: int, flips: bool):
    self.size, self.flips = int(size), bool(flips)

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    image = prior_image(np.asarray(element['image'], np.float32), self.size)
    if self.flips and rng.random() < 0.5:
      image = image[:, ::-1]
    return {'hr': np.ascontiguousarray(image)[..., None]}


class _Concat:
  """Several slice sources as one random-access source (the planes of a volume set)."""

  def __init__(self, sources):
    self.sources = list(sources)
    self.starts = np.cumsum([0] + [len(s) for s in self.sources])

  def __len__(self) -> int:
    return int(self.starts[-1])

  def __getitem__(self, i: int) -> dict:
    k = int(np.searchsorted(self.starts, i, side='right')) - 1
    return self.sources[k][int(i - self.starts[k])]


def prior_source(data, planes) -> tuple[_Concat, str]:
  """The training split's slices along each of `planes` (NIfTI; other formats have their stored planes)."""
  data = pipeline.data_spec(data)
  fmt = splits.split_files(data, 'train')[0]
  axes = tuple(planes) if fmt == 'nifti' else (data.slice_axis,)
  sources = [splits.make_source(dataclasses.replace(data, slice_axis=int(a)), 'train')[0] for a in axes]
  return _Concat(sources), f'{fmt}, planes {axes}'


def make_dataset(data, p: ml_collections.ConfigDict, seed: int, start: int):
  source, desc = prior_source(data, p.planes)
  local = p.batch_size // jax.process_count()
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
  ds = ds.random_map(PriorImage(p.size, p.flips), seed=seed + 1)
  ds = pipeline.HostShare(
    ds, start=start, local_batch=local, process_index=jax.process_index(), process_count=jax.process_count()
  )
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)).batch(local, drop_remainder=True)
  logging.info('prior data: %d HR slices (%s) -> %dx%d, local batch %d', len(source), desc, p.size, p.size, local)
  return iter(it), len(source)


def build_models(p: ml_collections.ConfigDict):
  from mrisr_jax.models.styleswin import StyleSwinGenerator
  from mrisr_jax.models.styleswin_d import StyleSwinDiscriminator

  g = StyleSwinGenerator(
    size=p.size,
    style_dim=p.style_dim,
    n_mlp=p.n_mlp,
    channel_multiplier=p.channel_multiplier,
    channel_base=p.channel_base,
    lr_mlp=p.lr_mlp,
    out_channels=p.channels,
  )
  d = StyleSwinDiscriminator(
    size=p.size, channel_multiplier=p.d_channel_multiplier, channel_base=p.d_channel_base, in_channels=p.channels
  )
  return g, d


def check(p: ml_collections.ConfigDict) -> None:
  size = int(p.size)
  if size < 8 or size & (size - 1):
    raise ConfigError(f'config.prior.size={p.size!r} must be a power of 2, at least 8')
  if p.channels not in (1, 3):
    raise ConfigError(f'config.prior.channels={p.channels!r} must be 1 or 3 (the ImageNet-normalised parity mode)')
  if p.batch_size % jax.process_count() or p.batch_size < 1:
    raise ConfigError(f'config.prior.batch_size={p.batch_size!r} must be a positive multiple of the process count')
  if p.steps < 1:
    raise ConfigError(f'config.prior.steps={p.steps!r} must be a positive integer')


def state_fns(p: ml_collections.ConfigDict):
  """(G, D, G optimizer, D optimizer, init(rng) -> state) of a stage-1 run."""
  g, d = build_models(p)
  g_tx, d_tx = prior_steps.make_optimizers(p.lr, p.r1_every, p.d_clip)
  init = functools.partial(
    prior_steps.init_state,
    g_model=g,
    d_model=d,
    g_tx=g_tx,
    d_tx=d_tx,
    size=p.size,
    channels=p.channels,
    style_dim=p.style_dim,
  )
  return g, d, g_tx, d_tx, init


def abstract_state(p: ml_collections.ConfigDict, seed: int = 0):
  return jax.eval_shape(state_fns(p)[-1], jax.random.PRNGKey(seed))


def train_prior(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the prior in `workdir`; returns the final metrics."""
  p = config.prior
  check(p)
  path = workdir_path(workdir)
  if jax.process_index() == 0:
    workdir_lock.prepare(path)
  with PreemptionGuard() as guard, workdir_lock.WorkdirLock(path, enabled=jax.process_index() == 0):
    return _train(config, path, guard)


def _train(config, workdir, guard) -> dict:
  p = config.prior
  mesh = sharding.make_mesh(dict(config.mesh))
  repl, batch_sharding = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  g, d, g_tx, d_tx, init = state_fns(p)
  abstract = jax.eval_shape(init, jax.random.PRNGKey(config.seed))
  state_sharding = jax.tree.map(lambda _: repl, abstract)
  ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
  restored = ckpt.restore_latest(abstract_like(abstract, state_sharding))
  if restored is not None:
    step, state, meta = restored
    position = int(meta.get('data_position', step * p.batch_size))
    logging.info('prior: resumed from %s at step %d', ckpt.directory, step)
  else:
    logging.info('prior: new StyleSwin G/D at %d px (initialiser compiles first)', p.size)
    state = jax.jit(init, out_shardings=state_sharding)(jax.random.PRNGKey(config.seed))
    step, position = 0, 0
    n_g = sum(x.size for x in jax.tree.leaves(state.g_params))
    n_d = sum(x.size for x in jax.tree.leaves(state.d_params))
    logging.info('prior: generator %d parameters, discriminator %d', n_g, n_d)
  data_iter, _ = make_dataset(config.data, p, config.seed, position)
  hp = prior_steps.PriorHparams(
    style_dim=p.style_dim, r1_gamma=p.r1_gamma, r1_every=p.r1_every, d_clip=p.d_clip, ema_decay=p.ema_decay
  )
  fn = functools.partial(prior_steps.prior_step, g_model=g, d_model=d, g_tx=g_tx, d_tx=d_tx, hp=hp)
  train_step = compile_options.jit(
    fn, in_shardings=(state_sharding, batch_sharding), out_shardings=(state_sharding, repl), donate_argnums=0
  )
  to_space = jax.jit(functools.partial(prior_steps.to_prior_space, channels=p.channels))
  metrics, t0, last = {}, time.time(), {}
  while step < p.steps:
    batch = sharding.global_batch(pipeline.next_batch(data_iter), batch_sharding)
    batch = {'hr': to_space(batch['hr'])}
    state, m = train_step(state, batch)
    step += 1
    position += p.batch_size
    for k, v in m.items():
      metrics.setdefault(k, []).append(v)
    end = step == p.steps
    if step % p.log_every_steps == 0 or end:
      last = {k: float(np.mean(jax.device_get(v))) for k, v in metrics.items()}
      if not np.isfinite(last['loss_g']) or not np.isfinite(last['loss_d']):
        raise FloatingPointError(f'prior: non-finite loss at step {step}: {last}; the last checkpoint is kept')
      rate = p.log_every_steps / max(time.time() - t0, 1e-9) if step % p.log_every_steps == 0 else float('nan')
      logging.info(
        'prior step %d/%d: %s (%.2f steps/s)', step, p.steps, ', '.join(f'{k}={v:.4g}' for k, v in last.items()), rate
      )
      metrics, t0 = {}, time.time()
    meta = {'stage': STAGE, 'data_position': position, 'config': json.loads(config.to_json_best_effort())}
    if guard.reached(step):
      ckpt.save(step, state, meta)
      ckpt.wait()
      logging.warning('preempted: saved prior step %d in %s; run the same command to resume', step, ckpt.directory)
      raise Preempted(step, ckpt.directory)
    if step % p.checkpoint_every_steps == 0 or end:
      ckpt.save(step, state, meta)
  ckpt.wait()
  ckpt.close()
  if jax.process_index() == 0:
    write_samples(g, state.g_ema_params, workdir, step, p.style_dim)
  return last


def write_samples(g_model, g_ema_params, workdir, step: int, style_dim: int, n: int = 8) -> str:
  """A row of EMA samples (fixed latents) in WORKDIR/images/prior_samples_STEP.png."""
  z = jax.random.normal(jax.random.PRNGKey(1234), (n, style_dim))
  imgs = np.asarray(jax.jit(functools.partial(prior_steps.sample, g_model=g_model))(g_ema_params, z))[..., 0]
  row = np.concatenate(list(imgs), axis=1)
  path = report.save_png(str(workdir / 'images' / f'prior_samples_{step:07d}.png'), np.clip(row, 0.0, 1.0))
  logging.info('prior: EMA samples in %s', path)
  return path


def restore_ema(p: ml_collections.ConfigDict, workdir, seed: int = 0) -> tuple[int, dict]:
  """(step, EMA generator params) of the newest good checkpoint of a prior run in `workdir`."""
  if not (workdir_path(workdir) / 'checkpoints').is_dir():  # before orbax, which would create the folder
    raise ConfigError(f'{workdir}: no prior checkpoint to restore (train it with stage=prior first)')
  ckpt = Checkpointer(workdir)
  try:
    abstract = abstract_state(p, seed)
    restored = ckpt.restore_latest(
      abstract_like(abstract, jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract))
    )
  finally:
    ckpt.close()
  if restored is None:
    raise ConfigError(f'{workdir}: no prior checkpoint to restore (train it with stage=prior first)')
  step, state, _ = restored
  return step, jax.device_get(state.g_ema_params)
