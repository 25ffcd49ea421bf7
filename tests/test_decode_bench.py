"""Decode-cost study: a tiny run measures MHA and MQA, a rerun skips measured points, the
report is built from decode.jsonl alone, and undecodable variants are refused up front."""
import os

import pytest

from attnzoo import jsonl
from attnzoo.studies import decode
from helpers import load_config


def tiny_study(variants='causal,mqa'):
  c = load_config('decode_bench')
  c.model.update(d_model=16, num_heads=4, num_kv_heads=4, num_layers=1, vocab_size=16)
  c.study.update(length=16, batch_size=1, repeats=1, variants=variants)
  return c


def test_tiny_decode_study_resumes_and_reports(tmp_path):
  log = []
  new = decode.run(tiny_study(), str(tmp_path), log=log.append)
  assert [r['status'] for r in new] == ['ok', 'ok']
  mha, mqa = new
  assert (mha['num_kv_heads'], mqa['num_kv_heads']) == (4, 1)
  assert mha['kv_bytes'] == 4 * mqa['kv_bytes'] == mha['kv_bytes_formula']
  assert all(r['token_s'] > 0 for r in new)
  assert decode.run(tiny_study(), str(tmp_path), log=log.append) == []
  assert sum('already measured' in line for line in log) == 2
  text = decode.report(str(tmp_path))
  assert 'mqa' in text and os.path.exists(tmp_path / decode.PLOT)
  assert len(jsonl.read(str(tmp_path / decode.POINTS))) == 2


def test_an_undecodable_variant_is_refused_before_measuring(tmp_path):
  with pytest.raises(ValueError, match='performer'):
    decode.run(tiny_study('causal,performer'), str(tmp_path))
  assert not os.path.exists(tmp_path / decode.POINTS)
