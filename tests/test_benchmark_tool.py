"""tools/benchmark.py: JAX against PyTorch in one run (quick sizes), the marker block it writes, its helpers."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.unit


def _tool():
  spec = importlib.util.spec_from_file_location('tool_benchmark', REPO / 'tools' / 'benchmark.py')
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # its dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def test_ratio_and_cells():
  b = _tool()
  assert b.ratio(2.0, 1.0) == '2.00'  # torch twice as slow: JAX is faster
  assert b.ratio(1.0, 3.0) == '0.33'
  assert b.ratio(None, 1.0) == '-' and b.ratio(1.0, 0) == '-'
  assert b.fmt_s(0.01234) == '0.012' and b.fmt_s(12.345) == '12.35' and b.fmt_s(None) == '-'
  assert b.fmt_bytes(3 * 2**30) == '3.00 GiB' and b.fmt_bytes(50 * 2**20) == '50 MiB'
  assert b.fmt_bytes(2**19) == '0.5 MiB'
  assert b.one_line('Traceback\n  File "x.py", line 1\nValueError: bad | value\n') == 'ValueError: bad / value'
  base, slope, fits = b.fit_batches(3 * 2**30, 4 * 2**30, (16, 80))
  assert (base, slope, fits) == (2 * 2**30, 2**30, [14, 78])


def test_train_and_infer_rows_show_failures_and_ratios():
  b = _tool()
  ok = {'stage': 'pretrain', 'batch': 4, 'lr': [48, 48], 'input': [48, 48], 'compile_s': 2.0, 'step_s': 0.5}
  results = {
    'edsr_x4': {
      'config': 'configs/edsr.py',
      'train': {
        'jax': {**ok, 'samples_per_s': 8.0, 'peak_rss': 2**30, 'compiled_bytes': 2**29},
        'torch_eager': {**ok, 'step_s': 1.5, 'peak_rss': 2**30},
        'torch_compile': {'error': 'failed: RuntimeError: no compiler'},
      },
      'infer': {
        'jax': {'lr': 80, 'input': 80, 'padded': 96, 'out': 320, 'first_call_s': 3.0, 'steady_s': 0.2},
        'jax_cached': {'error': 'skipped (x)'},
        'torch_eager': {'lr': 80, 'out': 320, 'first_call_s': 1.0, 'steady_s': 0.5},
      },
    }
  }
  (train,) = b.train_rows(results)
  cells = [c.strip() for c in train.strip('|').split('|')]
  assert len(cells) == len(b.TRAIN_HEADER[0].strip('|').split('|'))
  assert cells[-2:] == ['3.00', '-'] and 'failed: RuntimeError: no compiler' in cells
  (infer,) = b.infer_rows(results)
  cells = [c.strip() for c in infer.strip('|').split('|')]
  assert len(cells) == len(b.INFER_HEADER[0].strip('|').split('|'))
  assert cells[2] == '80² -> 320² (padded to 96²)' and cells[4] == 'skipped (x)' and cells[-1] == '2.50'


@pytest.mark.integration
def test_quick_run_writes_json_and_the_marked_block(tmp_path):
  md = tmp_path / 'bench.md'
  md.write_text(
    '# Benchmarks\n\n## Other\n\nkept as it is\n\n## Speed against PyTorch\n\n<!-- speed:begin -->\nold table\n'
    '<!-- speed:end -->\n\n## After\n\nalso kept\n'
  )
  out = tmp_path / 'r.json'
  cmd = [sys.executable, 'tools/benchmark.py', '--quick', '--workloads', 'srcnn_x4']
  cmd += ['--steps', '1', '--warmup', '1', '--torch', 'eager', '--write', str(md), '--json', str(out)]
  cmd += ['--profile', str(tmp_path / 'profiles')]
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  # a hang guard, not a speed test: ~1-2 minutes on 2 busy cores
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=480)
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
  report = json.loads(out.read_text())
  assert set(report['results']) == {'srcnn_x4'}
  for name, res in report['results'].items():
    jax_train, torch_train = res['train']['jax'], res['train']['torch_eager']
    assert jax_train['compile_s'] > 0 and jax_train['step_s'] > 0 and jax_train['peak_rss'] > 0, (name, jax_train)
    assert jax_train['compiled_bytes'] > 0
    assert torch_train['step_s'] > 0 and torch_train['peak_rss'] > 0, (name, torch_train)
    for fw in ('jax', 'jax_cached', 'torch_eager'):
      r = res['infer'][fw]
      assert r['first_call_s'] > 0 and r['steady_s'] > 0 and r['out'] == 64, (name, fw, r)
    assert res['infer']['jax_cached']['cache_entries_before'] > 0  # the second process found the first's cache
  # --profile: a JAX profiler trace of the timed steps, one folder per workload
  assert list((tmp_path / 'profiles' / 'srcnn_x4').rglob('*.xplane.pb'))
  text = md.read_text()
  assert text.startswith(
    '# Benchmarks\n\n## Other\n\nkept as it is\n\n## Speed against PyTorch\n\n<!-- speed:begin -->'
  )
  assert text.endswith('<!-- speed:end -->\n\n## After\n\nalso kept\n')
  assert 'old table' not in text and text.count('<!-- speed:begin -->') == 1
  block = text[text.index('<!-- speed:begin -->') : text.index('<!-- speed:end -->')]
  for word in ('srcnn_x4', 'jax 0.', 'torch 2.', 'Command: `python tools/benchmark.py --quick'):
    assert word in block, word
