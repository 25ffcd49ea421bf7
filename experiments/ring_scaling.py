"""Ring vs blockwise attention: per-device peak memory and step time against n fake devices,
and the longest T that fits a per-device budget. Prints a Markdown table; writes it as JSON
lines to --out when given.

  python experiments/ring_scaling.py --T=4096 --budget_mib=8

Runtime: about two minutes on a 2-core CPU. Expected: ring's per-device peak falls about as
1/n and the longest T fitting the budget grows about as n; blockwise stays at its one-device
figures. Step times on fake devices share the same cores, so they show overhead, not speed-up.
"""
import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

from absl import app, flags  # noqa: E402

from attnzoo import jsonl, ring_scaling  # noqa: E402

flags.DEFINE_integer('T', 4096, 'Sequence length for the memory and time columns.')
flags.DEFINE_integer('budget_mib', 8, 'Per-device memory budget for the longest-T columns.')
flags.DEFINE_string('out', None, 'Optional JSONL file for the rows.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  rows = ring_scaling.table(T=FLAGS.T, budget=FLAGS.budget_mib << 20)
  print(ring_scaling.markdown(rows))
  if FLAGS.out:
    jsonl.write(FLAGS.out, rows)


if __name__ == '__main__':
  app.run(main)
