"""The evaluation suite (lgvit.evals, python -m lgvit.evaluate): scoring against hand-computed cases, the
200-class subsets against their authors' lists, and every evaluator on datasets that TFDS's own builders
prepared from synthetic files (conftest.build_eval_suite), in training and from the command line."""
import json

import numpy as np
import pytest
from conftest import RESNET_TINY, SUITE_A_SYNSETS, SUITE_R_SYNSETS, SUITE_REAL, SUITE_V2_LABELS, build_eval_suite

from lgvit import evals, schema
from lgvit.data import classes
from lgvit.tasks import classification
from lgvit.errors import ConfigError, DatasetNotFoundError

# The 1k indices the authors evaluate on: indices_in_1k of github.com/hendrycks/natural-adv-examples eval.py
# (A), and the imagenet_r_indices comment of github.com/hendrycks/imagenet-r eval.py (R): their count, sum,
# ends and the SHA-256 of the space-separated list.
AUTHORS = {
    'imagenet_a': (200, 102178, [6, 11, 13, 15, 17, 22, 23, 27], [984, 986, 987, 988],
                   '1b241a7a5dd979915eb636c88078b130f6f655dad0fb7a6785b720833e15b78d'),
    'imagenet_r': (200, 86135, [1, 2, 4, 6, 8, 9, 11, 13], [980, 981, 983, 988],
                   'becd1bb8e8059908b3c1d6d4d480159e759cf818e604dc089ca612949589a465'),
}
SUITE = ['imagenet2012:validation', 'imagenet_v2', 'imagenet2012_real', 'imagenet_a', 'imagenet_r']


def test_real_top1_and_top5_against_a_hand_computed_case():
  # 5 images, 6 classes. Image 0: argmax 2, set {2} -> right. Image 1: argmax 0, set {1, 3} -> wrong at
  # top-1, but 3 is its 2nd-best -> right at top-5. Image 2: empty set -> not scored. Image 3: argmax 5,
  # set {4, 5} -> right. Image 4: a padding slot (mask 0) whose argmax is in its set -> not scored.
  logits = np.array([[0, 1, 9, 0, 0, 0], [9, 0, 0, 5, 0, 0], [0, 9, 0, 0, 0, 0], [0, 0, 0, 0, 1, 9],
                     [9, 0, 0, 0, 0, 0]], np.float32)
  sets = [{2}, {1, 3}, set(), {4, 5}, {0}]
  real = np.zeros((5, 6), np.uint8)
  for i, s in enumerate(sets):
    real[i, list(s)] = 1
  mask = np.array([1, 1, 1, 1, 0], np.float32)
  out = {k: float(v) for k, v in classification.score_real(logits, real, mask).items()}
  assert out == {'count': 3.0, 'top1': 2.0, 'top5': 3.0, 'no_label': 1.0}  # ReaL top-1 = 2/3


def test_200_class_subsets_are_the_authors_and_restrict_the_argmax():
  import hashlib
  for subset, (count, total, first, last, digest) in AUTHORS.items():
    indices = classes.imagenet_subset_labels(subset).tolist()
    assert (len(indices), sum(indices), indices[:8], indices[-4:]) == (count, total, first, last), subset
    assert hashlib.sha256(' '.join(map(str, indices)).encode()).hexdigest() == digest, subset
  # The 1000-way argmax of image 0 is class 0 (not an ImageNet-A class); among the 200 it is class 11,
  # its label -> right. Image 1's label 6 loses to class 13 among the 200 -> wrong.
  logits = np.full((2, 1000), -5.0, np.float32)
  logits[0, [0, 11, 6]] = [9.0, 3.0, 1.0]
  logits[1, [6, 13]] = [2.0, 4.0]
  subset = classes.imagenet_subset_labels('imagenet_a')
  restricted, labels = classification.restrict(logits, np.array([11, 6]), subset)
  assert restricted.shape == (2, 200) and labels.tolist() == [1, 0]  # 6 and 11 are the 1st and 2nd
  out = classification.score_labels(restricted, labels, np.ones(2, np.float32))
  assert float(out['top1']) == 1.0 and float(out['count']) == 2.0


def test_evaluator_names_and_entries():
  from configs import resnet50
  c = resnet50.get_config('')
  assert [(s.name, s.dataset, s.split, s.prefix) for s in evals.specs(c)] == [
      ('main', 'imagenet2012', 'validation', 'eval_'), ('imagenet2012_real', 'imagenet2012_real', 'validation',
                                                        'eval_imagenet2012_real_'),
      ('imagenet_a', 'imagenet_a', 'test', 'eval_imagenet_a_'), ('imagenet_r', 'imagenet_r', 'test', 'eval_imagenet_r_'),
      ('imagenet_v2', 'imagenet_v2/matched-frequency', 'test', 'eval_imagenet_v2_')]  # no EMA weights: no 'ema'
  assert classification.PROTOCOLS['imagenet2012_real'].labels == 'real'
  assert classification.PROTOCOLS['imagenet_r'].subset == 'imagenet_r'
  c.unlock()
  c.ema_decay = 0.9999
  c.evals.imagenet_a.every = -1.0  # left out
  assert [(s.name, s.weights) for s in evals.specs(c)][:2] == [('main', 'raw'), ('ema', 'ema')]
  assert 'imagenet_a' not in [s.name for s in evals.specs(c)]
  assert [s.name for s in evals.specs(c, weights='raw')][:2] == ['main', 'imagenet2012_real']  # each split once
  digits = evals.spec_from_name('lgvit_digits:validation', c)
  assert (digits.dataset, digits.split, digits.prefix) == ('lgvit_digits', 'validation', 'eval_lgvit_digits_validation_')
  assert evals.spec_from_name('imagenet_v2', c).dataset == 'imagenet_v2/matched-frequency'
  assert evals.names('imagenet_v2,imagenet_a, imagenet_a , imagenet_r ') == ['imagenet_v2', 'imagenet_a', 'imagenet_r']
  with pytest.raises(ConfigError, match='unknown evaluator .imagenet_v3.; use one of imagenet_v2'):
    evals.spec_from_name('imagenet_v3', c)


def test_old_workdirs_evals_tuple_becomes_entries():
  """A config.json from before the entries (a tuple of names) resumes with the same evaluators and weights."""
  saved = {'data': {'dataset': 'imagenet2012', 'eval_split': 'validation'}, 'ema_decay': 0.9999,
           'best_metric': 'ema_top1', 'evals': ['imagenet2012:validation', 'imagenet_v2', 'lgvit_digits:train']}
  upgraded = schema.upgrade(saved)['evals']
  assert sorted(upgraded) == ['ema', 'imagenet_v2', 'lgvit_digits_train', 'main']
  assert upgraded['imagenet_v2'] == {**schema.eval_entry(dataset='imagenet_v2/matched-frequency', split='test',
                                                         weights='ema').to_dict()}
  assert upgraded['lgvit_digits_train']['split'] == 'train' and upgraded['main']['prefix'] == 'eval_'
  assert schema.upgrade({**saved, 'best_metric': 'top1'})['evals']['imagenet_v2']['weights'] == 'raw'


@pytest.fixture(scope='module')
def suite(tmp_path_factory):
  return build_eval_suite(tmp_path_factory.mktemp('suite'))


def _imagenet_config(data_dir, **overrides):
  from configs import resnet50
  c = resnet50.get_config('demo')
  c.unlock()
  c.data.update(dataset='imagenet2012', data_dir=data_dir)
  c.num_classes, c.eval_batch_size = 1000, 4  # batches of 4: every split ends padded
  c.evals = schema.base_config().evals  # the ImageNet suite
  c.model_kwargs.update(RESNET_TINY)
  for k, v in overrides.items():
    c[k] = v
  return c


def _reference(loaded, data_dir):
  """Each evaluator scored in numpy from the raw TFDS records: lgvit's TF-free eval transform
  (lgvit.data.transforms), the model's logits, the labels as the builder stored them."""
  import tensorflow_datasets as tfds
  from lgvit.inference import ImageError

  def records(name, split):
    ds = tfds.builder(name, data_dir=data_dir).as_dataset(split=split, decoders={'image': tfds.decode.SkipDecoding()})
    for ex in tfds.as_numpy(ds):
      try:
        crop = loaded.preprocess(ex['image'])
      except ImageError:
        continue  # the truncated validation image: skipped, not scored
      yield loaded.logits(crop[None])[0], ex

  out = {}
  for name, dataset, split in (('imagenet2012:validation', 'imagenet2012', 'validation'),
                               ('imagenet_v2', 'imagenet_v2/matched-frequency', 'test'),
                               ('imagenet_a', 'imagenet_a', 'test'), ('imagenet_r', 'imagenet_r', 'test')):
    scored = classes.imagenet_subset_labels(name).tolist() if name in AUTHORS else list(range(1000))
    hits = [scored[int(np.argmax(logits[scored]))] == ex['label'] for logits, ex in records(dataset, split)]
    out[name] = (len(hits), float(np.mean(hits)))
  hits = [int(np.argmax(logits)) in set(ex['real_label'].tolist())
          for logits, ex in records('imagenet2012_real', 'validation') if len(ex['real_label'])]
  out['imagenet2012_real'] = (len(hits), float(np.mean(hits)))
  return out


def _known_scores_export(directory, crop_pct=1.0, interpolation='bilinear'):
  """An export dir (what lgvit.export writes, less the serialised forward) of a tiny 1000-class ResNet whose
  head makes every image predict class 0; 6 among ImageNet-A's classes (which lack 0 and 1); 1 among
  ImageNet-R's (which lack 0): the scores are known by hand."""
  import jax.numpy as jnp
  from conftest import random_variables
  from lgvit import checkpoint
  from lgvit.models import create_model
  model = create_model('resnet50', num_classes=1000, **RESNET_TINY)
  variables = random_variables(model, jnp.zeros((1, 32, 32, 3)))
  variables['params']['fc']['kernel'] *= 0.01
  variables['params']['fc']['bias'][:] = 0.0
  variables['params']['fc']['bias'][[0, 1, 6]] = [50.0, 45.0, 40.0]
  meta = {'model': 'resnet50', 'num_classes': 1000, 'model_kwargs': RESNET_TINY, 'image_size': 32,
          'crop_pct': crop_pct, 'interpolation': interpolation, 'dataset': 'imagenet2012'}
  checkpoint.save_variables(str(directory / 'variables'), variables, meta)
  (directory / 'export.json').write_text(json.dumps(meta))
  return directory


def test_every_evaluator_from_the_command_line_against_hand_computed_scores(suite, tmp_path):
  """python -m lgvit.evaluate on an export dir (the ImageNet suite by default) and on its variables dir
  with --model: every image once (batches of 4 leave each split padded), the scores known by hand, and a
  numpy reference built from the raw TFDS records."""
  from lgvit import evaluate, inference
  export_dir = _known_scores_export(tmp_path / 'export')
  assert evaluate.main(['--export', str(export_dir), '--data-dir', suite, '--batch-size', '4']) == 0
  from_export = json.loads((export_dir / 'eval_results.json').read_text())['evals']
  out = tmp_path / 'from_checkpoint.json'
  assert evaluate.main(['--model', 'resnet50', '--checkpoint', str(export_dir / 'variables'), '--data-dir', suite,
                        '--evals', 'imagenet_a,imagenet2012_real', '--batch-size', '4', '--out', str(out)]) == 0
  from_checkpoint = json.loads(out.read_text())['evals']
  # By hand: v2 labels 0,0,1,2,999,500,7 -> 2/7; ReaL's 5 non-empty readable sets, one holds 0 -> 1/5;
  # ImageNet-A labels 6,6,11,988,143 -> 2/5; ImageNet-R labels 1,2,2,988,957,155 -> 1/6; no validation label is 0.
  by_hand = {'imagenet2012:validation': (7, 0 / 7), 'imagenet_v2': (7, 2 / 7), 'imagenet2012_real': (5, 1 / 5),
             'imagenet_a': (5, 2 / 5), 'imagenet_r': (6, 1 / 6)}
  reference = _reference(inference.load(str(export_dir)), suite)
  assert sorted(from_export) == sorted(SUITE) and sorted(from_checkpoint) == ['imagenet2012_real', 'imagenet_a']
  for name, (count, top1) in by_hand.items():
    assert (from_export[name]['count'], from_export[name]['top1']) == (count, pytest.approx(top1)), name
    assert reference[name] == (count, pytest.approx(top1)), name
    if name in from_checkpoint:
      assert from_checkpoint[name] == from_export[name]
  assert from_export['imagenet2012_real']['no_label'] == 2
  assert from_export['imagenet2012:validation']['skipped'] == from_export['imagenet2012_real']['skipped'] == 1


def _eval_rows(workdir):
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines() if 'eval_top1' in line]


def _tensorboard_tags(workdir):
  import tensorflow as tf
  return {v.tag for path in (workdir / 'tensorboard').iterdir()
          for e in tf.compat.v1.train.summary_iterator(str(path)) for v in e.summary.value}


def _agrees_with_row(results, row, prefixes):
  for name, prefix in prefixes.items():
    for metric, value in results['evals'][name].items():
      assert value == pytest.approx(row[prefix + metric], abs=1e-6), (name, metric)


@pytest.mark.slow
def test_training_logs_every_imagenet_evaluator(suite, tmp_path, capsys):
  """Training with the ImageNet suite logs each evaluator under its own name (console, metrics.jsonl,
  TensorBoard), every image once; lgvit.evaluate --workdir reproduces the numbers (slow: it compiles a
  1000-class train step, about a minute on 2 busy cores)."""
  from lgvit import evaluate, train
  workdir = tmp_path / 'run'
  result = train.train_and_evaluate(_imagenet_config(suite, num_train_steps=2, log_every_steps=1,
                                                     checkpoint_every_steps=2, batch_size=4),
                                    str(workdir), async_checkpoints=False)
  console = capsys.readouterr().out
  counts = {'imagenet_v2': len(SUITE_V2_LABELS), 'imagenet_a': len(SUITE_A_SYNSETS), 'imagenet_r': len(SUITE_R_SYNSETS),
            'imagenet2012_real': sum(1 for s in SUITE_REAL[:7] if s)}  # the 8th image is truncated
  row = _eval_rows(workdir)[-1]
  assert row['eval_count'] == 7 and row['eval_skipped'] == 1 and result['eval_top1'] == row['eval_top1']
  for name, count in counts.items():
    assert row[f'eval_{name}_count'] == count, (name, row)
    assert f'[{name}]: top-1' in console
  assert row['eval_imagenet2012_real_no_label'] == 2 and row['eval_imagenet2012_real_skipped'] == 1
  assert {f'eval_{n}_top1' for n in counts} <= _tensorboard_tags(workdir)
  assert evaluate.main(['--workdir', str(workdir)]) == 0
  from_workdir = json.loads((workdir / 'eval_results.json').read_text())
  assert sorted(from_workdir['evals']) == sorted(['main', *counts])
  _agrees_with_row(from_workdir, row, {'main': 'eval_'} | {n: f'eval_{n}_' for n in counts})


def test_training_logs_extra_evaluators_and_evaluate_reproduces_them(digits_dir, tmp_path, capsys):
  """A tiny digits run with a second evaluator (the train split): its own keys in metrics.jsonl and
  TensorBoard and its console line; lgvit.evaluate --workdir gives the same numbers for both."""
  from configs import resnet50
  from lgvit import evaluate, train
  c = resnet50.get_config('demo')
  c.unlock()
  c.data.data_dir = digits_dir
  c.model_kwargs.update(RESNET_TINY)
  c.num_train_steps, c.log_every_steps, c.checkpoint_every_steps = 1, 1, 1
  c.evals.train_split = schema.eval_entry(split='train')
  workdir = tmp_path / 'run'
  train.train_and_evaluate(c, str(workdir), async_checkpoints=False)
  assert '[train_split]: top-1' in capsys.readouterr().out
  row = _eval_rows(workdir)[-1]
  assert row['eval_count'] == 360 and row['eval_train_split_count'] == 1437
  assert {'eval_top1', 'eval_train_split_top1', 'eval_train_split_loss'} <= _tensorboard_tags(workdir)
  assert evaluate.main(['--workdir', str(workdir), '--batch-size', '64']) == 0  # another padding, same numbers
  results = json.loads((workdir / 'eval_results.json').read_text())
  assert sorted(results['evals']) == ['main', 'train_split']
  assert results['splits'] == {'main': 'lgvit_digits:validation', 'train_split': 'lgvit_digits:train'}
  assert results['weights'] == 'latest (raw)' and results['model'] == 'resnet50'
  _agrees_with_row(results, row, {'main': 'eval_', 'train_split': 'eval_train_split_'})


def test_evaluate_refuses_bad_sources_in_one_line(tmp_path, capsys):
  from lgvit import evaluate
  export_dir = _known_scores_export(tmp_path / 'export')
  assert evaluate.main(['--workdir', str(export_dir)]) == 2
  assert f'error: {export_dir} is a export dir, not a training workdir: pass it as --export' in capsys.readouterr().err
  assert evaluate.main(['--export', str(export_dir), '--evals', 'imagenet_v2', '--data-dir', str(tmp_path)]) == 2
  assert 'error: evaluator imagenet_v2: dataset' in capsys.readouterr().err


def test_a_missing_evaluator_dataset_fails_before_training(tmp_path):
  from lgvit import train
  config = _imagenet_config(str(tmp_path / 'empty'))
  config.data.dataset, config.num_classes = 'lgvit_digits', 10
  schema.keep_evals(config, 'main', 'imagenet_v2')
  with pytest.raises(DatasetNotFoundError, match=r'evaluator imagenet_v2: .* `tfds build imagenet_v2/matched-freq'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()

