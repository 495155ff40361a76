"""Preparing a TFDS builder once per job, whatever the number of processes."""
from typing import Callable, Optional

import jax
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils


def prepare(make_builder: Callable[[], tfds.core.DatasetBuilder],
            manual_dir: Optional[str], hint: str) -> tfds.core.DatasetBuilder:
  """Process 0 downloads/reads and writes the dataset; the others wait for it.

  `manual_dir` '' or None means download; `hint` tells the user which folder
  the setting should name when the given one does not exist.
  """
  manual_dir = manual_dir or None
  if manual_dir and not tf.io.gfile.isdir(manual_dir):
    raise FileNotFoundError(
        f'Data dir {manual_dir!r} does not exist. {hint} Or set it to "" to '
        'download the files.')
  builder = make_builder()
  if jax.process_index() == 0:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'{builder.name} prepared')
    builder = make_builder()  # Re-read: it now sees what process 0 wrote.
  return builder
