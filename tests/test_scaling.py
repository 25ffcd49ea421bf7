"""Scaling sweep: a tiny run writes scaling.jsonl, a rerun skips measured points, the report is
built from the jsonl alone; slope and crossover helpers."""
import json
import os

import pytest

from attnzoo.studies import scaling
from helpers import load_config



def tiny(**study):
  c = load_config('scaling')
  c.study.update(dict(lengths=(16, 32), tokens=32, heads=2, head_dim=8, repeats=1,
                      variants='dense,longformer:window=4'), **study)
  return c


TINY = tiny()


def test_tiny_run_resumes_and_reports(tmp_path):
  workdir = str(tmp_path)
  lines = []
  new = scaling.run(TINY, workdir, log=lines.append)
  assert [(r['variant'], r['T']) for r in new] == [('dense', 16), ('dense', 32),
                                                   ('longformer:window=4', 16), ('longformer:window=4', 32)]
  with open(os.path.join(workdir, scaling.POINTS)) as f:
    records = [json.loads(line) for line in f]
  assert len(records) == 4 and all(r['status'] == 'ok' for r in records), records
  assert all(r['time_s'] > 0 and r['peak_bytes'] > 0 and r['causal'] for r in records)
  assert records[0]['B'] == 2 and records[1]['B'] == 1  # B·T fixed
  assert records[2]['options'] == {'window': 4}
  assert any('longformer' in line and 'T=32' in line for line in lines)  # progress output

  assert scaling.run(TINY, workdir, log=lines.append) == []  # every point already measured

  text = scaling.report(workdir)  # from the jsonl alone
  assert os.path.exists(os.path.join(workdir, scaling.PLOT))
  with open(os.path.join(workdir, scaling.REPORT)) as f:
    assert f.read() == text
  assert '| dense | yes | N^2 |' in text and '| longformer:window=4 | yes | N*w |' in text
  assert '(1.00x)' in text and 'crossover' in text


def test_over_budget_and_oom_stop_larger_lengths(tmp_path):
  settings = tiny(variants='dense', time_budget_s=0.0)
  assert len(scaling.run(settings, str(tmp_path / 'slow'), log=lambda _: None)) == 1
  settings = tiny(variants='dense', max_bytes=1)
  (record,) = scaling.run(settings, str(tmp_path / 'oom'), log=lambda _: None)
  assert record['status'] == 'oom'
  assert 'oom' in scaling.report(str(tmp_path / 'oom'))


def test_default_variants_skip_dense_presets_and_options_follow_length():
  names = scaling.default_variants()
  assert 'dense' in names and not {'causal', 'cross', 'mqa', 'gqa'} & set(names)
  assert {'longformer', 'linformer', 'blockwise'} <= set(names)
  (spec,) = scaling.measure.common.parse_specs('linformer:proj_dim=8')
  assert scaling.measure.point(spec, 2048, TINY.study)['options']['max_len'] == 2048


def test_slope_and_crossover():
  lengths = [512, 1024, 2048, 4096]
  assert scaling.loglog_slope(lengths, [t ** 2 for t in lengths]) == pytest.approx(2.0)
  assert scaling.loglog_slope([512], [1.0]) is None
  assert scaling.crossover(lengths, [2.0, 1.0, 0.5, 0.25]) == '≈ 1024'
  assert scaling.crossover(lengths, [4.0, 2.0, 0.5, 0.25]) == '≈ 1448'  # sqrt(1024 * 2048)
  assert scaling.crossover(lengths, [0.5, 0.4, 0.3, 0.2]) == '< 512'
  assert scaling.crossover(lengths, [0.5, 2.0, 3.0, 4.0]) == '> 4096'
