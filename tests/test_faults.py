"""Fault injection: kills (also mid-checkpoint), torn JSONL lines, corrupt checkpoints,
divergence, two writers, incompatible reruns and a table of bad config values. Small configs;
every subprocess is bounded by a timeout."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import attnzoo
from attnzoo import checkpoint, jsonl, train
import helpers
from helpers import ROOT, load_config

TIMEOUT = 120  # seconds, for any subprocess


def tiny(**overrides):
  return helpers.tiny(**{'train.num_steps': 8, 'train.eval_every': 2,
                         'train.checkpoint_every': 2, **overrides})


def eval_rows(workdir):
  return [r for r in jsonl.read(os.path.join(workdir, 'metrics.jsonl')) if r['split'] == 'eval']


def assert_clean(workdir, num_steps=8, eval_every=2):
  """metrics.jsonl: every (step, split) once, in order, nothing missing, nothing torn."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]  # raises on a torn line
  keys = [(r['step'], r['split']) for r in rows]
  assert len(keys) == len(set(keys)), keys
  assert [r['step'] for r in rows] == sorted(r['step'] for r in rows)
  assert [r['step'] for r in rows if r['split'] == 'eval'] == list(
      range(0, num_steps + 1, eval_every))


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """An uninterrupted run of tiny() (the figures every faulty run must reproduce)."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  final = train.train_and_evaluate(tiny(), workdir)
  return final, eval_rows(workdir)


def assert_same_as(reference, final, workdir):
  ref_final, ref_rows = reference
  for key, value in ref_final.items():
    if key != 'split':
      np.testing.assert_allclose(final[key], value, rtol=1e-6, err_msg=key)
  assert_clean(workdir)
  for a, b in zip(eval_rows(workdir), ref_rows, strict=True):
    assert a.keys() == b.keys()
    np.testing.assert_allclose([a[k] for k in a if k != 'split'],
                               [b[k] for k in a if k != 'split'], rtol=1e-6)


# ---- kills ------------------------------------------------------------------------------------

KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from helpers import load_config
from attnzoo import train
kill_at_save = int(sys.argv[2])
if kill_at_save:
  # SIGKILL inside the checkpoint's final rename: its data is written, the step is not done.
  from orbax.checkpoint._src.path import atomicity
  calls = []
  async def finalize(self):
    calls.append(1)
    if len(calls) == kill_at_save:
      os.kill(os.getpid(), signal.SIGKILL)
    return await original(self)
  original = atomicity.AtomicRenameTemporaryPath.finalize
  atomicity.AtomicRenameTemporaryPath.finalize = finalize
c = load_config('tiny')
c.train.update(num_steps=8, eval_every=2, checkpoint_every=2)
train.train_and_evaluate(c, sys.argv[1], log=lambda *a: None)
"""


def _start(workdir, kill_at_save=0):
  script = KILL_SCRIPT.format(tests=os.path.join(ROOT, 'tests'))
  return subprocess.Popen([sys.executable, '-c', script, str(workdir), str(kill_at_save)],
                          env=dict(os.environ, JAX_PLATFORMS='cpu'), cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_kill_mid_checkpoint_then_resume_matches_an_uninterrupted_run(reference, tmp_path):
  proc = _start(tmp_path, kill_at_save=4)  # 2 renames a save: dies committing step 4
  proc.wait(TIMEOUT)
  assert proc.returncode == -signal.SIGKILL
  assert checkpoint.Checkpointer(str(tmp_path)).steps() == [2]
  assert os.path.exists(tmp_path / '.lock')  # left by the dead process: taken over below
  final = train.train_and_evaluate(tiny(), str(tmp_path))
  assert_same_as(reference, final, str(tmp_path))
  assert not os.path.exists(tmp_path / '.lock')


def test_kills_at_random_moments_then_resume_match_an_uninterrupted_run(reference, tmp_path):
  rng = np.random.default_rng(0)
  for delay in rng.uniform(3.0, 12.0, size=3):  # from start-up into training and saving
    proc = _start(tmp_path)
    try:
      proc.wait(delay)
    except subprocess.TimeoutExpired:
      proc.send_signal(signal.SIGKILL)
      proc.wait(TIMEOUT)
  final = train.train_and_evaluate(tiny(), str(tmp_path))
  assert_same_as(reference, final, str(tmp_path))


# ---- torn files and corrupt checkpoints -------------------------------------------------------

def test_a_torn_last_metrics_line_is_dropped_with_a_warning(reference, tmp_path):
  train.train_and_evaluate(tiny(**{'train.stop_after': 4}), str(tmp_path))
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 6, "split": "ev')  # a kill mid-write
  with pytest.warns(UserWarning, match='torn last line'):
    final = train.train_and_evaluate(tiny(), str(tmp_path))
  assert_same_as(reference, final, str(tmp_path))


def test_jsonl_read_repairs_only_the_last_line(tmp_path):
  path = str(tmp_path / 'r.jsonl')
  jsonl.append(path, {'a': 1}, {'a': 2})
  with open(path, 'a') as f:
    f.write('{"a": 3')
  with pytest.warns(UserWarning, match='torn'):
    assert jsonl.read(path) == [{'a': 1}, {'a': 2}]
  jsonl.append(path, {'a': 4})
  assert jsonl.read(path) == [{'a': 1}, {'a': 2}, {'a': 4}]
  with open(path, 'a') as f:
    f.write('garbage\n{"a": 5}\n')
  with pytest.raises(ValueError, match='line 4'):
    jsonl.read(path)


def _remove_metadata(step_dir):
  os.remove(os.path.join(step_dir, 'default', '_METADATA'))


def _remove_item(step_dir):
  shutil.rmtree(os.path.join(step_dir, 'default'))


def _scramble(step_dir):
  rng = np.random.default_rng(0)
  for root, _, files in os.walk(os.path.join(step_dir, 'default')):
    for name in files:
      path = os.path.join(root, name)
      size = os.path.getsize(path)
      with open(path, 'wb') as f:
        f.write(rng.integers(0, 256, size, dtype=np.uint8).tobytes())


@pytest.mark.parametrize('corrupt', [_remove_metadata, _remove_item, _scramble],
                         ids=['no _METADATA', 'no item directory', 'scrambled files'])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path, corrupt):
  train.train_and_evaluate(tiny(**{'train.stop_after': 4}), str(tmp_path))
  corrupt(str(tmp_path / 'checkpoints' / '4'))
  with pytest.warns(UserWarning, match='checkpoint at step 4 does not restore'):
    final = train.train_and_evaluate(tiny(), str(tmp_path))
  assert_same_as(reference, final, str(tmp_path))
  assert os.listdir(tmp_path / 'checkpoints.bad')  # set aside, not deleted


# ---- divergence -------------------------------------------------------------------------------

def _finite_params(workdir):
  model, _ = attnzoo.load_run(workdir)
  from flax import nnx
  return all(bool(np.isfinite(x).all()) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


# lr 1e20: one Adam step makes weights ~1e20, so q . k overflows float32 on the next forward
# (at lr 1e4 the pre-LayerNorm model stays finite for 60 steps with current JAX and Optax).
def test_divergence_stops_with_the_step_and_keeps_finite_checkpoints(tmp_path):
  config = tiny(**{'train.learning_rate': 1e20, 'train.num_steps': 60, 'train.eval_every': 60,
                   'train.checkpoint_every': 1, 'train.warmup_steps': 0})
  with pytest.raises(train.Diverged, match=r'non-finite .* at step \d+'):
    train.train_and_evaluate(config, str(tmp_path))
  assert _finite_params(str(tmp_path))


def test_skip_nonfinite_skips_the_bad_steps(tmp_path):
  config = tiny(**{'train.learning_rate': 1e20, 'train.num_steps': 60, 'train.eval_every': 60,
                   'train.warmup_steps': 0, 'train.skip_nonfinite': True})
  train.train_and_evaluate(config, str(tmp_path))
  last = [r for r in jsonl.read(str(tmp_path / 'metrics.jsonl')) if r['split'] == 'train'][-1]
  assert last['skipped_steps'] > 0
  assert _finite_params(str(tmp_path))


# ---- two writers, incompatible reruns ---------------------------------------------------------

def test_a_second_process_is_refused_naming_the_holder(tmp_path):
  holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  try:
    with open(tmp_path / '.lock', 'w') as f:
      json.dump({'pid': holder.pid, 'host': os.uname().nodename, 'started': 'then'}, f)
    with pytest.raises(train.RunError, match=f'in use by pid {holder.pid}'):
      train.train_and_evaluate(tiny(), str(tmp_path))
    assert not os.path.exists(tmp_path / 'config.json')
  finally:
    holder.kill()
    holder.wait()
  train.train_and_evaluate(tiny(), str(tmp_path))  # the holder died: its lock is stale


def test_two_processes_in_one_workdir_one_is_refused(tmp_path):
  proc = _start(tmp_path)
  deadline = time.time() + TIMEOUT
  while not os.path.exists(tmp_path / '.lock') and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  try:
    with pytest.raises(train.RunError, match='in use by pid'):
      train.train_and_evaluate(tiny(), str(tmp_path))
  finally:
    proc.wait(TIMEOUT)
  assert proc.returncode == 0, proc.stderr.read()
  assert_clean(str(tmp_path))


@pytest.fixture(scope='module')
def short_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('short'))
  train.train_and_evaluate(tiny(**{'train.num_steps': 2}), workdir)
  return workdir


@pytest.mark.parametrize('key, value', [
    ('model.attention.name', 'performer'), ('task.name', 'copy'), ('model.d_model', 32),
    ('model.num_layers', 3), ('seed', 1), ('train.learning_rate', 3e-3),
    ('task.vocab_size', 24)])
def test_a_rerun_that_changes_what_was_trained_is_refused(short_run, tmp_path, key, value):
  shutil.copytree(short_run, tmp_path, dirs_exist_ok=True)
  before = (tmp_path / 'config.json').read_text()
  changed = tiny(**{'train.num_steps': 2})
  if key == 'task.name':
    changed.task = load_config('copy').task
  else:
    changed.update_from_flattened_dict({key: value})
  with pytest.raises(train.RunError, match=key.replace('.', r'\.')):
    train.train_and_evaluate(changed, str(tmp_path))
  assert (tmp_path / 'config.json').read_text() == before
  attnzoo.load_run(str(tmp_path))  # the old run stays loadable


def test_a_run_written_before_a_config_key_existed_still_resumes(tmp_path):
  train.train_and_evaluate(tiny(**{'train.num_steps': 4}), str(tmp_path))
  path = tmp_path / 'config.json'
  old = json.loads(path.read_text())
  del old['model']['nope_layers']  # as written by code without the key
  path.write_text(json.dumps(old))
  assert train.train_and_evaluate(tiny(**{'train.num_steps': 6}), str(tmp_path))['step'] == 6
  with pytest.raises(train.RunError, match=r'model\.nope_layers'):  # away from the default
    train.train_and_evaluate(tiny(**{'train.num_steps': 6, 'model.nope_layers': (0,)}),
                             str(tmp_path))


def test_a_safe_change_resumes_and_is_recorded(tmp_path):
  train.train_and_evaluate(tiny(**{'train.num_steps': 4}), str(tmp_path))
  first = json.loads((tmp_path / 'summary.json').read_text())
  final = train.train_and_evaluate(tiny(**{'train.num_steps': 6}), str(tmp_path))
  assert final['step'] == 6
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert summary['wall_s'] > first['wall_s'] and summary['train_s'] > first['train_s']
  change, = jsonl.read(str(tmp_path / 'config_changes.jsonl'))
  assert change == {'step': 4, 'changes': {'train.num_steps': [4, 6]}}


def test_a_finished_run_is_reused_not_retrained(short_run, tmp_path):
  shutil.copytree(short_run, tmp_path, dirs_exist_ok=True)
  first = train.load_summary(str(tmp_path))['final']
  mtime = os.path.getmtime(tmp_path / 'metrics.jsonl')
  lines = []
  again = train.train_and_evaluate(tiny(**{'train.num_steps': 2}), str(tmp_path), log=lines.append)
  assert again == first and 'already trained' in lines[0]
  assert os.path.getmtime(tmp_path / 'metrics.jsonl') == mtime


# ---- bad values, refused before anything is written or compiled --------------------------------

BAD_VALUES = [
    ('train.num_steps', 0), ('train.num_steps', -5), ('train.batch_size', 0),
    ('train.batch_size', -8), ('train.learning_rate', 0.0), ('train.learning_rate', -1e-3),
    ('train.learning_rate', float('nan')), ('train.learning_rate', float('inf')),
    ('train.warmup_steps', -1), ('train.grad_clip', -1.0), ('train.grad_clip', 0.0),
    ('train.weight_decay', -0.1), ('train.eval_every', 0), ('train.checkpoint_every', 0),
    ('train.eval_batches', 0), ('train.stop_after', -1), ('seed', -1), ('task.seq_len', 0),
    ('task.vocab_size', 1), ('task.name', 'sorting'), ('task.min_period', 1),
    ('task.max_period', 40), ('task.max_prefix', -1), ('task.max_gap', -1),
    ('task.random_positions', -1), ('task.random_positions', 128), ('model.num_layers', 0),
    ('model.d_model', 0),
    ('model.d_model', 18), ('model.num_heads', 0), ('model.num_kv_heads', 3),
    ('model.max_len', 0), ('model.positions', 'alibi'), ('model.nope_layers', (2,)),
    ('model.rope_fraction', 0.0), ('model.rope_fraction', 1.5), ('model.attention.name', 'nope'),
    ('model.attention.name', 'linformer'), ('model.attention.linformer.max_len', 16),
    ('model.attention.performer.num_features', 0), ('model.attention.longformer.window', 0),
    ('model.attention.blockwise.block_k', 0),
]


@pytest.mark.parametrize('key, value', BAD_VALUES, ids=[f'{k}={v}' for k, v in BAD_VALUES])
def test_bad_values_are_refused_up_front_naming_the_field(tmp_path, key, value):
  config = tiny()
  if key == 'model.attention.linformer.max_len':
    config.model.attention.name = 'linformer'
    config.model.causal = False
  name = key.split('.')[2] if key.startswith('model.attention.') and key.count('.') == 3 else None
  if name:
    config.model.attention.name = name
  config.update_from_flattened_dict({key: value})
  field = (key if key != 'model.attention.name' or value == 'nope' else 'model.attention.name')
  t0 = time.perf_counter()
  with pytest.raises(ValueError, match=field.split('.')[-1]):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert time.perf_counter() - t0 < 5
  assert not os.path.exists(tmp_path / 'run')  # nothing written


def test_random_positions_shorter_than_the_sequence_are_refused_up_front(tmp_path):
  config = tiny(**{'model.positions': 'rope', 'task.random_positions': 16})  # seq_len 32
  with pytest.raises(ValueError, match='task.random_positions=16.*task.seq_len=32'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')  # nothing written


def _cli(*flags):
  return subprocess.run([sys.executable, 'experiments/train.py', '--config=configs/tiny.py',
                         *flags], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))


@pytest.mark.parametrize('flag, field', [
    ('--config.train.num_steps=0', 'train.num_steps'),
    ('--config.model.attnetion.name=performer', 'attnetion')])
def test_the_command_line_prints_a_user_error_as_one_line(tmp_path, flag, field):
  out = _cli(f'--workdir={tmp_path}', flag)
  assert out.returncode == 2
  lines = [line for line in out.stderr.splitlines() if line.strip()
           and 'DeprecationWarning' not in line]
  assert len(lines) == 1 and lines[0].startswith('error: ') and field in lines[0], out.stderr
