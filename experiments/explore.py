"""Write an interactive attention explorer page (one self-contained HTML file) for a run.

  python experiments/explore.py --workdir=runs/ind                   # one eval sequence
  python experiments/explore.py --workdir=runs/ind --text=abcdefabcdef
  python experiments/explore.py --workdir=runs/ind --compare=runs/ind_performer
  python experiments/explore.py --workdir=runs/ind --compare_variant=performer:num_features=64

Writes <workdir>/explorer.html (or --out); open it in any browser, no network needed. --text
is mapped into the task vocabulary as `attnzoo.explorer.tokens_from_text` documents.
"""
from absl import app, flags, logging

from attnzoo import explorer

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Training workdir of the run to explore.')
flags.DEFINE_string('text', None, 'Text or space-separated token ids to show.')
flags.DEFINE_bool('task_sample', False, 'Show one eval sequence of the run\'s task (default).')
flags.DEFINE_string('compare', None, 'Workdir of a second run to show side by side.')
flags.DEFINE_string('compare_variant', None, 'Show beside the run its own weights with another '
                    'attention core: name[:option=value,...].')
flags.DEFINE_string('out', None, 'Where to write the page (default <workdir>/explorer.html).')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if FLAGS.text is not None and FLAGS.task_sample:
    raise app.UsageError('--text and --task_sample exclude each other; give one')
  path = explorer.write(FLAGS.workdir, text=FLAGS.text, compare=FLAGS.compare,
                        compare_variant=FLAGS.compare_variant, path=FLAGS.out)
  print(f'explorer page written to {path}')


if __name__ == '__main__':
  app.run(main)
