"""attnzoo: attention variants on JAX / Flax NNX / Pallas, a tiny decoder and toy tasks."""
from attnzoo.attention import (apply_matrix, capabilities, default_options, make_attention,
                               variant_names)
