"""Explorer page: built from tiny trained runs, checked in headless Chromium with the network off.

Without playwright or chromium these tests skip, except under CI (env CI set), where they fail.
"""
import os
import pathlib
import shutil
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

import attnzoo
from attnzoo import explorer, metrics, train
from helpers import ROOT, load_config

T, LAYERS, HEADS = 128, 2, 8
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--no-first-run']


def train_tiny(workdir, name='causal'):
  """configs/tiny.py at 128 tokens, 2 layers x 8 heads (GQA: 2 K/V heads), 4 steps."""
  c = load_config('tiny')
  c.task.seq_len = c.model.max_len = T
  c.model.num_layers, c.model.num_heads, c.model.d_model = LAYERS, HEADS, 32
  c.model.attention.name = name
  train.train_and_evaluate(c, str(workdir))
  return str(workdir)


@pytest.fixture(scope='module')
def dense_run(tmp_path_factory):
  return train_tiny(tmp_path_factory.mktemp('dense'))


@pytest.fixture(scope='module')
def browser():
  try:
    from playwright.sync_api import sync_playwright
  except ImportError:
    sync_playwright = None
  chromium = shutil.which('chromium')
  if sync_playwright is None or chromium is None:
    why = 'playwright is not installed' if sync_playwright is None else 'no chromium on PATH'
    if os.environ.get('CI'):
      pytest.fail(f'{why}: CI must run the browser tests')
    pytest.skip(why)
  with sync_playwright() as p:
    b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
    yield b
    b.close()


class Page:
  """The explorer page in a fresh browser page; every request not to file:// or data: is
  aborted and recorded in `blocked`."""

  def __init__(self, browser, path):
    self.page = browser.new_page(viewport={'width': 1280, 'height': 900})
    self.blocked, self.errors = [], []
    self.page.route('**/*', self._route)
    self.page.on('pageerror', lambda e: self.errors.append(str(e)))
    self.url = pathlib.Path(path).as_uri()
    self.load_s = [self.load() for _ in range(3)]

  def _route(self, route):
    if route.request.url.startswith(('file:', 'data:')):
      route.continue_()
    else:
      self.blocked.append(route.request.url)
      route.abort()

  def load(self):
    start = time.perf_counter()
    self.page.goto(self.url)
    self.page.wait_for_function('window.explorerReady !== undefined')
    return time.perf_counter() - start

  def weights(self, run=0):
    """The weights the strip shows for the selected query: (as printed, full precision)."""
    cells = self.page.eval_on_selector_all(
        f'.tok .r{run}', 'els => els.map(e => [e.textContent, e.dataset.w])')
    return np.array([float(a) for a, _ in cells]), np.array([float(b) for _, b in cells])

  def set_temperature(self, value):
    self.page.eval_on_selector('#temp', '(e, v) => { e.value = v; e.dispatchEvent('
                               'new Event("input")); }', str(value))


def model_attention(workdir, tokens):
  model, _ = attnzoo.load_run(workdir)
  _, attns = model(jnp.asarray(tokens)[None], return_attention=True)
  return model, [np.asarray(a[0]) for a in attns]  # [H, T, T] per layer


def test_clicked_token_shows_the_model_attention_row_offline(browser, dense_run, tmp_path):
  path = explorer.write(dense_run)
  page = Page(browser, path)
  tokens, _ = explorer.task_sample(train.load_config(dense_run))
  labels = page.page.eval_on_selector_all('.tok b', 'els => els.map(e => e.textContent)')
  assert labels == [str(t) for t in tokens] and len(tokens) == T
  _, attns = model_attention(dense_run, tokens)
  scores = np.concatenate([  # [L * H, 2]: prefix-matching, previous-token
      np.stack([metrics.induction_score(A[None], tokens[None]),
                metrics.previous_token_score(A[None])], 1) for A in attns])
  best = divmod(int(scores[:, 0].argmax()), HEADS)  # the page opens on the best induction head
  assert (page.page.input_value('#layer'), page.page.input_value('#head')) == tuple(map(str, best))

  page.page.click('.grid td >> nth=13')  # first grid, row-major: layer 1, head 5
  assert (page.page.input_value('#layer'), page.page.input_value('#head')) == ('1', '5')
  for query in (100, 7):
    page.page.click(f'.tok[data-i="{query}"]')
    shown, _ = page.weights()
    np.testing.assert_allclose(shown, attns[1][5, query], atol=1e-4)
  assert attns[1][5, 7, :8].max() > 1e-3  # the row compared is not all zeros

  # Thumbnail labels: prefix-matching and previous-token scores of every head, 2 decimals.
  cells = page.page.eval_on_selector_all('.grid td', 'els => els.map(e => e.textContent)')
  shown = np.array([[float(c.split()[1]), float(c.split()[-1])] for c in cells])
  np.testing.assert_allclose(shown, scores, atol=0.006)

  assert page.blocked == [] and page.errors == []
  assert min(page.load_s) < 1.0, page.load_s
  print(f'page {os.path.getsize(path) / 1e6:.2f} MB, load {min(page.load_s):.3f} s')
  page.page.screenshot(path=str(tmp_path / 'explorer.png'), full_page=True)
  assert (tmp_path / 'explorer.png').stat().st_size > 10_000


def softmax(s, causal):
  if causal:
    s = np.where(np.tril(np.ones_like(s, bool)), s, -np.inf)
  e = np.exp(s - s.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_teaching_mode_recomputes_the_softmax_from_raw_q_and_k(browser, dense_run):
  page = Page(browser, explorer.write(dense_run))
  tokens, _ = explorer.task_sample(train.load_config(dense_run))
  model, attns = model_attention(dense_run, tokens)
  layer, head, query = 1, 3, 90
  page.page.select_option('#layer', str(layer))
  page.page.select_option('#head', str(head))
  page.page.click(f'.tok[data-i="{query}"]')
  page.page.check('#teach')
  # Causal, temperature 1: the raw q, k give back the (dense) model's own attention.
  shown, _ = page.weights()
  np.testing.assert_allclose(shown, attns[layer][head, query], atol=1e-4)

  page.page.uncheck('#causal')
  _, free = page.weights()
  assert free[query + 1:].max() > 1e-3 and abs(free.sum() - 1) < 1e-6
  page.page.check('#causal')
  _, masked = page.weights()
  assert np.all(masked[query + 1:] == 0) and abs(masked.sum() - 1) < 1e-6

  q, k = explorer.raw_qk(model, jnp.asarray(tokens)[None])[layer]  # [H, T, D] each
  scores = q[head] @ k[head].T / np.sqrt(q.shape[-1])  # [T, T]
  for causal in (True, False):
    page.page.set_checked('#causal', causal)
    page.set_temperature(2.5)
    shown, full = page.weights()
    want = softmax(scores / 2.5, causal)[query]
    np.testing.assert_allclose(shown, want, atol=1e-4)
    np.testing.assert_allclose(full, want, atol=1e-5)
  assert page.errors == []


def test_comparison_shows_both_runs_and_their_difference(browser, dense_run, tmp_path):
  other = train_tiny(tmp_path / 'performer', 'performer')
  page = Page(browser, explorer.write(dense_run, compare=other, path=str(tmp_path / 'x.html')))
  tokens, _ = explorer.task_sample(train.load_config(dense_run))
  _, dense = model_attention(dense_run, tokens)
  _, performer = model_attention(other, tokens)
  page.page.select_option('#layer', '0')
  page.page.select_option('#head', '2')
  page.page.click('.tok[data-i="60"]')
  np.testing.assert_allclose(page.weights(0)[0], dense[0][2, 60], atol=1e-4)
  np.testing.assert_allclose(page.weights(1)[0], performer[0][2, 60], atol=1e-4)
  captions = page.page.eval_on_selector_all('#mats figcaption', 'els => els.map(e => e.textContent)')
  assert len(captions) == 3 and captions[2].startswith('difference')
  assert page.page.locator('.grid').count() == 2
  assert page.blocked == [] and page.errors == []


def test_a_variant_swap_keeps_the_weights_and_shows_the_other_core(browser, dense_run, tmp_path):
  spec = 'performer:num_features=16'
  swapped, config = explorer.with_variant(dense_run, spec)
  assert config.model.attention.name == 'performer'
  assert config.model.attention.performer.num_features == 16
  model, _ = attnzoo.load_run(dense_run)
  for a, b in zip(model.blocks, swapped.blocks):
    np.testing.assert_array_equal(a.attn.q_proj.kernel[...], b.attn.q_proj.kernel[...])
  page = Page(browser, explorer.write(dense_run, compare_variant=spec,
                                      path=str(tmp_path / 'x.html')))
  tokens, _ = explorer.task_sample(train.load_config(dense_run))
  _, dense = model_attention(dense_run, tokens)
  _, approx = swapped(jnp.asarray(tokens)[None], return_attention=True)
  page.page.select_option('#layer', '1')
  page.page.select_option('#head', '0')
  page.page.click('.tok[data-i="70"]')
  np.testing.assert_allclose(page.weights(1)[0], approx[1][0, 0, 70], atol=1e-4)
  assert np.abs(page.weights(1)[0] - dense[1][0, 70]).max() > 1e-3  # another matrix
  page.page.select_option('#layer', '0')  # layer 0 sees the same inputs in both models, so
  page.page.check('#teach')               # teaching mode gives both the same softmax(q.k)
  np.testing.assert_array_equal(page.weights(1)[1], page.weights(0)[1])
  assert page.errors == []


def test_a_variant_that_needs_other_weights_is_refused(dense_run):
  for spec, why in [('mqa', r'needs other weights than the run has \(blocks/0/attn/k_proj'),
                    ('nope', "unknown variant 'nope'; known: blockwise"),
                    ('performer:foo=1', "performer has no option 'foo'")]:
    with pytest.raises(ValueError, match=f"compare_variant='{spec}': {why}"):
      explorer.with_variant(dense_run, spec)


def test_text_maps_characters_in_order_of_first_appearance():
  tokens, labels = explorer.tokens_from_text('abcab c', vocab_size=16)
  assert tokens.tolist() == [0, 1, 2, 3, 1, 2, 4, 3]
  assert labels == ['BOS', 'a', 'b', 'c', 'a', 'b', '␣', 'c']
  tokens, labels = explorer.tokens_from_text('0 5 3 5', vocab_size=16)
  assert tokens.tolist() == [0, 5, 3, 5] and labels == ['0', '5', '3', '5']


@pytest.mark.parametrize('text, why', [
    ('abcdefghijklmnop', '16 distinct characters, but the vocabulary has only 15 ids'),
    ('0 3 16', r'token ids \[16\] outside the vocabulary 0..15'),
    ('  ', 'empty'),
])
def test_text_the_vocabulary_cannot_hold_is_refused(text, why):
  with pytest.raises(ValueError, match=f'text={text!r}: {why}'):
    explorer.tokens_from_text(text, vocab_size=16)


def test_command_line_writes_the_page_and_refuses_a_long_text(dense_run, tmp_path):
  cmd = [sys.executable, os.path.join(ROOT, 'experiments', 'explore.py'),
         f'--workdir={dense_run}']
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
  out = tmp_path / 'page.html'
  done = subprocess.run(cmd + ['--text=abcabc', f'--out={out}'], env=env, cwd=ROOT,
                        capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  assert f'explorer page written to {out}' in done.stdout
  html = out.read_text()
  assert '"labels":["BOS","a","b","c","a","b","c"]' in html
  assert 'http://' not in html and 'https://' not in html  # nothing to fetch
  done = subprocess.run(cmd + ['--text=' + 'x' * (T + 1)], env=env, cwd=ROOT,
                        capture_output=True, text=True)
  assert done.returncode != 0
  assert f"text='{'x' * (T + 1)}': {T + 2} tokens are longer than model.max_len={T}" in done.stderr
