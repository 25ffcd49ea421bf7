"""Decode cost of MHA vs GQA vs MQA: per-token latency and KV-cache bytes against K/V heads.

Each variant spec of `config.study.variants` (e.g. `causal`, `gqa:model.num_kv_heads=2`, `mqa`)
builds the decoder of `config.model`; one greedy decode step with the KV cache
(`attnzoo.decode.extend`) is timed at position T-1 of a full cache of T positions (random
contents: the values do not change the work), the median of repeats after a warm-up step, with
the cache donated to the step. The compiled step's FLOPs and peak bytes and the
cache's bytes (against the formula 2 · L · B · T · G · D · 4) are recorded; speed-ups and byte
ratios are against the variant with G = H measured in the same run (MHA).

Micro-programs, not training runs: each point is one line of `decode.jsonl`, appended when
measured; a rerun skips measured points. The report (`report.md`, `decode.png`) is built from
`decode.jsonl` alone.
"""
from attnzoo.studies.decode.measure import POINTS, check, run
from attnzoo.studies.decode.report import PLOT, REPORT, report
