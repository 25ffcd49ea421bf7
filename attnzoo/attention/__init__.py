"""Attention variants. Each file registers one mechanism (and its presets) on import."""
from attnzoo.attention.base import (Attention, Capabilities, apply_matrix, capabilities,
                                    default_options, fit_options, get, layer_shared,
                                    make_attention, register, variant_names)
from attnzoo.attention import dense  # noqa: F401  (registers dense, causal, cross, mqa, gqa)
from attnzoo.attention import blockwise  # noqa: F401
from attnzoo.attention import longformer  # noqa: F401
from attnzoo.attention import linformer  # noqa: F401
from attnzoo.attention import performer  # noqa: F401
from attnzoo.attention import flash  # noqa: F401
from attnzoo.attention import reformer  # noqa: F401
from attnzoo.attention import ring  # noqa: F401
