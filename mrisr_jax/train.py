"""The training loop: stages of the recipe, sharded steps, validation, checkpoints, logs, report."""
from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions

from mrisr_jax import config_check, losses, registry, report, sharding, steps
from mrisr_jax.checkpoint import BEST_METRIC, Checkpointer, abstract_like
from mrisr_jax.data import pipeline
from mrisr_jax.data.sample import resolve_data_root
from mrisr_jax.evaluation import Validator, log_line
from mrisr_jax.models import vgg as vgg_lib
from mrisr_jax.schedules import make_schedule
from mrisr_jax.train_state import TrainState


class NonFiniteLossError(RuntimeError):
  pass


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  cfg: Any
  start: int  # global step at which the stage begins
  end: int  # global step at which it ends (exclusive)


def stage_plan(config: ml_collections.ConfigDict, steps_per_epoch: int) -> list[Stage]:
  plan, start = [], 0
  for name in config.stage_order:
    cfg = config.stages[name]
    end = start + int(cfg.epochs) * steps_per_epoch
    plan.append(Stage(name, cfg, start, end))
    start = end
  return plan


def stage_schedules(stage: Stage, steps_per_epoch: int) -> dict:
  """The G and D learning-rate schedules of a stage, counted from the stage start."""
  s = stage.cfg
  return {who: make_schedule(s.schedule, lr, steps_per_epoch, s.schedule_epochs, s.schedule_factor)
          for who, lr in (('g', s.lr_g), ('d', s.lr_d))}


def make_optimizers(stage: Stage, steps_per_epoch: int):
  """Separate Adam optimizers for G and D, each with its own schedule."""
  schedules = stage_schedules(stage, steps_per_epoch)
  return tuple(optax.adam(schedules[who], b1=0.9, b2=0.999, eps=1e-8) for who in ('g', 'd'))


def stage_generator(config, stage: Stage):
  alpha = float(stage.cfg.deepnorm_alpha)
  overrides = dict(dropout=float(stage.cfg.dropout))
  if alpha >= 0:
    overrides['deepnorm_alpha'] = alpha
  return registry.build_generator(config.model, **overrides)


def load_perceptual(loss_cfg) -> tuple[Any, Any]:
  """The frozen VGG feature extractor and its params (ImageNet weights, or random for quick runs)."""
  model = vgg_lib.VGGFeatures(arch=loss_cfg.vgg_arch, last_layer=loss_cfg.vgg_last_layer)
  if loss_cfg.vgg_weights:
    try:
      params = vgg_lib.load_vgg_params(loss_cfg.vgg_weights, loss_cfg.vgg_arch, loss_cfg.vgg_last_layer)
    except (OSError, ValueError, ImportError) as e:
      raise vgg_lib.VGGWeightsError(f'config.loss.vgg_weights={loss_cfg.vgg_weights}: {e}') from e
    logging.info('perceptual loss: %s features[:%d] from %s', loss_cfg.vgg_arch,
                 loss_cfg.vgg_last_layer + 1, loss_cfg.vgg_weights)
  elif loss_cfg.allow_random_vgg:
    params = vgg_lib.init_vgg_params(jax.random.PRNGKey(0), loss_cfg.vgg_arch, loss_cfg.vgg_last_layer)
    logging.warning('perceptual loss: RANDOMLY INITIALISED %s features (config.loss.allow_random_vgg=True); '
                    'the GAN stage is not the seed recipe without ImageNet weights (config.loss.vgg_weights)',
                    loss_cfg.vgg_arch)
  else:
    raise vgg_lib.VGGWeightsError(
        'config.loss.vgg_weights is empty: the GAN stage needs ImageNet VGG weights. Download torchvision\'s '
        'vgg19-dcbb9e9d.pth (https://download.pytorch.org/models/vgg19-dcbb9e9d.pth) and pass '
        '--config.loss.vgg_weights=PATH (or a .npz from tools/convert_vgg.py)')
  return model, params


def _apply_vgg(model, params, x):
  return model.apply({'params': params}, x)


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


def _flat_config(config) -> dict:
  out = {}

  def walk(prefix, node):
    for k, v in node.items():
      key = f'{prefix}{k}'
      if isinstance(v, ml_collections.ConfigDict):
        walk(key + '.', v)
      else:
        out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)

  walk('', config)
  return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) every stage of the recipe in `workdir`; returns the final validation summary."""
  config_check.validate(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  is_chief = jax.process_index() == 0

  mesh = sharding.make_mesh(config.mesh)
  dp = sharding.data_parallel_size(mesh)
  if config.batch_size % dp or config.batch_size % jax.process_count():
    raise config_check.ConfigError(
        f'config.batch_size={config.batch_size} is not divisible by the data-parallel size {dp} '
        f'and the process count {jax.process_count()}')
  logging.info('mesh %s over %d devices (%d processes), global batch %d', dict(mesh.shape),
               mesh.size, jax.process_count(), config.batch_size)

  root, is_sample = resolve_data_root(config.data.root)  # the pipeline logs when it is the sample
  scale = config.model.scale
  train_ds = pipeline.make_train_dataset(config.data, scale=scale, global_batch_size=config.batch_size,
                                         seed=config.seed, process_index=jax.process_index(),
                                         process_count=jax.process_count())
  data_iter = iter(train_ds)
  n_slices = pipeline.num_train_slices(config.data)
  steps_per_epoch = max(1, n_slices // config.batch_size)
  plan = stage_plan(config, steps_per_epoch)
  total_steps = plan[-1].end
  logging.info('%d training slices, %d steps per epoch; stages: %s', n_slices, steps_per_epoch,
               ', '.join(f'{s.name} [{s.start}, {s.end})' for s in plan))

  g_model0 = registry.build_generator(config.model)
  d_model = registry.build_discriminator(config)
  lr_side = config.data.hr_patch_size // scale
  first_g_tx, first_d_tx = make_optimizers(plan[0], steps_per_epoch)

  def init_state(rng):
    g_rng, d_rng = jax.random.split(rng)
    g_params = g_model0.init({'params': g_rng}, jnp.zeros((1, lr_side, lr_side, config.model.in_channels)),
                             train=False)['params']
    d_vars = d_model.init({'params': d_rng}, jnp.zeros((1, lr_side * scale, lr_side * scale,
                                                        config.model.out_channels)), train=False)
    return TrainState(step=jnp.zeros((), jnp.int32), g_params=g_params, d_params=d_vars['params'],
                      d_batch_stats=d_vars['batch_stats'], g_opt_state=first_g_tx.init(g_params),
                      d_opt_state=first_d_tx.init(d_vars['params']),
                      rng=jax.random.PRNGKey(config.seed + 1))

  rng = jax.random.PRNGKey(config.seed)
  abstract_state = jax.eval_shape(init_state, rng)
  repl = sharding.replicated(mesh)
  state_sharding = jax.tree.map(lambda _: repl, abstract_state)
  batch_sh = sharding.batch_sharding(mesh)

  ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
  best_psnr = -float('inf')
  latest = ckpt.latest_step()
  if latest is not None:
    state, meta = ckpt.restore(latest, abstract_like(abstract_state, state_sharding), data_iter)
    best_psnr = meta.get('best_val_psnr', best_psnr)
    logging.info('resumed from %s at step %d (stage %s)', ckpt.directory, latest, meta.get('stage'))
  else:
    state = jax.jit(init_state, out_shardings=state_sharding)(rng)
    n_params = sum(x.size for x in jax.tree.leaves(state.g_params))
    logging.info('new run: generator %s with %d parameters', config.model.name, n_params)

  needs_gan = any(s.cfg.kind == 'gan' for s in plan if s.end > int(state.step))
  vgg_model = vgg_params = None
  if needs_gan:
    vgg_model, vgg_params = load_perceptual(config.loss)
    vgg_params = jax.device_put(vgg_params, repl)

  validator = Validator(pipeline.load_validation_volumes(config.data), scale,
                        getattr(g_model0, 'size_multiple', 1), mesh, config.eval_batch_size)
  writer = metric_writers.create_default_writer(str(workdir), just_logging=not is_chief, asynchronous=True)
  if latest is None:
    writer.write_hparams(_flat_config(config))
    if is_chief:
      (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
  progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)

  step = int(state.step)
  stop_at = int(config.stop_after_steps) if config.get('stop_after_steps', 0) else total_steps
  last_eval = None
  pending: list[dict] = []  # device-side metrics since the last log line
  t_log, step_log = time.time(), step

  def flush_metrics(stage: Stage, lr_fns) -> None:
    nonlocal pending, t_log, step_log
    if not pending:
      return
    host = jax.device_get(pending)
    pending = []
    mean = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
    bad = [k for k, v in mean.items() if not np.isfinite(v)]
    if bad:
      raise NonFiniteLossError(
          f'non-finite {", ".join(bad)} at step {step} (stage {stage.name}); training stopped, '
          f'the last good checkpoint in {ckpt.directory} is kept (step {ckpt.latest_step()})')
    lrs = {f'lr_{k}': float(fn(step - 1 - stage.start)) for k, fn in lr_fns.items()}
    writer.write_scalars(step, {f'train/{k}': v for k, v in {**mean, **lrs}.items()})
    now = time.time()
    sps = (step - step_log) / max(now - t_log, 1e-9)
    t_log, step_log = now, step
    terms = ' '.join(f'{k}={v:.4g}' for k, v in mean.items() if not k.startswith('grad'))
    lr_text = ' '.join(f'{k}={v:.2e}' for k, v in lrs.items())
    logging.info('[%s] step %d/%d %s %s | %.2f steps/s, ETA %s', stage.name, step, total_steps, terms,
                 lr_text, sps, _format_eta((total_steps - step) / max(sps, 1e-9)))

  def make_predict(g_model):
    return jax.jit(functools.partial(steps.predict, g_model=g_model),
                   in_shardings=(state_sharding.g_params, batch_sh), out_shardings=repl)

  def write_grid(sample, tag_step: int) -> str:
    grid = report.image_grid(*sample)
    rel = f'images/grid_{tag_step:07d}.png'
    if is_chief:
      (workdir / 'images').mkdir(exist_ok=True)
      report.save_png(workdir / rel, grid)
    writer.write_images(tag_step, {'val/lr_bicubic_sr_hr': grid[None]})
    return rel

  def evaluate(predict) -> dict:
    nonlocal best_psnr
    result = validator.run(predict, state.g_params)
    summ = result['summary']
    scalars = {f'val/{who}_{k}': v for who in ('model', 'bicubic') for k, v in summ[who].items()}
    scalars['val/psnr_gain'] = summ['model']['psnr'] - summ['bicubic']['psnr']
    writer.write_scalars(step, scalars)
    best_psnr = max(best_psnr, summ['model']['psnr'])
    logging.info('step %d: %s', step, log_line(summ))
    return result

  for stage in plan:
    if step >= stage.end or step >= stop_at:
      continue
    g_model = stage_generator(config, stage)
    g_tx, d_tx = make_optimizers(stage, steps_per_epoch)
    s = stage.cfg
    lr_fns = stage_schedules(stage, steps_per_epoch)
    if s.kind != 'gan':
      del lr_fns['d']  # D is not trained in this stage
    if step == stage.start:  # a new stage starts with fresh optimizer states and schedules
      state = jax.jit(lambda st: st.replace(g_opt_state=g_tx.init(st.g_params),
                                            d_opt_state=d_tx.init(st.d_params)),
                      out_shardings=state_sharding, donate_argnums=0)(state)
    if s.kind == 'gan':
      fn = functools.partial(steps.gan_step, g_model=g_model, d_model=d_model,
                             vgg=functools.partial(_apply_vgg, vgg_model), g_tx=g_tx, d_tx=d_tx,
                             loss_cfg=config.loss)
      jitted = jax.jit(fn, in_shardings=(state_sharding, batch_sh, repl),
                       out_shardings=(state_sharding, repl), donate_argnums=0)
      train_step = lambda st, b: jitted(st, b, vgg_params)  # noqa: E731
    else:
      fn = functools.partial(steps.generator_step, g_model=g_model, g_tx=g_tx,
                             pixel_loss=losses.pixel_loss(s.pixel_loss))
      train_step = jax.jit(fn, in_shardings=(state_sharding, batch_sh),
                           out_shardings=(state_sharding, repl), donate_argnums=0)
    predict = make_predict(g_model)
    logging.info('stage %s (%s): steps [%d, %d), alpha=%s dropout=%s', stage.name, s.kind, stage.start,
                 stage.end, s.deepnorm_alpha, s.dropout)

    end = min(stage.end, stop_at)
    while step < end:
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        batch = sharding.global_batch(next(data_iter), batch_sh)
        state, metrics = train_step(state, batch)
      step += 1
      pending.append(metrics)
      progress(step)
      last = step == end
      if step % config.log_every_steps == 0 or last:
        flush_metrics(stage, lr_fns)
      if step % config.eval_every_steps == 0 or last:
        last_eval = evaluate(predict)
        last_eval['step'] = step
      if step % config.image_every_steps == 0 or last:
        write_grid(validator.sample(predict, state.g_params), step)
      if step % config.checkpoint_every_steps == 0 or last:
        flush_metrics(stage, lr_fns)  # never checkpoint a state whose losses are not finite
        val = last_eval['summary']['model']['psnr'] if last_eval and last_eval.get('step') == step else None
        meta = {'stage': stage.name, 'step': step, 'best_val_psnr': best_psnr,
                'config': json.loads(config.to_json_best_effort())}
        ckpt.save(step, state, meta, data_iter, metrics={BEST_METRIC: val} if val is not None else None)
    writer.flush()

  ckpt.wait()
  if last_eval is None:  # resumed a finished run: evaluate what it holds
    last_eval = evaluate(make_predict(stage_generator(config, plan[-1])))
  if step >= total_steps and is_chief:
    grid_rel = write_grid(last_eval['sample'], step)
    paths = report.write_report(
        workdir / 'report', title=f'{config.name}: validation at step {step}',
        summary=last_eval['summary'], per_volume=last_eval['per_volume'],
        images=[str(pathlib.Path('..') / grid_rel)],
        notes=[f'data: {"embedded sample (MNI ICBM152 2009a T1)" if is_sample else root}',
               f'best validation PSNR during the run: {best_psnr:.3f} dB',
               f'stages: {", ".join(s.name for s in plan)}; {total_steps} steps, global batch {config.batch_size}'] +
              (['perceptual loss used RANDOM VGG features (quick config)'] if config.loss.allow_random_vgg
               and not config.loss.vgg_weights else []))
    logging.info('report written to %s', paths.get('html', workdir / 'report'))
  writer.flush()
  writer.close()
  ckpt.close()
  return last_eval['summary']

