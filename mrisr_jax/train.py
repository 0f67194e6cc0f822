"""The training loop: stages of the recipe, sharded steps, validation, checkpoints, logs, report.

`train_and_evaluate` reads as the run: `setup` (mesh, models, restore or init, data from the saved
position), `compile_stages` (every remaining stage's step, compiled ahead of time with its memory
report), `run_stages` (the loop, under a preemption guard), then `write_run_report`. The
checkpoint policy (`CheckpointPolicy`) decides when to save: every `checkpoint_every_steps`, at each
stage end, and at the step all processes agree on after a SIGTERM/SIGINT.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import shutil
import tempfile
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from mrisr_jax import compile_options, recipe, registry, report, resume_guard, sharding, spec, steps, workdir_lock
from mrisr_jax.checkpoint import BEST_METRIC, Checkpointer, abstract_like, workdir_path
from mrisr_jax.data import pipeline, splits
from mrisr_jax.data.sample import resolve_data_root
from mrisr_jax.errors import ConfigError
from mrisr_jax.errors import NonFiniteLossError  # noqa: F401  (also raised as train.NonFiniteLossError)
from mrisr_jax.validation import Validator, log_line
from mrisr_jax.preemption import Preempted, PreemptionGuard
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


def _is_local(path: epath.Path) -> bool:
  return '://' not in str(path)


@dataclasses.dataclass
class Run:
  """What `setup` builds once and the loop, the validation and the report share."""

  config: spec.RunSpec
  workdir: epath.Path
  files: pathlib.Path  # local folder for images and the report (the workdir, or a staging copy)
  mesh: Any
  plan: list[Stage]
  steps_per_epoch: int
  total_steps: int
  state: Any
  state_sharding: Any
  batch_sharding: Any
  ckpt: Checkpointer
  data_iter: Any
  data_position: int  # samples of the global stream consumed so far (all processes)
  first_batch: dict  # the next batch, drawn early for its shapes
  d_model: Any
  vgg: Callable | None
  vgg_params: Any
  validator: Validator
  writer: Any
  best_psnr: float
  resumed: bool
  is_sample: bool
  data_root: Any
  grid_orientation: str = 'stored'  # report.slice_orientation of the data format (NIfTI: radiological)
  # early stopping (config.early_stop_patience): the PSNR to beat, validations in a row that did not
  early_best: float = -float('inf')
  stale_evals: int = 0
  stopped_early: bool = False

  @property
  def is_chief(self) -> bool:
    return jax.process_index() == 0

  @property
  def step(self) -> int:
    return int(self.state.step)


@dataclasses.dataclass
class StageStep:
  """A stage's train step jitted on the mesh, as training runs it; benchmarks and parity checks use it
  too, so they measure and compare exactly this."""

  stage: Stage
  g_model: Any
  g_tx: Any
  d_tx: Any
  step: Callable  # jitted (state, batch, vgg_params) -> (state, metrics); the state is donated
  lr_fns: dict  # 'g' (and 'd' in a gan stage): step within the stage -> learning rate


def state_layout(config: spec.RunSpec, mesh, init_state: Callable) -> tuple[Any, Any]:
  """(abstract TrainState, its shardings on `mesh`) for `init_state(rng)`: kernels and their Adam
  states over fsdp as the rules say, the rest replicated."""
  abstract_state = jax.eval_shape(init_state, jax.random.PRNGKey(config.seed))
  return abstract_state, sharding.state_shardings(mesh, abstract_state, sharding.rules_for(config))


def jit_stage_step(
  config: spec.RunSpec, stage: Stage, steps_per_epoch: int, mesh, state_sharding, d_model, vgg: Callable | None
) -> StageStep:
  """The stage's generator, optimizers and pure step, jitted with the state and batch laid out on `mesh`."""
  g_model = recipe.stage_generator(config, stage)
  g_tx, d_tx = recipe.make_optimizers(config, stage, steps_per_epoch)
  lr_fns = recipe.stage_schedules(stage, steps_per_epoch)
  if stage.spec.kind != 'gan':
    del lr_fns['d']  # D is not trained in this stage
  repl = sharding.replicated(mesh)
  fn = recipe.stage_step(config, stage, g_model, d_model, g_tx, d_tx, vgg)
  step = compile_options.jit(
    fn,
    in_shardings=(state_sharding, sharding.batch_sharding(mesh), repl),
    out_shardings=(state_sharding, repl),
    donate_argnums=0,
  )
  return StageStep(stage=stage, g_model=g_model, g_tx=g_tx, d_tx=d_tx, step=step, lr_fns=lr_fns)


@dataclasses.dataclass
class CompiledStage:
  stage: Stage
  train_step: Callable  # (state, batch) -> (state, metrics)
  init_optimizers: Callable  # state -> state with fresh optimizer states
  predict: Callable
  lr_fns: dict
  flops: float = 0.0  # of one compiled step (XLA's cost analysis): scales the ETA of stages not yet run


def setup(config: ml_collections.ConfigDict | spec.RunSpec, workdir: str, allow_config_change: bool = False) -> Run:
  """Mesh, models, the train state (restored from the newest good checkpoint, or fresh) and the
  input pipeline from the state's data position. Everything the user gave (config values, data
  roots, splits, files, the workdir's saved config) is checked before any model is built."""
  config = spec.resolve(config)  # the one place a run's config is checked; below, only the RunSpec
  if all(s.epochs == 0 for s in config.stages):
    raise ConfigError(
      f'config.stages: every stage has 0 epochs ({", ".join(f"{s.name}=0" for s in config.stages)}); '
      'nothing would be trained, so no run and no report'
    )
  workdir = workdir_path(workdir)
  mesh = sharding.make_mesh(dict(config.mesh))
  dp = sharding.data_parallel_size(mesh)
  k = config.grad_accum_steps
  # each device's rows split evenly over the k micro-batches, so no rows move between devices
  if config.batch_size % (dp * k) or config.batch_size % jax.process_count():
    raise ConfigError(
      f'config.batch_size={config.batch_size} is not divisible by the data-parallel size {dp} times '
      f'config.grad_accum_steps={k} and by the process count {jax.process_count()}'
    )
  logging.info(
    'mesh %s over %d devices (%d processes), global batch %d',
    dict(mesh.shape),
    mesh.size,
    jax.process_count(),
    config.batch_size,
  )

  # the data first: a missing folder or a bad file stops the run before minutes of compilation
  root, is_sample = resolve_data_root(config.data.root)  # the pipeline logs when it is the sample
  scale = config.scale
  train_split = pipeline.train_source(config.data, scale)  # read once; the pipeline below reuses it
  val_volumes = pipeline.load_validation_volumes(config.data, scale, config.seed)
  n_slices = len(train_split[0])
  steps_per_epoch, plan = recipe.plan_run(config, n_slices)

  ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
  saved = ckpt.newest_meta()
  if saved is not None:
    _check_resume(config, workdir, saved, steps_per_epoch, allow_config_change)

  vgg = vgg_params = None
  if recipe.needs_vgg(config, plan):  # before anything slow: missing VGG weights fail at once
    vgg, vgg_params = recipe.load_perceptual(config.loss, config.model.dtype)
  d_model = registry.build_discriminator(config)
  init_state = recipe.init_state_fn(
    config, registry.build_generator(config.model), d_model, *recipe.make_optimizers(config, plan[0], steps_per_epoch)
  )
  rng = jax.random.PRNGKey(config.seed)
  abstract_state, state_sharding = state_layout(config, mesh, init_state)
  repl = sharding.replicated(mesh)

  best_psnr = -float('inf')
  early = {}
  restored = ckpt.restore_latest(abstract_like(abstract_state, state_sharding))
  if restored is not None:
    step, state, meta = restored
    best_psnr = meta.get('best_val_psnr', best_psnr)
    early = meta.get('early_stop', {})
    plan = _resumed_plan(config, plan, meta, step, steps_per_epoch)
    # checkpoints without a position (imported weights, older runs) continue where an
    # uninterrupted run of this config would be
    data_position = int(meta.get('data_position', step * config.batch_size))
    logging.info(
      'resumed from %s at step %d (stage %s), data position %d%s',
      ckpt.directory,
      step,
      meta.get('stage'),
      data_position,
      f' imported from {meta["imported_from"]}' if 'imported_from' in meta else '',
    )
  else:
    logging.info('new run: initialising %s (its initialiser compiles first)', config.model.name)
    state = jax.jit(init_state, out_shardings=state_sharding)(rng)
    if config.model.name == 'transmrsr' and config.config is not None and 'transmrsr' in config.config:
      from mrisr_jax import transmrsr_run  # the decoder and centroids come from the stage-1 prior

      state = transmrsr_run.init_from_prior(config.config, state, state_sharding)
    data_position = 0
    n_params = sum(x.size for x in jax.tree.leaves(state.g_params))
    logging.info('new run: generator %s with %d parameters', config.model.name, n_params)
  logging.info(
    '%d training slices, %d steps per epoch; stages: %s',
    n_slices,
    steps_per_epoch,
    ', '.join(f'{s.name} [{s.start}, {s.end})' for s in plan),
  )

  if vgg is not None:
    vgg_params = jax.device_put(vgg_params, repl)
  dataset, _ = pipeline.make_train_dataset(
    config.data,
    scale=scale,
    global_batch_size=config.batch_size,
    seed=config.seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    upsampled_input=config.model.upsampled_input,
    start=data_position,
    split=train_split,
  )
  data_iter = iter(dataset)
  first_batch = pipeline.next_batch(data_iter)

  validator = Validator(
    val_volumes,
    scale,
    config.model.size_multiple,
    mesh,
    config.eval_batch_size,
    degradation=config.data.degradation,
    upsampled_input=config.model.upsampled_input,
    fixed_size=config.model.fixed_size,
  )
  writer = _make_writer(workdir)
  files = pathlib.Path(str(workdir)) if _is_local(workdir) else pathlib.Path(tempfile.mkdtemp(prefix='mrisr_'))
  if restored is None and config.config is not None:
    writer.write_hparams(_flat_config(config.config))
    if jax.process_index() == 0:
      (workdir / 'config.json').write_text(config.config.to_json_best_effort(indent=2))
  return Run(
    config=config,
    workdir=workdir,
    files=files,
    mesh=mesh,
    plan=plan,
    steps_per_epoch=steps_per_epoch,
    total_steps=plan[-1].end,
    state=state,
    state_sharding=state_sharding,
    batch_sharding=sharding.batch_sharding(mesh),
    ckpt=ckpt,
    data_iter=data_iter,
    data_position=data_position,
    first_batch=first_batch,
    d_model=d_model,
    vgg=vgg,
    vgg_params=vgg_params,
    validator=validator,
    writer=writer,
    best_psnr=best_psnr,
    resumed=restored is not None,
    early_best=float(early.get('best', -float('inf'))),
    stale_evals=int(early.get('stale', 0)),
    stopped_early=bool(early.get('stopped', False)),
    is_sample=is_sample,
    data_root=root,
    grid_orientation=report.slice_orientation(splits.split_files(config.data, 'val')[0]),
  )


def _make_writer(workdir: epath.Path):
  """TensorBoard event files on process 0 (the console lines are MetricsLog's, written once).
  Imported here: clu's writers import TensorFlow (seconds), which a run that stops on bad data or a
  bad config before this point never needs."""
  from clu import metric_writers

  if jax.process_index() != 0:
    return metric_writers.MultiWriter([])
  return metric_writers.AsyncWriter(metric_writers.SummaryWriter(str(workdir)))


def _saved_config(meta: dict, workdir: epath.Path) -> dict | None:
  if isinstance(meta.get('config'), dict):
    return meta['config']
  path = workdir / 'config.json'
  try:
    return json.loads(path.read_text()) if path.exists() else None
  except ValueError:
    return None


def _saved_plan(meta: dict, saved_config: dict | None, steps_per_epoch: int) -> list[list] | None:
  """The checkpoint's stage plan; older checkpoints have none: their config's plan at today's epoch length."""
  if meta.get('plan'):
    return meta['plan']
  if saved_config is None:
    return None
  try:
    return resume_guard.plan_meta(
      recipe.stage_plan(spec.resolve(ml_collections.ConfigDict(saved_config)), steps_per_epoch)
    )
  except ConfigError:
    return None


def _check_resume(config: spec.RunSpec, workdir, saved: tuple[int, dict], steps_per_epoch: int, allow: bool) -> None:
  """Stops (one line) when this config would give the saved state another meaning; logs what changed."""
  step, meta = saved
  saved_config = _saved_config(meta, workdir)
  plan = _saved_plan(meta, saved_config, steps_per_epoch)
  if saved_config is None or plan is None or config.config is None:
    return
  diff = resume_guard.check(saved_config, _config_json(config), plan, meta.get('stage'), step, steps_per_epoch)
  for line in diff.allowed:
    logging.info('config changed since step %d: %s', step, line)
  if diff.refused and not allow:
    raise resume_guard.ResumeConfigError(resume_guard.refusal_message(workdir, step, diff.refused))
  for line in diff.refused:
    logging.warning('config changed since step %d (allowed by --allow_config_change): %s', step, line)


def _resumed_plan(config: spec.RunSpec, plan: list[Stage], meta: dict, step: int, steps_per_epoch: int) -> list[Stage]:
  saved_plan = _saved_plan(meta, meta.get('config'), steps_per_epoch)
  if not saved_plan:
    return plan
  return resume_guard.resume_plan(plan, saved_plan, meta.get('stage'), step, steps_per_epoch)


def _make_predict(run: Run, g_model) -> Callable:
  g_vars_sharding = steps.generator_variables(run.state_sharding)
  return compile_options.jit(
    functools.partial(steps.predict, g_model=g_model),
    in_shardings=(g_vars_sharding, run.batch_sharding),
    out_shardings=sharding.replicated(run.mesh),
  )


def compile_stage(run: Run, stage: Stage) -> CompiledStage:
  """The stage's train step compiled ahead of time on the mesh; logs its memory per device."""
  config = run.config
  parts = jit_stage_step(config, stage, run.steps_per_epoch, run.mesh, run.state_sharding, run.d_model, run.vgg)
  g_model, g_tx, d_tx = parts.g_model, parts.g_tx, parts.d_tx
  abstract_state = abstract_like(run.state, run.state_sharding)
  abstract_batch = {
    k: jax.ShapeDtypeStruct((config.batch_size, *v.shape[1:]), v.dtype, sharding=run.batch_sharding)
    for k, v in run.first_batch.items()
  }
  logging.info("compiling stage %s's train step (%s)", stage.name, _compile_hint(run, stage))
  t0 = time.time()
  compiled = parts.step.lower(abstract_state, abstract_batch, run.vgg_params).compile()
  seconds = time.time() - t0
  _record_compile_time(run, stage, seconds)
  logging.info('stage %s: step compiled in %.1f s; %s', stage.name, seconds, sharding.memory_report(compiled))
  vgg_params = run.vgg_params
  init_optimizers = jax.jit(
    lambda st: st.replace(g_opt_state=g_tx.init(st.g_params), d_opt_state=d_tx.init(st.d_params)),
    out_shardings=run.state_sharding,
    donate_argnums=0,
  )
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return CompiledStage(
    stage=stage,
    flops=float((cost or {}).get('flops', 0.0)),
    train_step=lambda st, b: compiled(st, b, vgg_params),
    init_optimizers=init_optimizers,
    predict=_make_predict(run, g_model),
    lr_fns=parts.lr_fns,
  )


_COMPILE_TIMES = 'compile_times.json'  # in the workdir: the last measured compile time of each stage


def _compile_hint(run: Run, stage: Stage) -> str:
  try:
    seconds = json.loads((run.files / _COMPILE_TIMES).read_text())[stage.name]
    return (
      f'it took {seconds:.0f} s last time on {jax.default_backend().upper()}; the compilation cache may make it faster'
    )
  except (OSError, ValueError, KeyError, TypeError):
    return f'a first compile can take minutes on {jax.default_backend().upper()}'


def _record_compile_time(run: Run, stage: Stage, seconds: float) -> None:
  if not run.is_chief:
    return
  path = run.files / _COMPILE_TIMES
  try:
    times = json.loads(path.read_text()) if path.exists() else {}
    times[stage.name] = round(seconds, 1)
    path.write_text(json.dumps(times, indent=1))
  except (OSError, ValueError):
    pass  # a hint only


def compile_stages(run: Run, stop_at: int) -> list[CompiledStage]:
  """Every stage the run still has to train, compiled before the first step (an out-of-memory
  stage fails now, not after days of the stages before it)."""
  return [compile_stage(run, s) for s in run.plan if s.start < s.end and run.step < s.end and s.start < stop_at]


class Eta:
  """Time left in the run: each stage's measured seconds per training step (evaluations, images and
  checkpoints excluded); a stage that has not run yet is scaled from a measured one by the FLOPs of
  its compiled step; plus the evaluations still due, at their measured duration."""

  def __init__(self, plan: list[Stage], flops: dict[str, float], stop_at: int, eval_every: int):
    self.plan, self.flops, self.stop_at, self.eval_every = plan, flops, stop_at, eval_every
    self.seconds_per_step: dict[str, float] = {}
    self.eval_seconds: list[float] = []

  def record_steps(self, stage: Stage, steps: int, seconds: float) -> None:
    if steps > 0 and seconds > 0:
      self.seconds_per_step[stage.name] = seconds / steps

  def record_eval(self, seconds: float) -> None:
    self.eval_seconds.append(seconds)

  def _stage_seconds_per_step(self, stage: Stage) -> float | None:
    if stage.name in self.seconds_per_step:
      return self.seconds_per_step[stage.name]
    for name, t in self.seconds_per_step.items():  # scale by the FLOPs of the compiled steps
      if self.flops.get(name) and self.flops.get(stage.name):
        return t * self.flops[stage.name] / self.flops[name]
    return next(iter(self.seconds_per_step.values()), None)

  def remaining(self, step: int) -> float | None:
    total = 0.0
    evals = 0
    for stage in self.plan:
      first, last = max(stage.start, step), min(stage.end, self.stop_at)
      if last <= first:
        continue
      t = self._stage_seconds_per_step(stage)
      if t is None:
        return None
      total += (last - first) * t
      evals += last // self.eval_every - first // self.eval_every + (last % self.eval_every != 0)
    if self.eval_seconds:
      total += evals * float(np.median(self.eval_seconds))
    return total


class MetricsLog:
  """Device metrics since the last log line: fetched, checked, averaged and written together.

  Steps whose update the jitted step skipped (non-finite gradients: metrics['skipped'] == 1) are
  counted and left out of the means; `max_skips` in a row stop the run.
  """

  def __init__(self, run: Run, eta: Eta | None = None):
    self.run = run
    self.eta = eta
    self.pending: list[dict] = []
    self.consecutive_skips = 0
    self.total_skips = 0
    self.max_skips = run.config.max_consecutive_skipped_steps
    self.t_log, self.step_log = time.time(), run.step
    self.excluded = 0.0  # seconds since the last line spent outside training steps

  def exclude_since(self, start: float) -> None:
    """Time since `start` spent in evaluation, images or checkpoints: not part of the training step rate.
    Only the part after the last log line counts (a checkpoint may write a line in between)."""
    self.excluded += max(0.0, time.time() - max(start, self.t_log))

  def add(self, metrics: dict) -> None:
    self.pending.append(metrics)

  @property
  def last_step_skipped(self) -> bool:
    return self.consecutive_skips > 0

  def flush(self, step: int, stage: Stage, lr_fns: dict) -> None:
    if not self.pending:
      return
    host = jax.device_get(self.pending)
    self.pending = []
    good = []
    for m in host:
      if float(m.get('skipped', 0.0)) > 0:
        self.consecutive_skips += 1
        self.total_skips += 1
      else:
        self.consecutive_skips = 0
        good.append(m)
    skipped = len(host) - len(good)
    run = self.run
    if skipped:
      logging.warning(
        'step %d: %d of the last %d steps had non-finite gradients and were skipped (%d in a row, %d in this run)',
        step,
        skipped,
        len(host),
        self.consecutive_skips,
        self.total_skips,
      )
    if self.consecutive_skips >= self.max_skips:
      raise NonFiniteLossError(
        f'non-finite gradients in {self.consecutive_skips} consecutive steps up to step {step} '
        f'(stage {stage.name}; config.max_consecutive_skipped_steps={self.max_skips}); training stopped, '
        f'the last good checkpoint in {run.ckpt.directory} is kept (step {run.ckpt.latest_step()})'
      )
    scalars = {'train/skipped_steps': float(skipped)}
    lrs = {f'lr_{k}': float(fn(step - 1 - stage.start)) for k, fn in lr_fns.items()}
    mean = {}
    if good:
      mean = {k: float(np.mean([m[k] for m in good])) for k in good[0] if k != 'skipped'}
      scalars.update({f'train/{k}': v for k, v in {**mean, **lrs}.items()})
    now = time.time()
    train_seconds = max(now - self.t_log - self.excluded, 1e-9)
    sps = (step - self.step_log) / train_seconds
    if self.eta is not None:
      self.eta.record_steps(stage, step - self.step_log, train_seconds)
    self.t_log, self.step_log, self.excluded = now, step, 0.0
    scalars['train/steps_per_sec'] = sps
    run.writer.write_scalars(step, scalars)
    terms = ' '.join(f'{k}={v:.4g}' for k, v in mean.items() if not k.startswith('grad'))
    lr_text = ' '.join(f'{k}={v:.2e}' for k, v in lrs.items())
    left = self.eta.remaining(step) if self.eta is not None else (run.total_steps - step) / max(sps, 1e-9)
    logging.info(
      '[%s] step %d/%d %s %s | %.2f steps/s, ETA %s',
      stage.name,
      step,
      run.total_steps,
      terms,
      lr_text,
      sps,
      _format_eta(left) if left is not None else '?',
    )


def _meta(run: Run, stage: Stage, step: int) -> dict:
  return {
    'stage': stage.name,
    'step': step,
    'best_val_psnr': run.best_psnr,
    'data_position': run.data_position,
    'process_count': jax.process_count(),
    'device_count': jax.device_count(),
    'config': _config_json(run.config),
    'plan': resume_guard.plan_meta(run.plan),
    'early_stop': {'best': run.early_best, 'stale': run.stale_evals, 'stopped': run.stopped_early},
  }


def _early_stop(run: Run, psnr: float) -> bool:
  """Counts a validation for early stopping; True when the run should stop (config.early_stop_*)."""
  config = run.config
  if config.early_stop_patience <= 0:
    return False
  if psnr > run.early_best + config.early_stop_min_delta:
    run.early_best, run.stale_evals = psnr, 0
  else:
    run.stale_evals += 1
  if run.stale_evals >= config.early_stop_patience:
    run.stopped_early = True
    logging.info(
      'early stop: validation PSNR has not beaten %.3f dB by more than %.3g dB for %d validations',
      run.early_best,
      config.early_stop_min_delta,
      run.stale_evals,
    )
  return run.stopped_early


class CheckpointPolicy:
  """When to save: periodically, at stage ends and at the preemption step; never a state whose last
  step was skipped for non-finite gradients (the save waits for a good step)."""

  def __init__(self, run: Run, guard: PreemptionGuard):
    self.run, self.guard = run, guard

  def maybe_save(
    self, step: int, stage: Stage, is_stage_end: bool, metrics_log: MetricsLog, lr_fns: dict, last_eval: dict | None
  ) -> None:
    run = self.run
    preempted = self.guard.reached(step)  # every process calls this at every step
    if preempted:
      metrics_log.flush(step, stage, lr_fns)
      run.ckpt.save(step, run.state, _meta(run, stage, step))
      run.ckpt.wait()
      run.writer.flush()
      logging.warning('preempted: saved step %d in %s; run the same command to resume', step, run.ckpt.directory)
      raise Preempted(step, run.ckpt.directory)
    if step % run.config.checkpoint_every_steps == 0 or is_stage_end:
      metrics_log.flush(step, stage, lr_fns)
      if metrics_log.last_step_skipped:
        logging.warning('step %d: checkpoint deferred, the last step had non-finite gradients', step)
        return
      val = last_eval['summary']['model']['psnr'] if last_eval and last_eval.get('step') == step else None
      run.ckpt.save(step, run.state, _meta(run, stage, step), metrics={BEST_METRIC: val} if val is not None else None)


def _config_json(run: spec.RunSpec) -> dict:
  return json.loads(run.config.to_json_best_effort()) if run.config is not None else {'name': run.name}


class Profiler:
  """`config.profile_steps='A:B'`: a JAX profiler trace of steps A+1..B on process 0, in
  WORKDIR/profile (open with TensorBoard's profile plugin)."""

  def __init__(self, steps: str, workdir: epath.Path):
    self.start = self.stop = -1
    if steps:
      self.start, self.stop = spec.parse_profile_steps(steps)
    self.directory = str(workdir / 'profile')
    self.active = False

  def before_step(self, step: int) -> None:
    if step == self.start and jax.process_index() == 0:
      jax.profiler.start_trace(self.directory)
      self.active = True
      logging.info('profiling steps %d to %d into %s', self.start + 1, self.stop, self.directory)

  def after_step(self, step: int) -> None:
    if self.active and step >= self.stop:
      jax.profiler.stop_trace()
      self.active = False

  def close(self) -> None:
    self.after_step(self.stop)


def _write_grid(run: Run, sample, tag_step: int) -> str:
  grid = report.image_grid(*sample, orientation=run.grid_orientation)
  rel = f'images/grid_{tag_step:07d}.png'
  if run.is_chief:
    (run.files / 'images').mkdir(parents=True, exist_ok=True)
    report.save_png(run.files / rel, grid)
  run.writer.write_images(tag_step, {'val/lr_bicubic_sr_hr': grid[None]})
  return rel


def _evaluate(run: Run, predict, step: int) -> dict:
  result = run.validator.run(predict, steps.generator_variables(run.state))
  summ = result['summary']
  scalars = {f'val/{who}_{k}': v for who in ('model', 'bicubic') for k, v in summ[who].items()}
  scalars['val/psnr_gain'] = summ['model']['psnr'] - summ['bicubic']['psnr']
  run.writer.write_scalars(step, scalars)
  run.best_psnr = max(run.best_psnr, summ['model']['psnr'])
  logging.info('step %d: %s', step, log_line(summ))
  result['step'] = step
  return result


def run_stages(run: Run, guard: PreemptionGuard, stop_at: int) -> dict | None:
  """Trains every remaining stage up to `stop_at`; returns the last validation result."""
  config = run.config
  compiled_stages = compile_stages(run, stop_at)
  eta = Eta(run.plan, {c.stage.name: c.flops for c in compiled_stages}, stop_at, config.eval_every_steps)
  metrics_log = MetricsLog(run, eta)  # after the compiles, so steps/s and the ETA measure training
  policy = CheckpointPolicy(run, guard)
  profiler = Profiler(config.profile_steps, run.workdir)
  last_eval = None
  batch = run.first_batch
  try:
    for compiled in compiled_stages:
      stage, step = compiled.stage, run.step
      if step == stage.start:  # a new stage starts with fresh optimizer states and schedules
        run.state = compiled.init_optimizers(run.state)
      s = stage.spec
      logging.info(
        'stage %s (%s): steps [%d, %d), alpha=%s dropout=%s',
        stage.name,
        s.kind,
        stage.start,
        stage.end,
        s.deepnorm_alpha,
        s.dropout,
      )
      end = min(stage.end, stop_at)
      while step < end:
        profiler.before_step(step)
        with jax.profiler.StepTraceAnnotation('train', step_num=step):
          global_batch = sharding.global_batch(batch, run.batch_sharding)
          run.state, metrics = compiled.train_step(run.state, global_batch)
        step += 1
        run.data_position += config.batch_size
        profiler.after_step(step)
        metrics_log.add(metrics)
        last = step == end
        if step % config.log_every_steps == 0 or last:
          metrics_log.flush(step, stage, compiled.lr_fns)
        t0 = time.time()
        if step % config.eval_every_steps == 0 or last:
          last_eval = _evaluate(run, compiled.predict, step)
          eta.record_eval(time.time() - t0)
          last = _early_stop(run, last_eval['summary']['model']['psnr']) or last
        if step % config.image_every_steps == 0 or last:
          _write_grid(run, run.validator.sample(compiled.predict, steps.generator_variables(run.state)), step)
        policy.maybe_save(step, stage, last, metrics_log, compiled.lr_fns, last_eval)
        metrics_log.exclude_since(t0)
        if run.stopped_early:
          break
        if step < run.total_steps and step < stop_at:
          batch = pipeline.next_batch(run.data_iter)
      run.writer.flush()
      if run.stopped_early:
        break
  finally:
    profiler.close()
  if stop_at < run.total_steps and run.step >= stop_at and not run.stopped_early:
    logging.info(
      'stopped at step %d of %d (config.stop_after_steps=%d); rerun the same command to resume',
      run.step,
      run.total_steps,
      stop_at,
    )
  return last_eval


def write_run_report(run: Run, last_eval: dict) -> None:
  """The validation report, the image grid and the training curves of a finished run."""
  config, step = run.config, run.step
  grid_rel = f'images/grid_{step:07d}.png'
  if not (run.files / grid_rel).exists():  # the loop's last step wrote it already
    grid_rel = _write_grid(run, last_eval['sample'], step)
  run.writer.flush()
  curves = _plot_curves(run.files) if _is_local(run.workdir) else None
  random_vgg = run.vgg is not None and config.loss.allow_random_vgg and not config.loss.vgg_weights
  paths = report.write_report(
    run.files / 'report',
    title=f'{config.name}: validation at step {step}',
    summary=last_eval['summary'],
    per_volume=last_eval['per_volume'],
    images=[str(pathlib.Path('..') / grid_rel)] + ([pathlib.Path(curves).name] if curves else []),
    notes=[
      f'data: {"embedded sample (MNI ICBM152 2009a T1)" if run.is_sample else run.data_root}',
      f'best validation PSNR during the run: {run.best_psnr:.3f} dB',
      f'stages: {", ".join(s.name for s in run.plan)}; {run.total_steps} steps, global batch {config.batch_size}',
    ]
    + (['perceptual loss used RANDOM VGG features (quick config)'] if random_vgg else []),
  )
  report.link_report(run.files, 'validation report', paths['html'])
  if curves:
    report.link_report(run.files, 'training curves', curves)
  logging.info(
    'report written to %s (linked from %s)', run.workdir / 'report' / 'report.html', run.workdir / 'index.html'
  )


def _plot_curves(workdir: pathlib.Path) -> str | None:
  """report/curves.png from the run's event files; a plotting failure never fails the run."""
  from mrisr_jax import run_curves

  try:
    return run_curves.plot_run(workdir)
  except (run_curves.RunCurvesError, OSError, ImportError) as e:
    logging.warning('training curves not plotted: %s', e)
    return None


def _upload_files(run: Run) -> None:
  """A remote workdir (gs://...) gets the images and report written in the local staging folder."""
  if _is_local(run.workdir) or not run.is_chief:
    return
  for path in run.files.rglob('*'):
    if path.is_file():
      target = run.workdir / str(path.relative_to(run.files))
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(path.read_bytes())
  shutil.rmtree(run.files, ignore_errors=True)


def train_and_evaluate(
  config: ml_collections.ConfigDict | spec.RunSpec, workdir: str, *, allow_config_change: bool = False
) -> dict:
  """Runs (or resumes) every stage of the recipe in `workdir`; returns the final validation summary.

  The workdir is locked for the run (one run per workdir). Raises preemption.Preempted after saving
  when SIGTERM/SIGINT asked the run to stop.
  """
  path = workdir_path(workdir)
  if jax.process_index() == 0:
    workdir_lock.prepare(path)
  with PreemptionGuard() as guard, workdir_lock.WorkdirLock(path, enabled=jax.process_index() == 0):
    run = setup(config, workdir, allow_config_change=allow_config_change)
    try:
      stop_at = run.config.stop_after_steps or run.total_steps
      if run.stopped_early:  # a resumed run that stopped early is finished
        stop_at = run.step
      last_eval = run_stages(run, guard, stop_at)
      run.ckpt.wait()
      if last_eval is None:  # resumed a finished run (or stopped on a boundary): evaluate what it holds
        stage = next((s for s in reversed(run.plan) if s.start <= max(run.step - 1, 0)), run.plan[0])
        last_eval = _evaluate(run, _make_predict(run, recipe.stage_generator(run.config, stage)), run.step)
      finished = run.step >= run.total_steps or run.stopped_early
      if finished and run.step > 0 and run.is_chief:
        write_run_report(run, last_eval)
      return last_eval['summary']
    finally:
      run.writer.flush()
      run.writer.close()
      run.ckpt.close()
      _upload_files(run)
      run.data_iter = None
