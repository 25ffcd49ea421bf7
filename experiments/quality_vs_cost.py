"""Quality against cost across every attention variant (see attnzoo/sweep.py).

  python experiments/quality_vs_cost.py --workdir=runs/qvc_quick --preset=quick
  python experiments/quality_vs_cost.py --workdir=runs/qvc --preset=full --jobs=2
  python experiments/quality_vs_cost.py --workdir=runs/qvc_quick --report_only
  python experiments/quality_vs_cost.py --workdir=runs/qvc_quick --preset=full --estimate

Trains every variant on induction, copy and mqar at each length and width (same steps, batch and
learning-rate grid; best learning rate kept), runs the MQAR width sweep and the MHA / GQA / MQA
decode benchmark, and writes results.jsonl (one line per finished run; a rerun skips finished
runs), report.md, pareto_<task>.png, mqar_width.png and decode.png.

Presets (2-core CPU):
  quick  T in {64, 256}, d_model 64, 150 steps, batch 8, lr in {1e-3, 3e-3}; MQAR width sweep
         d in {32, 64} at T=64 / 8 pairs; decode T=4096, batch 4, 2 layers. 74 runs; measured
         18 minutes wall on a 2-core CPU shared with other jobs (29 minutes under heavier
         sharing). Quality is far from converged at 150 steps: the preset checks the machinery
         and measures the cost columns.
  full   T in {64, 256, 1024}, d_model 64, 1000 steps, batch 16, lr in {1e-3, 3e-3}; MQAR width
         sweep d in {32, 64, 128} at (T, pairs) in {(64, 8), (256, 32)}; decode T=4096, batch 8,
         4 layers. Estimated (`--estimate` over the quick preset's runs; not measured): about
         16 hours on a 2-core CPU, 12 of them for T=1024. At this budget dense attention learns
         induction and copy at T=64 (accuracy 0.99 and 1.0) but reaches only about 0.2 on MQAR.
The flags below override the preset's values.
"""
import dataclasses
import json

from absl import app, flags

from attnzoo import sweep

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for results.jsonl, report.md and the plots.')
flags.DEFINE_enum('preset', 'quick', sorted(sweep.PRESETS), 'Sweep size.')
flags.DEFINE_integer('jobs', 1, 'Runs at once, each in its own (spawned) process.')
flags.DEFINE_bool('report_only', False, 'Only rebuild the report from results.jsonl.')
flags.DEFINE_bool('estimate', False, 'Only print the estimated runtime of the chosen settings '
                  'from the runs measured in --workdir (e.g. --preset=full over a quick sweep).')
flags.DEFINE_list('variants', None, 'Variants (default: every registered one but aliases).')
flags.DEFINE_list('tasks', None, 'Tasks among induction, copy, mqar.')
flags.DEFINE_list('lengths', None, 'Sequence lengths T.')
flags.DEFINE_list('widths', None, 'd_model values of the main sweep.')
flags.DEFINE_integer('steps', None, 'Training steps per run.')
flags.DEFINE_integer('batch_size', None, 'Batch size.')
flags.DEFINE_list('learning_rates', None, 'Learning-rate grid (the best is kept).')
flags.DEFINE_list('mqar_widths', None, 'd_model values of the MQAR width sweep.')
flags.DEFINE_list('mqar_points', None, 'MQAR width sweep points T:pairs, e.g. 64:8,256:32.')
flags.DEFINE_bool('decode', True, 'Run the decode benchmark.')
flags.DEFINE_string('options', '{}', 'JSON per-variant option overrides, e.g. '
                    '\'{"performer": {"num_features": 64}}\'.')
flags.mark_flags_as_required(['workdir'])


def settings_from_flags() -> sweep.Settings:
  ints = lambda xs: xs and tuple(int(x) for x in xs)
  overrides = {
      'variants': FLAGS.variants and tuple(FLAGS.variants),
      'tasks': FLAGS.tasks and tuple(FLAGS.tasks), 'lengths': ints(FLAGS.lengths),
      'widths': ints(FLAGS.widths), 'steps': FLAGS.steps, 'batch_size': FLAGS.batch_size,
      'learning_rates': FLAGS.learning_rates and tuple(float(x) for x in FLAGS.learning_rates),
      'mqar_widths': ints(FLAGS.mqar_widths),
      'mqar_points': FLAGS.mqar_points and tuple(
          tuple(int(v) for v in p.split(':')) for p in FLAGS.mqar_points),
      'options': json.loads(FLAGS.options) or None}
  settings = sweep.PRESETS[FLAGS.preset]
  settings = dataclasses.replace(settings,
                                 **{k: v for k, v in overrides.items() if v is not None})
  if not FLAGS.decode:
    settings = dataclasses.replace(settings, decode=None)
  return settings


def main(argv):
  del argv
  if FLAGS.estimate:
    seconds = sweep.estimate_seconds(sweep.read_results(FLAGS.workdir), settings_from_flags())
    print('no comparable runs measured' if seconds is None else
          f'estimated runtime: {seconds / 3600:.1f} h ({seconds / 60:.0f} min), an estimate from '
          f'the runs in {FLAGS.workdir}')
    return
  if not FLAGS.report_only:
    sweep.run(FLAGS.workdir, settings_from_flags(), jobs=FLAGS.jobs,
              log=lambda line: print(line, flush=True))
  print(sweep.report(FLAGS.workdir))


if __name__ == '__main__':
  app.run(main)
