"""Scaling of attention variants: forward+backward time and compiled peak memory against T.

For each variant spec (`config.study.variants`, the shared `name[:key=value,...]` syntax) and
each length T, one training-like step, grad of mean(out²) with respect to q, k, v and the
variant's parameters, is compiled and timed (median of repeats after compile, `attnzoo.cost`);
its peak memory is the compiled program's (arguments + outputs + temporaries). The batch keeps
B·T fixed; slopes are reported for the per-sequence cost (value / B), the convention of the
papers: near 2 for quadratic attention and near 1 for linear attention. Variants run causally
where they can (recorded per point); options that follow the length (Linformer's `max_len`) are
fitted to T as the variant declares (`common.fit`).

These are micro-programs, not training runs: each point is appended to `scaling.jsonl` as soon as
it is measured and points already there are skipped, so an interrupted run resumes. A point whose
compiled peak exceeds the memory limit is recorded as `oom` without running; once a variant runs
out of memory or one step exceeds the time budget, its larger lengths are skipped. The report
(`report.md`, `scaling.png`) is built from `scaling.jsonl` alone.
"""
from attnzoo.studies.scaling.measure import POINTS, check, default_variants, run
from attnzoo.studies.scaling.report import (PLOT, REFERENCE, REPORT, crossover, loglog_slope,
                                            report, summarize)
