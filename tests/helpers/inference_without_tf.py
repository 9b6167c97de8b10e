"""Runs lgvit.export, lgvit.predict and lgvit.visualize in one process and reports what they imported (their
libraries too: lgvit.exporting, lgvit.inference, lgvit.introspection, lgvit.data.classes).

Usage: inference_without_tf.py DIR. Writes a tiny training workdir by hand (config.json and one
checkpoint, the files main.py writes), exports it, classifies a PNG and a JPEG from both the workdir
and the export, draws a NomMer variables dir, and prints one JSON line: the CLIs' exit codes and
which of tensorflow, tensorflow_datasets, lgvit.train and lgvit.data.pipeline ended up in sys.modules.
"""
import json
import os
import sys

import numpy as np
from PIL import Image


def main(root):
  from configs import nommer_t, resnet50
  from lgvit import checkpoint, export, modeling, predict, visualize
  from lgvit import workdir as layout
  from lgvit.models import create_model
  from conftest import RESNET_TINY, random_variables, save_variables_dir

  config = resnet50.get_config('demo')
  config.unlock()
  config.model_kwargs.update(RESNET_TINY)
  run = os.path.join(root, 'run')
  layout.write_json(os.path.join(run, layout.CONFIG), json.loads(config.to_json_best_effort()))
  model = modeling.build_model(config)
  variables = random_variables(model, np.zeros((1, 32, 32, 3), np.float32))
  saver = checkpoint.TrainCheckpointer(run, keep=1, async_save=False)
  saver.save(1, {'params': variables['params'], 'batch_stats': variables['batch_stats']}, {'step': 1})
  saver.close()

  rng = np.random.default_rng(0)
  images = []
  for fmt in ('PNG', 'JPEG'):
    path = os.path.join(root, f'image.{fmt.lower()}')
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path, format=fmt)
    images.append(path)
  codes = {'export': export.main(['--workdir', run, '--out', os.path.join(root, 'export')])}
  codes['predict_workdir'] = predict.main(['--workdir', run, *images])
  codes['predict_export'] = predict.main(['--workdir', os.path.join(root, 'export'), *images])
  kwargs = dict(nommer_t.get_config('demo').model_kwargs)
  nommer = create_model('nommer_t', num_classes=10, **kwargs)
  source = save_variables_dir(os.path.join(root, 'nommer'), 'nommer_t', kwargs,
                              random_variables(nommer, np.zeros((1, 32, 32, 3), np.float32)))
  codes['visualize'] = visualize.main(['--workdir', source, '--image', images[1], '--out', os.path.join(root, 'pics')])
  loaded = [m for m in ('tensorflow', 'tensorflow_datasets', 'lgvit.train', 'lgvit.data.pipeline') if m in sys.modules]
  print(json.dumps({'codes': codes, 'loaded': loaded}))


if __name__ == '__main__':
  main(sys.argv[1])
