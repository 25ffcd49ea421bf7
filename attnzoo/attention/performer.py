"""Performer attention (Choromanski et al. 2021, "Rethinking Attention with Performers").

FAVOR+ replaces the softmax kernel exp(q·k / sqrt(D)) by an unbiased estimate phi(q)·phi(k)
built from m positive orthogonal random features W [m, D]:

    phi(x) = exp(W x - |x|^2 / 2) / sqrt(m),   x = q / D^(1/4) or k / D^(1/4),

so out_t = sum_s phi(q_t)·phi(k_s) v_s / sum_s phi(q_t)·phi(k_s) never forms the [T, S] matrix.
`kernel='relu'` uses phi(x) = relu(W x) / sqrt(m) instead (a different kernel, not softmax).

Stabilization: a constant subtracted from the exponent cancels in the normalization. Queries
subtract their own row max. Each key s is kept as f_s·exp(r_s), with r_s its row max and
f_s = exp(l_s - r_s) + eps (the epsilon keeping features positive is relative to the row max,
so every shift below cancels exactly, eps included). Bidirectional: the keys are measured
against one max per (batch, K/V head) over the unmasked keys, the standard FAVOR+ choice.
Causal: query i measures keys against P_i, the running max of r_j over j <= i, so a later key
never changes an earlier output (a global max would, through underflow) and the largest visible
key weighs exactly 1, so the normalizer cannot underflow. The shifts are constants for
differentiation (they cancel, so gradients are exact up to eps).

Bidirectional: K'^T V [m, D] and sum K' [m] once per K/V head, O((T + S)·m·D) time and memory.
Causal (top-left aligned, query i sees keys j <= i, also for T != S): the sequence is cut into
chunks of `chunk_size` c; within a chunk a [c, c] lower-triangular product, across chunks an
exclusive prefix sum of per-chunk K'^T V summaries (each rescaled to the running max, a few
small triangular products instead of a scan, see `_decayed_prefix`). Plain autodiff through
these gives a backward with the same O(T·m·D) time and O(T/c·m·D + T·c) memory, no [T, S]
matrix, and a fast compile.

Features: `redraw=True` draws new features on every training call, from the call's `rng` key if
given (a pure function under jax.jit / grad / vmap) or else from the module's 'attention' RNG
stream; `redraw=False`, and always in eval mode (`module.eval()`), uses fixed features derived
from a PRNG key drawn once at construction (stored in a non-trainable variable; the head size
is only known at call time, so the key rather than W is stored). GQA: query heads are grouped
[B, T, G, R, D]; the K/V summaries are computed once per K/V head and shared by its R query heads.
Masked keys have zero features, so they add nothing to any sum; a query row with no allowed key
has a zero normalizer and returns zeros with zero gradients.
Cost: O(T·m·D) time and memory ('N*m').
"""
from __future__ import annotations

import dataclasses
import math

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from attnzoo.attention import base

KERNELS = ('softmax', 'relu')


def orthogonal_features(key, num_features: int, head_dim: int):
  """Random features W [m, D]: blocks of D orthonormal rows, each row rescaled to the norm of
  an independent Gaussian vector, so every row is marginally N(0, I) (FAVOR+'s ORF)."""
  n = -(-num_features // head_dim)
  # One draw (one threefry expansion to compile): [:, :, :D] is orthogonalized per block,
  # the rows of [:, :, D:] give the norms.
  gauss = jax.random.normal(key, (n, head_dim, 2 * head_dim), jnp.float32)
  qmat, rmat = jnp.linalg.qr(gauss[:, :, :head_dim])  # [n, D, D]
  # Sign fix makes each block Haar-distributed rather than QR-convention dependent.
  signs = jnp.sign(jnp.diagonal(rmat, axis1=-2, axis2=-1))  # [n, D]
  qmat = qmat * signs[:, None, :]
  rows = jnp.swapaxes(qmat, -1, -2).reshape(n * head_dim, head_dim)  # [n * D, D]
  norms = jnp.linalg.norm(gauss[:, :, head_dim:].reshape(n * head_dim, head_dim), axis=-1)
  return (rows * norms[:, None])[:num_features]


def query_features(q, features, *, kernel: str = 'softmax', eps: float = 1e-6):
  """q [..., D] -> phi(q) [..., m] (float32), stabilized by each row's own max."""
  m, D = features.shape
  x = q.astype(jnp.float32) * D ** -0.25
  proj = jnp.einsum('...d,md->...m', x, features)  # [..., m]
  if kernel == 'relu':
    return (jax.nn.relu(proj) + eps) / jnp.sqrt(m)
  logits = proj - 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)
  row_max = jax.lax.stop_gradient(logits.max(-1, keepdims=True))  # cancels per query row
  return (jnp.exp(logits - row_max) + eps) / jnp.sqrt(m)


def key_feature_parts(k, features, key_mask=None, *, kernel: str = 'softmax',
                      eps: float = 1e-6):
  """k [B, S, G, D] -> (f [B, S, G, m], r [B, S, G]) with phi(k_s) = f_s · exp(r_s), float32.

  Softmax kernel: r_s is the key's row max of the exponent and f_s = exp(l_s - r_s) + eps <= 1
  + eps (the epsilon is relative to the row max). relu kernel: r_s = 0. Masked keys: f_s = 0,
  r_s = NEG_INF. r is a constant for differentiation: it only sets scales that cancel.
  """
  m, D = features.shape
  x = k.astype(jnp.float32) * D ** -0.25
  proj = jnp.einsum('bsgd,md->bsgm', x, features)  # [B, S, G, m]
  valid = jnp.ones(k.shape[:2], bool) if key_mask is None else key_mask  # [B, S]
  if kernel == 'relu':
    feats, log_scale = jax.nn.relu(proj) + eps, jnp.zeros(proj.shape[:3])
  else:
    logits = proj - 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)  # [B, S, G, m]
    log_scale = jax.lax.stop_gradient(logits.max(-1))  # [B, S, G]
    feats = jnp.exp(logits - log_scale[..., None]) + eps
  feats = jnp.where(valid[:, :, None, None], feats, 0.0) / jnp.sqrt(m)
  return feats, jnp.where(valid[:, :, None], log_scale, base.NEG_INF)


def key_features(k, features, key_mask=None, *, kernel: str = 'softmax', eps: float = 1e-6):
  """k [B, S, G, D] -> phi(k) [B, S, G, m] (float32) up to one constant per (batch, K/V head):
  scaled by exp(-M) with M the max log scale over the unmasked keys, so it cancels in the
  normalization. Masked keys are exactly zero."""
  feats, log_scale = key_feature_parts(k, features, key_mask, kernel=kernel, eps=eps)
  head_max = log_scale.max(1, keepdims=True)  # [B, 1, G]; NEG_INF if every key is masked
  return feats * jnp.exp(log_scale - head_max)[..., None]  # masked: exp(<= 0) * 0


def _normalize(num, den):
  """num [..., D] / den [...]; rows with a zero normalizer (no allowed key) become zeros."""
  seen = den > 0
  return jnp.where(seen[..., None], num / jnp.where(seen, den, 1.0)[..., None], 0.0)


def _bidirectional(qf, kf, v):
  """qf [B, T, G, R, m], kf [B, S, G, m], v [B, S, G, D] -> num [B,T,G,R,D], den [B,T,G,R]."""
  kv = jnp.einsum('bsgm,bsgd->bgmd', kf, v)  # K'^T V per K/V head
  ksum = kf.sum(1)  # [B, G, m]
  return (jnp.einsum('btgrm,bgmd->btgrd', qf, kv), jnp.einsum('btgrm,bgm->btgr', qf, ksum))


def _decayed_prefix(scale, x):
  """h_n = sum_{n' <= n} exp(scale_n' - scale_n) x_n' along axis 1, for nondecreasing `scale`.

  scale [B, n, G] (x_n is measured at scale_n, NEG_INF where x_n == 0), x [B, n, G, m, E].
  Every weight is exp(<= 0), so nothing overflows. Two levels of small lower-triangular
  products (groups of ~sqrt(n) chunks, then across groups) instead of a scan: a handful of
  einsums that compile fast and differentiate plainly; O(n^1.5·m·E), a small fraction of the
  O(n·c·m·D) total while n = T / c <= c^2.
  """
  B, n, G = scale.shape
  n2 = math.isqrt(n - 1) + 1 if n > 1 else 1  # group size ceil(sqrt(n))
  n1 = -(-n // n2)  # number of groups
  pad = n1 * n2 - n
  scale = jnp.pad(scale, [(0, 0), (0, pad), (0, 0)], mode='edge').reshape(B, n1, n2, G)
  x = jnp.pad(x, [(0, 0), (0, pad), (0, 0), (0, 0), (0, 0)]).reshape(B, n1, n2, *x.shape[2:])
  # Within a group: weights exp(scale_j - scale_i) for j <= i.
  lower = (jnp.arange(n2)[:, None] >= jnp.arange(n2)[None, :])[None, None, :, :, None]
  expo = scale[:, :, None, :, :] - scale[:, :, :, None, :]  # [B, n1, i, j, G]
  local = jnp.einsum('baijg,bajgme->baigme', jnp.exp(jnp.where(lower, expo, base.NEG_INF)), x)
  # Across groups: each group's total (at its last scale), summed over earlier groups.
  last = scale[:, :, -1]  # [B, n1, G]
  last_prev = jnp.pad(last[:, :-1], [(0, 0), (1, 0), (0, 0)], constant_values=base.NEG_INF)
  earlier = (jnp.arange(n1)[:, None] > jnp.arange(n1)[None, :])[None, :, :, None]
  expo = last[:, None, :, :] - last_prev[:, :, None, :]  # [B, a, a', G]
  carried = jnp.einsum('bacg,bcgme->bagme', jnp.exp(jnp.where(earlier, expo, base.NEG_INF)),
                       local[:, :, -1])  # groups < a, at scale last_prev_a
  h = local + jnp.exp(last_prev[:, :, None, :] - scale)[..., None, None] * carried[:, :, None]
  return h.reshape(B, n1 * n2, *h.shape[3:])[:, :n]


def _causal(qf, kf, log_scale, v, chunk_size: int):
  """Causal prefix sums by chunks: qf [B,T,G,R,m], kf [B,S,G,m], log_scale [B,S,G] (from
  `key_feature_parts`), v [B,S,G,D] -> num [B,T,G,R,D], den [B,T,G,R].

  Query i sees keys j <= i (top-left aligned). Both sides are zero-padded to L, a multiple of
  the chunk size c >= max(T, S); padded keys are masked. Query i measures every key against
  P_i, the running max of the key log scales up to i, so every weight exp(r_j - P_i) <= 1,
  the largest visible key weighs 1 (the normalizer cannot underflow), and nothing depends on
  a later key. The summary of all earlier chunks is carried at the scale E_{n-1} reached at
  the end of chunk n - 1, rescaled chunk to chunk by exp(E_{n-1} - E_n) <= 1.
  """
  B, T, G, R, m = qf.shape
  S, D = v.shape[1], v.shape[-1]
  c = min(chunk_size, max(T, S))
  n = -(-max(T, S) // c)
  L = n * c
  pad = lambda x, length, value=0.0: jnp.pad(
      x, [(0, 0), (0, L - length)] + [(0, 0)] * (x.ndim - 2), constant_values=value)
  run_max = jax.lax.cummax(pad(log_scale, S, base.NEG_INF), axis=1)  # P [B, L, G]
  qc = pad(qf, T).reshape(B, n, c, G, R, m)
  kc = pad(kf, S).reshape(B, n, c, G, m)
  rc = pad(log_scale, S, base.NEG_INF).reshape(B, n, c, G)
  pc = run_max.reshape(B, n, c, G)
  # Values with a ones column: the last output column is the normalizer.
  vc = pad(jnp.concatenate([v, jnp.ones(v.shape[:3] + (1,), v.dtype)], -1), S)
  vc = vc.reshape(B, n, c, G, D + 1)
  # Within a chunk: a small masked [c, c] product with weights exp(r_j - P_i).
  tril = (jnp.arange(c)[:, None] >= jnp.arange(c)[None, :])[None, None, :, :, None]
  expo = rc[:, :, None, :, :] - pc[:, :, :, None, :]  # [B, n, i, j, G]
  weight = jnp.exp(jnp.where(tril, expo, base.NEG_INF))  # 0 above the diagonal
  weight = einops.rearrange(weight, 'b n i j g -> b n g 1 i j')
  scores = jnp.einsum('bnigrm,bnjgm->bngrij', qc, kc) * weight  # [B, n, G, R, c, c]
  intra = jnp.einsum('bngrij,bnjge->bnigre', scores, vc)
  # Across chunks: summaries at scale E_n (end-of-chunk running max), decayed prefix sums.
  end = pc[:, :, -1]  # E [B, n, G]
  end_prev = jnp.pad(end[:, :-1], [(0, 0), (1, 0), (0, 0)], constant_values=base.NEG_INF)
  local = jnp.exp(rc - end[:, :, None])  # [B, n, c, G], <= 1
  summary = jnp.einsum('bncgm,bncge->bngme', kc, vc * local[..., None])  # [B, n, G, m, D + 1]
  carried = _decayed_prefix(end, summary)  # chunks <= n, at scale E_n
  carried = jnp.pad(carried[:, :-1], [(0, 0), (1, 0), (0, 0), (0, 0), (0, 0)])  # chunks < n
  rescale = jnp.exp(end_prev[:, :, None, :] - pc)  # [B, n, c, G]: E_{n-1} -> P_i, <= 1
  inter = jnp.einsum('bnigrm,bngme->bnigre', qc, carried) * rescale[:, :, :, :, None, None]
  out = (intra + inter).reshape(B, L, G, R, D + 1)[:, :T]
  return out[..., :D], out[..., D]


def _feature_maps(q, k, key_mask, features, kernel, eps):
  qf = query_features(base.group_heads(q, k.shape[2]), features, kernel=kernel, eps=eps)
  return qf, key_features(k, features, key_mask, kernel=kernel, eps=eps)


def performer_attention(q, k, v, *, causal: bool = False, key_mask=None, features,
                        kernel: str = 'softmax', chunk_size: int = 64, eps: float = 1e-6):
  """FAVOR+ attention: q [B, T, H, D], k, v [B, S, G, D], features W [m, D] -> [B, T, H, D]."""
  qf = query_features(base.group_heads(q, k.shape[2]), features, kernel=kernel, eps=eps)
  vf = v.astype(jnp.float32)
  if causal:
    kf, log_scale = key_feature_parts(k, features, key_mask, kernel=kernel, eps=eps)
    num, den = _causal(qf, kf, log_scale, vf, chunk_size)
  else:
    kf = key_features(k, features, key_mask, kernel=kernel, eps=eps)
    num, den = _bidirectional(qf, kf, vf)
  out = _normalize(num, den)  # [B, T, G, R, D]
  return einops.rearrange(out, 'b t g r d -> b t (g r) d').astype(q.dtype)


def performer_matrix(q, k, *, causal: bool = False, key_mask=None, features,
                     kernel: str = 'softmax', eps: float = 1e-6):
  """Effective mixing matrix A [B, H, T, S] = normalized, masked phi(q) phi(k)^T (float32).

  This is also the naive O(T·S) form of the same computation: apply_matrix(A, v) equals
  performer_attention with the same features. Masked keys have zero columns.
  """
  qf, kf = _feature_maps(q, k, key_mask, features, kernel, eps)
  A = jnp.einsum('btgrm,bsgm->bgrts', qf, kf)  # [B, G, R, T, S]
  mask = base.mask_bias(q.shape[1], k.shape[1], causal=causal)  # [1, 1, 1, T, S] or None
  if mask is not None:
    A = jnp.where(mask, A, 0.0)
  den = A.sum(-1)
  A = jnp.where((den > 0)[..., None], A / jnp.where(den > 0, den, 1.0)[..., None], 0.0)
  return einops.rearrange(A, 'b g r t s -> b (g r) t s')


class FeatureSeed(nnx.Variable):
  """PRNG key of the fixed random features; a Variable but not a Param, so never trained."""


@base.register('performer', capabilities=base.Capabilities(
    causal=True, cross=True, key_mask=True, exact=False, cost='N*m'))
class Performer(base.Attention):
  """FAVOR+ linear attention with positive orthogonal random features (Choromanski et al. 2021)."""

  random = True

  @dataclasses.dataclass(frozen=True)
  class Options:
    num_features: int = 256  # m, random features per head
    kernel: str = 'softmax'  # 'softmax' (FAVOR+ estimate of exp) or 'relu'
    redraw: bool = True  # training: new features every call; False: fixed features
    chunk_size: int = 64  # causal path: chunk length c
    eps: float = 1e-6  # added to features (relative to the row max) to keep them positive

    def __post_init__(self):
      is_int = lambda x: isinstance(x, int) and not isinstance(x, bool)
      base.check(is_int(self.num_features) and self.num_features > 0, 'performer.num_features',
                 self.num_features, 'must be a positive int')
      base.check(self.kernel in KERNELS, 'performer.kernel', self.kernel,
                 f'must be one of {KERNELS}')
      base.check(isinstance(self.redraw, bool), 'performer.redraw', self.redraw,
                 'must be a bool (True: new features every training call, False: fixed)')
      base.check(is_int(self.chunk_size) and self.chunk_size > 0, 'performer.chunk_size',
                 self.chunk_size, 'must be a positive int')
      base.check(isinstance(self.eps, (int, float)) and not isinstance(self.eps, bool)
                 and self.eps >= 0, 'performer.eps', self.eps, 'must be a float >= 0')

  def __init__(self, options, *, rngs: nnx.Rngs, entry):
    super().__init__(options, rngs=rngs, entry=entry)
    self.rngs = rngs
    self.seed = FeatureSeed(rngs.params())  # fixed features: eval mode and redraw=False

  def features(self, head_dim: int, rng=None):
    """W [m, D] for this call: fresh in training with redraw (from `rng` if given), else the
    fixed ones."""
    if self.deterministic or not self.options.redraw:
      key = self.seed[...]
    else:
      key = self.redraw_key(rng)
    return orthogonal_features(key, self.options.num_features, head_dim)

  def forward(self, q, k, v, *, causal, key_mask, rng=None):
    o = self.options
    return performer_attention(q, k, v, causal=causal, key_mask=key_mask,
                               features=self.features(q.shape[-1], rng), kernel=o.kernel,
                               chunk_size=o.chunk_size, eps=o.eps)

  def matrix(self, q, k, v, *, causal, key_mask, rng=None):
    # Same feature rule as forward: in training with redraw, each call draws new features.
    o = self.options
    return performer_matrix(q, k, causal=causal, key_mask=key_mask,
                            features=self.features(q.shape[-1], rng), kernel=o.kernel,
                            eps=o.eps)
