"""Builds the `fastmri_slices` TFDS dataset (ArrayRecord shards) from a fastMRI download, for data.format=tfds.

  pip install -e ".[tfds]"
  python tools/build_tfds.py --config singlecoil_knee --manual_dir /data/fastmri_knee --data_dir /data/tfds
  python tools/build_tfds.py --config folder --manual_dir /data/my_h5 --data_dir /data/tfds --num_workers 8

--manual_dir holds the official folders (singlecoil_train/, singlecoil_val/, multicoil_train/, ...; or
train/ and val/ for the `folder` config); see mrisr_jax/data/tfds_fastmri.py. Files are read in
--num_workers processes with a progress bar, each volume's targets cached under
DATA_DIR/downloads/fastmri_slices_extracted/CONFIG/; an interrupted build run again reuses that cache
and redoes only the ArrayRecord writing. The cache is removed after a successful build (--keep_cache
keeps it). A dataset already built is left as it is (--overwrite rebuilds it).

Then train from it:
  python -m mrisr_jax.main --config configs/casrgan_x4.py --config.data.format=tfds \\
      --config.data.tfds_dir=/data/tfds --config.data.tfds_name=fastmri_slices/singlecoil_knee

(TFDS's own `tfds build` command imports apache-beam at start in tensorflow-datasets 4.9.10, which the
[tfds] extra does not install; this tool is the way to build.)
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mrisr_jax import cli  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument(
    '--config',
    required=True,
    choices=['singlecoil_knee', 'multicoil_knee', 'multicoil_brain', 'folder'],
    help='the layout of --manual_dir',
  )
  parser.add_argument('--manual_dir', required=True, help='the fastMRI download (the official folder names)')
  parser.add_argument('--data_dir', default='', help="TFDS data directory (default: TFDS's, ~/tensorflow_datasets)")
  parser.add_argument(
    '--num_workers',
    type=int,
    default=min(8, len(os.sched_getaffinity(0))),
    help='processes reading the h5 files (default: the cores, at most 8)',
  )
  parser.add_argument(
    '--skip_bad_files', action='store_true', help='skip and count unreadable files instead of stopping'
  )
  parser.add_argument('--keep_cache', action='store_true', help='keep the extracted-volume cache after the build')
  parser.add_argument('--overwrite', action='store_true', help='rebuild a dataset that is already built')
  a = parser.parse_args()

  from mrisr_jax.data import tfds_source
  from mrisr_jax.data.errors import DataError

  tfds, tfds_fastmri = tfds_source.import_tfds()
  if a.num_workers < 1:
    raise DataError(f'--num_workers: {a.num_workers} must be >= 1')
  name = f'{tfds_fastmri.NAME}/{a.config}'
  builder = tfds.builder(name, data_dir=a.data_dir or None, num_workers=a.num_workers, skip_bad_files=a.skip_bad_files)
  if builder.is_prepared() and not a.overwrite:
    print(f'{builder.data_dir}: {name} is already built ({builder.info.splits}); --overwrite rebuilds it')
    return
  if builder.is_prepared():
    shutil.rmtree(builder.data_dir)
    builder = tfds.builder(
      name, data_dir=a.data_dir or None, num_workers=a.num_workers, skip_bad_files=a.skip_bad_files
    )
  tfds_fastmri.split_folders(a.manual_dir, a.config)  # one line naming the folder before TFDS starts
  config = tfds.download.DownloadConfig(manual_dir=a.manual_dir)
  download_dir = pathlib.Path(str(builder.data_dir)).parents[2] / 'downloads'  # TFDS's default place
  builder.download_and_prepare(file_format='array_record', download_dir=download_dir, download_config=config)
  cache = tfds_fastmri.cache_dir(download_dir, a.config)
  if not a.keep_cache and cache.is_dir():
    shutil.rmtree(cache)
  splits = {k: v.num_examples for k, v in builder.info.splits.items()}
  skipped = {k: len(t['skipped']) for k, t in builder.info.metadata['splits'].items()}
  print(f'{builder.data_dir}: {name} built: slices per split {splits}; skipped files {skipped}')
  print(
    f'train with --config.data.format=tfds --config.data.tfds_dir={a.data_dir or "~/tensorflow_datasets"} '
    f'--config.data.tfds_name={name}'
  )


if __name__ == '__main__':
  cli.guard(main, compile_cache=False)
