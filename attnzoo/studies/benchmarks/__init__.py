"""Foundation benchmarks, each a ratio against a reference measured in the same run.

- decoder throughput: training tokens/s of our Decoder (config.model, config.task) against the
  same-shape model whose attention is `flax.nnx.MultiHeadAttention` (median over alternating
  rounds of `study.steps` steps after compile);
- exact attention cost: forward+backward time (median of repeats after compile) and compiled
  peak memory of `blockwise` against `dense` attention at `study.lengths`, batch 1; a program
  whose compiled peak exceeds `cost.memory_limit()` is not run.

Each measurement is one line of `benchmarks.jsonl`, appended when measured; a rerun skips
measured points. The report (`report.md`, `benchmarks.png`) is built from that file alone.
"""
from attnzoo.studies.benchmarks.measure import POINTS, FlaxAttention, check, run
from attnzoo.studies.benchmarks.report import PLOT, REPORT, report
