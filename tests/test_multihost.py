"""Two local processes (2 fake CPU devices each) joined by `jax.distributed.initialize` train the
tiny config on a 2 x 2 data x seq mesh through experiments/train.py: the loss equals a
one-process run and only process 0 writes metrics."""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from attnzoo import train
from helpers import ROOT, load_config

RING = {'model.attention.name': 'ring', 'model.attention.ring.block_k': 4}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
  if jax.device_count() != 1:
    pytest.skip('the reference run needs a single device')
  workdir = tmp_path / 'two'
  address = f'127.0.0.1:{free_port()}'
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  cmd = [sys.executable, os.path.join(ROOT, 'experiments', 'train.py'),
         f'--config={os.path.join(ROOT, "configs", "tiny.py")}', f'--workdir={workdir}',
         f'--coordinator_address={address}', '--num_processes=2'] + [
             f'--config.{k}={v}' for k, v in {**RING, 'mesh.seq': 2}.items()]
  procs = [subprocess.Popen(cmd + [f'--process_id={i}'], env=env, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in (0, 1)]
  try:
    logs = [p.communicate(timeout=600)[0] for p in procs]
  finally:
    for p in procs:  # never leave a process waiting for its peer
      p.kill()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]

  config = load_config('tiny')
  config.update_from_flattened_dict(RING)  # one device: mesh 1 x 1
  one = train.train_and_evaluate(config, str(tmp_path / 'one'))
  with open(workdir / 'metrics.jsonl') as f:
    rows = [json.loads(line) for line in f]
  # Both processes appending would duplicate every row.
  assert [(r['step'], r['split']) for r in rows] == [(0, 'eval'), (2, 'train'), (2, 'eval'),
                                                     (4, 'train'), (4, 'eval')]
  for key in ('loss', 'loss_repeat', 'accuracy'):
    np.testing.assert_allclose(rows[-1][key], one[key], rtol=1e-4, err_msg=key)
