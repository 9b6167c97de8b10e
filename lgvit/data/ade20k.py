"""ADE20K semantic segmentation (the SceneParsing benchmark of mmseg's configs) as a TFDS dataset, ``lgvit_ade20k``.

TFDS's own ``scene_parse150`` cannot serve here: it downloads the Places Challenge 2017
``annotations_instance`` masks, whose red channel holds the 100 *instance* categories, not the 150
semantic classes that the papers' mIoU is computed on. This builder reads the release that
mmsegmentation reads, ``ADEChallengeData2016.zip`` (20,210 training and 2,000 validation images;
annotations are 1-channel PNGs, 0 = "other", 1..150 the classes), from a folder you download it to:

    python -m lgvit.data.ade20k --manual_dir=DIR_WITH_THE_ZIP_OR_ITS_FOLDER [--data_dir=~/tensorflow_datasets]

Splits: ``train`` (images/training) and ``validation`` (images/validation), in file-name order.
"""
from __future__ import annotations

import argparse
import os

import tensorflow_datasets as tfds

ZIP_NAME = 'ADEChallengeData2016.zip'
FOLDER = 'ADEChallengeData2016'
HOMEPAGE = 'http://sceneparsing.csail.mit.edu/'


class LgvitAde20k(tfds.core.GeneratorBasedBuilder):
  """ADEChallengeData2016: images and 150-class semantic annotations (TFDS name ``lgvit_ade20k``)."""
  VERSION = tfds.core.Version('1.0.0')
  MANUAL_DOWNLOAD_INSTRUCTIONS = (f'Download {ZIP_NAME} from {HOMEPAGE} (the scene parsing benchmark, '
                                  f'ADEChallengeData2016) into the manual dir; unzipped ({FOLDER}/) works too.')

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='ADE20K scene parsing (ADEChallengeData2016): 150 semantic classes, 0 = other.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(encoding_format='jpeg'),
            'annotation': tfds.features.Image(shape=(None, None, 1), encoding_format='png'),
            'file_name': tfds.features.Text(),
        }),
        supervised_keys=('image', 'annotation'),
        homepage=HOMEPAGE,
    )

  def _split_generators(self, dl_manager):
    manual = dl_manager.manual_dir
    root = os.path.join(manual, FOLDER)
    if not os.path.isdir(root):
      archive = os.path.join(manual, ZIP_NAME)
      if not os.path.exists(archive):
        raise FileNotFoundError(f'neither {root}/ nor {archive} exists. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
      root = os.path.join(dl_manager.extract(archive), FOLDER)
    return {'train': self._generate_examples(root, 'training'),
            'validation': self._generate_examples(root, 'validation')}

  def _generate_examples(self, root: str, part: str):
    images = os.path.join(root, 'images', part)
    annotations = os.path.join(root, 'annotations', part)
    for name in sorted(os.listdir(images)):
      stem, ext = os.path.splitext(name)
      if ext.lower() != '.jpg':
        continue
      yield stem, {'image': os.path.join(images, name), 'annotation': os.path.join(annotations, stem + '.png'),
                   'file_name': name}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--manual_dir', required=True)
  parser.add_argument('--data_dir', default=None)
  args = parser.parse_args(argv)
  builder = LgvitAde20k(data_dir=args.data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=args.manual_dir))
  print(f'prepared {builder.name} in {builder.data_dir}: '
        f"{', '.join(f'{k} {v.num_examples}' for k, v in builder.info.splits.items())}")


if __name__ == '__main__':
  main()
