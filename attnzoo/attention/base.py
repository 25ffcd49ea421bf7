"""The attention-variant contract: registry, capabilities, input checks, shared math.

Layout is JAX's own: q [B, T, H, D], k and v [B, S, G, D] with H % G == 0 (G == H is MHA,
G == 1 is MQA). GQA is computed by grouping query heads as [B, T, G, R, D] with R = H // G,
never by repeating K/V. `key_mask` is bool [B, S], True = may attend. A query row with no key
to attend to returns zeros (and zero gradients), never NaN.

A variant is one file: a frozen options dataclass, a pure function, and a subclass of
`Attention` registered with `@register(name, ...)`. Presets (`causal`, `mqa`, ...) are extra
registry entries that point at a mechanism with other defaults, not copies of it.

The subclass also declares what the rest of the code reads about it, each a classmethod of its
options with a default here: `decodable` (attends over a KV cache one token at a time),
`layer_shared` (one instance serves every layer), `fit_options` (how its options follow the
sequence length). `random = True` marks variants that draw random projections per call; they
take an explicit PRNG key `rng` so that they are pure functions under jax.jit / grad / vmap.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import einops
import jax
import jax.numpy as jnp
from flax import nnx

# Large finite negative logit: exp() underflows to 0, and a fully masked row stays finite
# (uniform before we zero it) so neither outputs nor gradients turn into NaN.
NEG_INF = -1e30


@dataclasses.dataclass(frozen=True)
class Capabilities:
  causal: bool  # can run causally (no position sees a later one)
  cross: bool  # allows T != S
  key_mask: bool  # honours key_mask
  exact: bool  # equals softmax attention
  cost: str  # e.g. "N^2", "N*w", "N log N", "N*k", "N*m"
  shared_qk: bool = False  # keys are derived from queries (Reformer); no K projection needed


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str
  module: type['Attention']
  capabilities: Capabilities
  default_causal: bool = False
  preset: dict[str, Any] = dataclasses.field(default_factory=dict)
  # How many K/V heads MultiHeadAttention projects, from (num_heads, num_kv_heads).
  kv_heads: Callable[[int, int], int] = lambda h, g: g
  doc: str = ''


_REGISTRY: dict[str, Entry] = {}


def register(name: str, *, capabilities: Capabilities, default_causal: bool = False,
             kv_heads: Callable[[int, int], int] | None = None, doc: str = '', **preset):
  """Class decorator (or plain call with `module=`) that adds a registry entry."""
  def add(module):
    if name in _REGISTRY:
      raise ValueError(f'attention variant {name!r} is already registered')
    fields = {f.name for f in dataclasses.fields(module.Options)}
    for key in preset:
      if key not in fields:
        raise ValueError(f'preset {name!r} sets unknown option {key!r}')
    _REGISTRY[name] = Entry(name, module, capabilities, default_causal, preset,
                            kv_heads or (lambda h, g: g), doc or (module.__doc__ or '').strip())
    return module
  return add


def get(name: str) -> Entry:
  if name not in _REGISTRY:
    raise ValueError(f'unknown attention variant name={name!r}; known: {", ".join(variant_names())}')
  return _REGISTRY[name]


def variant_names() -> tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


def capabilities(name: str) -> Capabilities:
  return get(name).capabilities


def default_options(name: str) -> dict[str, Any]:
  """The options a variant runs with when none are given (its preset applied)."""
  entry = get(name)
  return {**dataclasses.asdict(entry.module.Options()), **entry.preset}


def make_options(name: str, **options):
  entry = get(name)
  fields = {f.name for f in dataclasses.fields(entry.module.Options)}
  for key in options:
    if key not in fields:
      raise ValueError(f'unknown option {key!r} for attention variant {name!r}; '
                       f'known: {", ".join(sorted(fields)) or "(none)"}')
  return entry.module.Options(**{**entry.preset, **options})


def make_attention(name: str, *, rngs: nnx.Rngs, **options) -> 'Attention':
  """Builds the nnx.Module of variant `name`; unknown names and bad options raise ValueError."""
  entry = get(name)
  return entry.module(make_options(name, **options), rngs=rngs, entry=entry)


def fit_options(name: str, options: dict[str, Any], seq_len: int) -> dict[str, Any]:
  """`options` for variant `name` adjusted to sequences of `seq_len` (e.g. linformer's max_len);
  the variant's own `fit_options` decides, the default returns them unchanged."""
  return get(name).module.fit_options(dict(options), seq_len)


def layer_shared(name: str, options: dict[str, Any]) -> bool:
  """Whether one module of variant `name` with `options` is shared by every layer."""
  return get(name).module.layer_shared(make_options(name, **options))


def check(cond: bool, field: str, value: Any, why: str):
  if not cond:
    raise ValueError(f'{field}={value!r}: {why}')


class Attention(nnx.Module):
  """Base of every variant. Subclasses define `Options` and implement `forward` and `matrix`.

  Called as `module(q, k, v, *, causal=None, key_mask=None, rng=None)`; `causal=None` is the
  variant's default. `attention_matrix` returns A [B, H, T, S] with out == apply_matrix(A, v).

  `rng` is the PRNG key a `random` variant draws this call's projections from; without it, a
  random variant uses its fixed key in eval mode (or when its options fix the draw) and else the
  next key of its 'attention' stream, which mutates the module (so a module built outside a
  plain jax transform needs `rng` or eval mode inside it). Deterministic variants ignore it.
  """

  random = False  # draws random projections per call (from `rng`)

  @dataclasses.dataclass(frozen=True)
  class Options:
    pass

  def __init__(self, options, *, rngs: nnx.Rngs, entry: Entry):
    self.options = options
    self.name = entry.name
    self.caps = entry.capabilities
    self.default_causal = entry.default_causal
    self.deterministic = False  # module.eval() sets True: random variants become repeatable

  def __call__(self, q, k, v, *, causal: bool | None = None, key_mask=None, rng=None):
    causal = self.validate(q, k, v, causal, key_mask)
    extra = {'rng': rng} if self.random else {}
    return self.forward(q, k, v, causal=causal, key_mask=key_mask, **extra)

  def attention_matrix(self, q, k, v, *, causal: bool | None = None, key_mask=None, rng=None):
    causal = self.validate(q, k, v, causal, key_mask)
    extra = {'rng': rng} if self.random else {}
    return self.matrix(q, k, v, causal=causal, key_mask=key_mask, **extra)

  def redraw_key(self, rng):
    """The key of a training-time redraw: `rng` if given, else the next key of the module's
    'attention' stream (which mutates the module)."""
    return self.rngs.attention() if rng is None else rng

  # ---- what the variant declares about itself (overridden in its file) ----

  @classmethod
  def decodable(cls, options) -> bool:
    """Whether `attend_cache` (attention over a KV cache) equals this variant's causal core."""
    return False

  @classmethod
  def layer_shared(cls, options) -> bool:
    """Whether the model builds one instance and reuses it in every layer."""
    return False

  @classmethod
  def fit_options(cls, options: dict[str, Any], seq_len: int) -> dict[str, Any]:
    """Options adjusted to sequences of `seq_len`; the default keeps them."""
    return options

  def attend_cache(self, q, k_cache, v_cache, *, positions):
    """Causal attention of q [B, T, H, D] at `positions` [T] over a KV cache, keys
    k_cache [B, G, D, S] (transposed) and values v_cache [B, G, S, D], where key j is visible
    to the query at position p when j <= p. Exact softmax, which is what decodable variants
    compute; a variant with another cache overrides this."""
    return cached_attention(q, k_cache, v_cache, positions)

  def forward(self, q, k, v, *, causal, key_mask):
    raise NotImplementedError

  def matrix(self, q, k, v, *, causal, key_mask):
    raise NotImplementedError

  def validate(self, q, k, v, causal, key_mask) -> bool:
    """Checks shapes and capabilities in Python (at trace time) and returns the causal flag."""
    n = self.name
    for field, x in (('q', q), ('k', k), ('v', v)):
      check(getattr(x, 'ndim', None) == 4, f'{n}: {field}.shape', getattr(x, 'shape', None),
            'expected rank 4 [batch, length, heads, head_dim]')
    (B, T, H, D), (_, S, G, _) = q.shape, v.shape
    check(k.shape[:2] == v.shape[:2], f'{n}: k.shape', k.shape,
          f'batch and length must match v.shape={v.shape}')
    check(k.shape[3] == D, f'{n}: k.shape[-1]', k.shape[3], f'head_dim must equal q head_dim {D}')
    check(v.shape[0] == B, f'{n}: v.shape[0]', v.shape[0], f'batch must equal q batch {B}')
    if not self.caps.shared_qk:
      check(k.shape[2] == G, f'{n}: k.shape[2]', k.shape[2], f'k and v heads must match ({G})')
    for field, g in (('k heads', k.shape[2]), ('v heads', G)):
      check(g > 0 and H % g == 0, f'{n}: {field}', g, f'must divide the {H} query heads')
    check(T == S or self.caps.cross, f'{n}: key length S', S,
          f'variant has no cross capability, so S must equal query length T={T}')
    if key_mask is not None:
      shape = getattr(key_mask, 'shape', None)
      check(shape == (B, S), f'{n}: key_mask.shape', shape, f'expected (batch, S) = {(B, S)}')
      check(key_mask.dtype == jnp.bool_, f'{n}: key_mask.dtype', key_mask.dtype, 'expected bool')
      check(self.caps.key_mask, f'{n}: key_mask', 'given', 'variant does not support key_mask')
    causal = self.default_causal if causal is None else causal
    check(isinstance(causal, bool), f'{n}: causal', causal, 'expected a Python bool')
    check(not causal or self.caps.causal, f'{n}: causal', causal,
          'variant is not causal-capable')
    return causal


# ---- shared math ------------------------------------------------------------------------------

def group_heads(q, num_kv_heads: int):
  """q [B, T, H, D] -> [B, T, G, R, D] with R = H // G query heads per K/V head."""
  return einops.rearrange(q, 'b t (g r) d -> b t g r d', g=num_kv_heads)


def mask_bias(T: int, S: int, *, causal: bool, key_mask=None, window: int | None = None,
              q_pos=None, k_pos=None):
  """Bool mask broadcastable to [B, 1, 1, T, S] (True = attend), or None if nothing masked.

  Causal is top-left aligned (query i sees keys j <= i), as in jax.nn.dot_product_attention.
  """
  mask = None
  if causal or window is not None:
    qi = jnp.arange(T)[:, None] if q_pos is None else q_pos[:, None]
    kj = jnp.arange(S)[None, :] if k_pos is None else k_pos[None, :]
    mask = jnp.ones((T, S), bool)
    if causal:
      mask &= kj <= qi
    if window is not None:
      mask &= jnp.abs(qi - kj) <= window
    mask = mask[None, None, None]
  if key_mask is not None:
    km = key_mask[:, None, None, None, :]
    mask = km if mask is None else mask & km
  return mask


def masked_softmax(scores, mask, *, may_empty_rows: bool = True):
  """Softmax over the last axis in float32; rows with no allowed key become all zeros.

  `may_empty_rows=False` (e.g. causal without key mask: key 0 is always visible) skips the
  extra pass that zeroes empty rows.
  """
  scores = scores.astype(jnp.float32)
  if mask is None:
    return jax.nn.softmax(scores, axis=-1)
  probs = jax.nn.softmax(jnp.where(mask, scores, NEG_INF), axis=-1)
  return jnp.where(mask.any(-1, keepdims=True), probs, 0.0) if may_empty_rows else probs


def cached_attention(q, k_cache, v_cache, positions):
  """Causal softmax attention of q [B, T, H, D] at `positions` [T] over k_cache [B, G, D, S]
  (keys transposed) and v_cache [B, G, S, D] -> [B, T, H, D]; key j is seen from position p
  when j <= p.

  The R = H // G query heads of a group and the T positions form one row axis M = T·R, so each
  group is one [M, D] x [D, S] product and one [M, S] x [S, D] product that read the cache once,
  never repeating K/V (with keys as [S, D], XLA's CPU backend ran the product up to 2x slower
  for 2 query heads per K/V head)."""
  B, T, H, D = q.shape
  G, S = v_cache.shape[1], v_cache.shape[2]
  R = H // G
  qg = einops.rearrange(q, 'b t (g r) d -> b g (t r) d', g=G).astype(jnp.float32) / jnp.sqrt(D)
  s = jnp.einsum('bgmd,bgds->bgms', qg, k_cache.astype(jnp.float32))  # [B, G, M, S]
  row_pos = jnp.repeat(positions, R)  # [M]: row m is the query at positions[m // R]
  mask = jnp.arange(S)[None, :] <= row_pos[:, None]  # [M, S]
  p = masked_softmax(s, mask[None, None], may_empty_rows=False)
  out = jnp.einsum('bgms,bgsd->bgmd', p, v_cache.astype(jnp.float32))  # [B, G, M, D]
  return einops.rearrange(out, 'b g (t r) d -> b t (g r) d', t=T).astype(q.dtype)


def apply_matrix(A, v):
  """A [B, H, T, S] applied to v [B, S, G, D] -> [B, T, H, D], grouped per GQA."""
  G = v.shape[2]
  A = einops.rearrange(A, 'b (g r) t s -> b g r t s', g=G)
  out = jnp.einsum('bgrts,bsgd->btgrd', A.astype(jnp.float32), v.astype(jnp.float32))
  return einops.rearrange(out, 'b t g r d -> b t (g r) d').astype(v.dtype)
