"""The training loop: stages of the recipe, sharded steps, validation, checkpoints, logs, report."""
from __future__ import annotations

import functools
import json
import pathlib
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from mrisr_jax import config_check, recipe, registry, report, sharding, steps
from mrisr_jax.checkpoint import BEST_METRIC, Checkpointer, abstract_like
from mrisr_jax.data import pipeline
from mrisr_jax.data.sample import resolve_data_root
from mrisr_jax.evaluation import Validator, log_line
from mrisr_jax.errors import NonFiniteLossError  # noqa: F401  (also raised as train.NonFiniteLossError)
from mrisr_jax.recipe import Stage


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


def _plot_curves(workdir: pathlib.Path) -> str | None:
  """report/curves.png from the run's event files; a plotting failure never fails the run."""
  from mrisr_jax import run_curves
  try:
    return run_curves.plot_run(workdir)
  except (run_curves.RunCurvesError, OSError, ImportError) as e:
    logging.warning('training curves not plotted: %s', e)
    return None


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

  g_model0 = registry.build_generator(config.model)
  d_model = registry.build_discriminator(config)
  root, is_sample = resolve_data_root(config.data.root)  # the pipeline logs when it is the sample
  scale = config.model.scale
  train_ds = pipeline.make_train_dataset(config.data, scale=scale, global_batch_size=config.batch_size,
                                         seed=config.seed, process_index=jax.process_index(),
                                         process_count=jax.process_count(),
                                         upsampled_input=g_model0.upsampled_input)
  data_iter = iter(train_ds)
  n_slices = pipeline.num_train_slices(config.data, scale)
  steps_per_epoch = max(1, n_slices // config.batch_size)
  plan = recipe.stage_plan(config, steps_per_epoch)
  total_steps = plan[-1].end
  logging.info('%d training slices, %d steps per epoch; stages: %s', n_slices, steps_per_epoch,
               ', '.join(f'{s.name} [{s.start}, {s.end})' for s in plan))

  vgg = vgg_params = None
  if recipe.needs_vgg(config, plan):  # before anything slow: missing VGG weights fail at once
    vgg, vgg_params = recipe.load_perceptual(config.loss)
  init_state = recipe.init_state_fn(config, g_model0, d_model, *recipe.make_optimizers(config, plan[0], steps_per_epoch))

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
    logging.info('resumed from %s at step %d (stage %s)%s', ckpt.directory, latest, meta.get('stage'),
                 f" imported from {meta['imported_from']}" if 'imported_from' in meta else '')
  else:
    state = jax.jit(init_state, out_shardings=state_sharding)(rng)
    n_params = sum(x.size for x in jax.tree.leaves(state.g_params))
    logging.info('new run: generator %s with %d parameters', config.model.name, n_params)

  if vgg is not None:
    vgg_params = jax.device_put(vgg_params, repl)

  validator = Validator(pipeline.load_validation_volumes(config.data, scale, config.seed), scale, g_model0.size_multiple, mesh,
                        config.eval_batch_size, degradation=tuple(config.data.degradation),
                        upsampled_input=g_model0.upsampled_input)
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
    g_vars_sharding = steps.generator_variables(state_sharding)
    return jax.jit(functools.partial(steps.predict, g_model=g_model),
                   in_shardings=(g_vars_sharding, batch_sh), out_shardings=repl)

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
    result = validator.run(predict, steps.generator_variables(state))
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
    g_model = recipe.stage_generator(config, stage)
    g_tx, d_tx = recipe.make_optimizers(config, stage, steps_per_epoch)
    s = stage.cfg
    lr_fns = recipe.stage_schedules(stage, steps_per_epoch)
    if s.kind != 'gan':
      del lr_fns['d']  # D is not trained in this stage
    if step == stage.start:  # a new stage starts with fresh optimizer states and schedules
      state = jax.jit(lambda st: st.replace(g_opt_state=g_tx.init(st.g_params),
                                            d_opt_state=d_tx.init(st.d_params)),
                      out_shardings=state_sharding, donate_argnums=0)(state)
    fn = recipe.stage_step(config, stage, g_model, d_model, g_tx, d_tx, vgg)
    jitted = jax.jit(fn, in_shardings=(state_sharding, batch_sh, repl),
                     out_shardings=(state_sharding, repl), donate_argnums=0)
    train_step = lambda st, b: jitted(st, b, vgg_params)  # noqa: E731
    predict = make_predict(g_model)
    logging.info('stage %s (%s): steps [%d, %d), alpha=%s dropout=%s', stage.name, s.kind, stage.start,
                 stage.end, s.deepnorm_alpha, s.dropout)

    end = min(stage.end, stop_at)
    while step < end:
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        batch = sharding.global_batch(pipeline.next_batch(data_iter), batch_sh)
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
        write_grid(validator.sample(predict, steps.generator_variables(state)), step)
      if step % config.checkpoint_every_steps == 0 or last:
        flush_metrics(stage, lr_fns)  # never checkpoint a state whose losses are not finite
        val = last_eval['summary']['model']['psnr'] if last_eval and last_eval.get('step') == step else None
        meta = {'stage': stage.name, 'step': step, 'best_val_psnr': best_psnr,
                'config': json.loads(config.to_json_best_effort())}
        ckpt.save(step, state, meta, data_iter, metrics={BEST_METRIC: val} if val is not None else None)
    writer.flush()

  ckpt.wait()
  if last_eval is None:  # resumed a finished run: evaluate what it holds
    last_eval = evaluate(make_predict(recipe.stage_generator(config, plan[-1])))
  if step >= total_steps and is_chief:
    grid_rel = write_grid(last_eval['sample'], step)
    writer.flush()
    curves = _plot_curves(workdir)
    paths = report.write_report(
        workdir / 'report', title=f'{config.name}: validation at step {step}',
        summary=last_eval['summary'], per_volume=last_eval['per_volume'],
        images=[str(pathlib.Path('..') / grid_rel)] + ([pathlib.Path(curves).name] if curves else []),
        notes=[f'data: {"embedded sample (MNI ICBM152 2009a T1)" if is_sample else root}',
               f'best validation PSNR during the run: {best_psnr:.3f} dB',
               f'stages: {", ".join(s.name for s in plan)}; {total_steps} steps, global batch {config.batch_size}'] +
              (['perceptual loss used RANDOM VGG features (quick config)'] if vgg is not None
               and config.loss.allow_random_vgg and not config.loss.vgg_weights else []))
    report.link_report(workdir, 'validation report', paths['html'])
    if curves:
      report.link_report(workdir, 'training curves', curves)
    logging.info('report written to %s (linked from %s)', paths['html'], workdir / 'index.html')
  writer.flush()
  writer.close()
  ckpt.close()
  return last_eval['summary']

