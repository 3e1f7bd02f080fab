"""pytest glue: absltest helpers (create_tempdir, ...) read absl flags, so mark them parsed."""

from absl import flags

flags.FLAGS.mark_as_parsed()
