"""The kernel benchmark's FLOP counts and table, with a fake measurement (no device needed)."""
import json
import os
import subprocess
import sys

import pytest

from attnzoo import kernel_bench
from helpers import ROOT


def test_flop_count():
  # 4·B·H·T·S·D forward; causal halves it; forward+backward is 3.5x the forward.
  assert kernel_bench.flops(2, 1024, 512, 16, 64, causal=False, backward=False) == (
      4 * 2 * 16 * 1024 * 512 * 64)
  assert kernel_bench.flops(2, 1024, 1024, 16, 64, causal=True, backward=True) == (
      4 * 2 * 16 * 1024 * 1024 * 64 / 2 * 3.5)


def test_table_from_a_fake_measurement(tmp_path):
  settings = kernel_bench.Settings(tokens=4096, lengths=(1024, 2048), head_dims=(64,),
                                   causal=(True,))
  seconds = {'fast': 1e-3, 'slow': 4e-3}

  def fake_measure(impl, B, T, H, D, causal, backward, settings):
    if impl == 'broken' and T == 2048:
      raise ValueError('unsupported shape\nsecond line')
    return seconds.get(impl, 2e-3) * (3.5 if backward else 1.0)

  impls = {'fast': 'fast', 'slow': 'slow', 'broken': 'broken'}
  rows = kernel_bench.run(str(tmp_path), settings, measure=fake_measure, impls=impls,
                          log=lambda _: None)
  assert [(r['T'], r['B'], r['mode']) for r in rows] == [
      (1024, 4, 'fwd'), (1024, 4, 'fwd+bwd'), (2048, 2, 'fwd'), (2048, 2, 'fwd+bwd')]
  first = rows[0]
  flops = 4 * 4 * 16 * 1024 * 1024 * 64 / 2
  assert first['flops'] == flops
  assert first['tflops']['fast'] == pytest.approx(flops / 1e-3 / 1e12)
  assert first['tflops']['fast'] == pytest.approx(4 * first['tflops']['slow'])
  # Backward counted as 2.5x the forward: same time ratio, same TFLOP/s.
  assert rows[1]['tflops']['fast'] == pytest.approx(first['tflops']['fast'])
  assert rows[2]['errors'] == {'broken': 'ValueError: unsupported shape'}
  with open(tmp_path / 'kernel_bench.json') as f:
    assert json.load(f)['rows'] == rows
  md = (tmp_path / 'kernel_bench.md').read_text().splitlines()
  assert md[0] == '| D | causal | T | B | mode | fast | slow | broken |'
  assert md[2] == f'| 64 | True | 1024 | 4 | fwd | {flops / 1e9:.1f} | {flops / 4e9:.1f} | ' \
                  f'{flops / 2e9:.1f} |'
  assert md[4].endswith('| - |')  # T=2048 fwd: broken failed


def test_script_refuses_to_run_on_cpu(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)  # this checkout's attnzoo
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'experiments', 'kernel_bench.py'),
                         f'--workdir={tmp_path}'], env=env, capture_output=True, text=True,
                        cwd=ROOT)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith('kernel_bench needs a GPU or TPU')
  assert not os.listdir(tmp_path)
