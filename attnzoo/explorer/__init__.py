"""Interactive attention explorer: one self-contained HTML page for a trained run.

  attnzoo.explorer.write(workdir)                        page for one eval sequence of the task
  attnzoo.explorer.write(workdir, text='abcabc')         page for a text (see `tokens_from_text`)
  attnzoo.explorer.write(workdir, compare=other_workdir)  two runs side by side, and A - B

The page (inline JS/CSS/data, no network) shows the token strip (click a query token to see its
weights over the keys), the selected layer/head's matrix, and a layer x head grid of thumbnails
labelled with prefix-matching (`metrics.induction_score`) and previous-token scores. Its
teaching mode recomputes softmax(q.k / sqrt(D) / temperature) in the page from the raw q, k of
the selected head, with a causal mask toggle. The matrices shown otherwise are each variant's
effective attention `A [B, H, T, T]` (`model(tokens, return_attention=True)`).

Data travel base64-encoded: attention as uint16 (w * 65535, error < 1e-5), q and k as float32.
"""
from __future__ import annotations

import base64
import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from attnzoo import attention, metrics, train
from attnzoo.explorer.page import TEMPLATE

BOS = 0


def _check(cond, field, value, why):
  if not cond:
    raise ValueError(f'{field}={value!r}: {why}')


def tokens_from_text(text: str, vocab_size: int):
  """text -> (tokens [T] int32, labels [T] str) in a task vocabulary of `vocab_size` ids.

  Whitespace-separated integers ('0 5 3 5 3') are token ids, used as given. Any other text is
  read character by character: BOS (id 0) first, then each distinct character takes the next
  free id from 1 in order of first appearance, so 'abcabc' -> 0 1 2 3 1 2 3. That keeps what
  the toy tasks are about (which tokens repeat, and where) and drops the spelling. Refused when
  the vocabulary has too few ids.
  """
  _check(text.strip() != '', 'text', text, 'empty')
  items = text.split()
  if all(s.lstrip('-').isdigit() for s in items):
    ids = [int(s) for s in items]
    bad = [i for i in ids if not 0 <= i < vocab_size]
    _check(not bad, 'text', text, f'token ids {bad} outside the vocabulary 0..{vocab_size - 1}')
    return np.asarray(ids, np.int32), items
  chars = list(dict.fromkeys(text))
  _check(len(chars) < vocab_size, 'text', text,
         f'{len(chars)} distinct characters, but the vocabulary has only {vocab_size - 1} ids '
         f'besides BOS')
  ids = {c: i + 1 for i, c in enumerate(chars)}
  labels = ['BOS'] + ['␣' if c == ' ' else repr(c)[1:-1] if c.isspace() else c for c in text]
  return np.asarray([BOS] + [ids[c] for c in text], np.int32), labels


def task_sample(config):
  """One eval sequence of the run's task: (tokens [T] int32, labels [T] str)."""
  tokens = np.asarray(train.batch_for(config, 0, 'eval')['inputs'][0], np.int32)
  return tokens, [str(t) for t in tokens]


def raw_qk(model, tokens):
  """tokens [1, T] -> per layer (q, k), each [H, T, D] float32 (k repeated over each K/V group's
  query heads), as the layer's attention core receives them."""
  x = model.embed_tokens(tokens)
  out = []
  for block in model.blocks:
    q, k, _ = block.attn.project(block.norm1(x))
    k = jnp.repeat(k, q.shape[2] // k.shape[2], axis=2)  # [1, T, H, D]
    out.append((np.asarray(q[0].transpose(1, 0, 2)), np.asarray(k[0].transpose(1, 0, 2))))
    x, _, _ = block(x, causal=model.causal)
  return out


def _b64(a, dtype):
  return base64.b64encode(np.ascontiguousarray(a, dtype).tobytes()).decode('ascii')


def _check_fits(model, tokens, field, value):
  vocab = model.embed.num_embeddings
  _check(all(block.cross is None for block in model.blocks), field, value,
         'encoder-decoder runs are not supported (the explorer shows self-attention)')
  _check(int(tokens.max()) < vocab, field, value, f'token {tokens.max()} is outside the '
         f'vocabulary 0..{vocab - 1}')
  _check(len(tokens) <= model.max_len, field, value,
         f'{len(tokens)} tokens are longer than model.max_len={model.max_len}')


def with_variant(workdir: str, spec: str):
  """The run's model with another attention core, spec = 'name[:option=value,...]', and its
  config: the same trained weights, so the page shows how another mechanism (a Performer's
  features, a Longformer's window) mixes the same q, k, v. Refused when the variant needs
  different weights (another number of K/V heads, shared Q and K)."""
  model, config = train.load_run(workdir)
  name, _, options = spec.partition(':')
  _check(name in attention.variant_names(), 'compare_variant', spec,
         f'unknown variant {name!r}; known: {", ".join(attention.variant_names())}')
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.attention.name = name
  for item in filter(None, options.split(',')):
    key, _, value = item.partition('=')
    old = config.model.attention[name].get(key)
    _check(old is not None, 'compare_variant', spec, f'{name} has no option {key!r}')
    config.model.attention[name][key] = (value.lower() in ('1', 'true') if isinstance(old, bool)
                                         else type(old)(value))
  other, _ = train.build(config)
  want = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  have = dict(nnx.to_flat_state(nnx.state(other, nnx.Param)))
  for key, value in want.items():
    _check(key in have and have[key].shape == value.shape, 'compare_variant', spec,
           f'needs other weights than the run has ({"/".join(map(str, key))})')
  nnx.update(other, nnx.from_flat_state(want))
  other.eval()
  return other, config


def run_data(name: str, tokens, model, config):
  """What the page needs about one model on tokens [T]: its attention, scores and raw q, k."""
  t = jnp.asarray(tokens)[None]  # [1, T]
  _, attns = model(t, return_attention=True)
  A = np.stack([np.asarray(a[0], np.float32) for a in attns])  # [L, H, T, T]
  qk = raw_qk(model, t)
  return {
      'name': name,
      'variant': config.model.attention.name,
      'causal': bool(model.causal),
      'L': A.shape[0], 'H': A.shape[1], 'D': qk[0][0].shape[-1],
      'attn': _b64(np.round(np.clip(A, 0, 1) * 65535), np.uint16),
      'q': _b64(np.stack([q for q, _ in qk]), np.float32),
      'k': _b64(np.stack([k for _, k in qk]), np.float32),
      'induction': [np.asarray(metrics.induction_score(a, t)).round(3).tolist() for a in attns],
      'prev': [np.asarray(metrics.previous_token_score(a)).round(3).tolist() for a in attns],
  }


def write(workdir: str, tokens=None, *, text: str | None = None, compare: str | None = None,
          compare_variant: str | None = None, path: str | None = None) -> str:
  """Writes the explorer page for the run in `workdir` and returns its path.

  tokens [T] ints, or `text` (see `tokens_from_text`), or neither: one eval sequence of the
  run's task. `compare`: a second run's workdir, shown side by side on the same tokens;
  `compare_variant`: the same run with another attention core instead (see `with_variant`).
  `path` defaults to workdir/explorer.html.
  """
  model, config = train.load_run(workdir)
  _check(tokens is None or text is None, 'text', text, 'give tokens or text, not both')
  if text is not None:
    tokens, labels = tokens_from_text(text, model.embed.num_embeddings)
  elif tokens is None:
    tokens, labels = task_sample(config)
  else:
    tokens = np.asarray(tokens, np.int32).reshape(-1)
    labels = [str(t) for t in tokens]
  _check_fits(model, tokens, 'text' if text is not None else 'tokens',
              text if text is not None else tokens.tolist())
  _check(compare is None or compare_variant is None, 'compare_variant', compare_variant,
         'give compare or compare_variant, not both')
  name = os.path.basename(os.path.normpath(workdir))
  runs = [run_data(name, tokens, model, config)]
  if compare is not None:
    other, other_config = train.load_run(compare)
    _check_fits(other, tokens, 'compare', compare)
    runs.append(run_data(os.path.basename(os.path.normpath(compare)), tokens, other,
                         other_config))
  if compare_variant is not None:
    other, other_config = with_variant(workdir, compare_variant)
    runs.append(run_data(f'{name} as {compare_variant}', tokens, other, other_config))
  data = {'labels': labels, 'T': len(tokens), 'task': config.task.name, 'runs': runs}
  path = path or os.path.join(workdir, 'explorer.html')
  # '</' cannot end the inline <script> early once escaped.
  blob = json.dumps(data, separators=(',', ':')).replace('</', '<\\/')
  with open(path, 'w') as f:
    f.write(TEMPLATE.replace('__DATA__', blob))
  return path
