"""lgvit.detection: COCO scoring on synthetic sets whose AP is known by hand, mask pasting vs grid_sample."""
import numpy as np
import pytest
import torch

from lgvit import detection


def square_mask(hw, x1, y1, x2, y2):
  mask = np.zeros(hw, bool)
  mask[y1:y2, x1:x2] = True
  return mask


def test_box_of_iou_0_6_scores_ap_0_3_ap50_1_ap75_0():
  """One ground truth box, one detection overlapping it at IoU 0.6: a hit at the IoU thresholds 0.5,
  0.55 and 0.6 of COCO's ten (0.5:0.05:0.95), a miss at the seven others."""
  scorer = detection.CocoScorer([1], iou_types=('bbox',))
  scorer.add_ground_truth(7, (100, 100), np.array([[10, 10, 60, 60]]), np.array([0]))
  # [10, 10, 60, 60] vs [10, 10, 60, 40]: intersection 50x30 = 1500, union 2500 -> IoU 0.6
  scorer.add_detections(7, np.array([[10, 10, 60, 40]]), np.array([0.9]), np.array([0]))
  m = scorer.metrics()
  assert m['bbox_AP'] == pytest.approx(0.3, abs=1e-6)
  assert (m['bbox_AP50'], m['bbox_AP75']) == (pytest.approx(1.0), pytest.approx(0.0))
  assert m['bbox_APm'] == pytest.approx(0.3, abs=1e-6) and m['bbox_APs'] == -1  # 2500 px: a medium object
  assert m['count'] == 1


def test_a_false_positive_between_two_hits_gives_cocos_101_point_ap():
  """Two ground truths over two images; detections ranked hit (0.9), false positive (0.8), hit (0.7):
  precision 1 up to recall 0.5 and 2/3 up to recall 1, so the 101-point interpolated AP is
  (51 * 1 + 50 * 2/3) / 101 at every IoU threshold (the hits are exact)."""
  scorer = detection.CocoScorer([3, 5])
  hw = (64, 80)
  gt_a, gt_b = (4, 4, 40, 30), (20, 10, 70, 60)
  scorer.add_ground_truth(1, hw, np.array([gt_a]), np.array([1]), masks=square_mask(hw, *gt_a)[None])
  scorer.add_ground_truth(2, hw, np.array([gt_b]), np.array([1]), masks=square_mask(hw, *gt_b)[None])
  wrong = (50, 40, 70, 60)
  scorer.add_detections(1, np.array([gt_a, wrong]), np.array([0.9, 0.8]), np.array([1, 1]),
                        masks=np.stack([square_mask(hw, *gt_a), square_mask(hw, *wrong)]))
  scorer.add_detections(2, np.array([gt_b]), np.array([0.7]), np.array([1]), masks=square_mask(hw, *gt_b)[None])
  m = scorer.metrics()
  expected = (51 + 50 * 2 / 3) / 101
  for kind in ('bbox', 'segm'):
    assert m[f'{kind}_AP'] == pytest.approx(expected, abs=1e-6), kind
    assert m[f'{kind}_AP50'] == pytest.approx(expected, abs=1e-6), kind
  # A detection of the other category matches nothing: the score of category 5 alone would fall.
  assert scorer.category_ids == [3, 5]


def test_crowd_ground_truth_neither_counts_as_missed_nor_makes_a_detection_false():
  """COCOeval ignores a detection matched to a crowd region and never counts the region as missed."""
  scorer = detection.CocoScorer([1], iou_types=('bbox',))
  scorer.add_ground_truth(1, (100, 100), np.array([[0, 0, 40, 40], [50, 50, 100, 100]]), np.array([0, 0]),
                          is_crowd=np.array([False, True]))
  scorer.add_detections(1, np.array([[0, 0, 40, 40], [55, 55, 95, 95]]), np.array([0.5, 0.9]), np.array([0, 0]))
  assert scorer.metrics()['bbox_AP'] == pytest.approx(1.0)
  # The same set without the crowd flag: the better-ranked detection is now a hit on a real, second
  # object at IoU 0.64 (a miss above 0.6), and AP drops.
  plain = detection.CocoScorer([1], iou_types=('bbox',))
  plain.add_ground_truth(1, (100, 100), np.array([[0, 0, 40, 40], [50, 50, 100, 100]]), np.array([0, 0]))
  plain.add_detections(1, np.array([[0, 0, 40, 40], [55, 55, 95, 95]]), np.array([0.5, 0.9]), np.array([0, 0]))
  assert plain.metrics()['bbox_AP'] < 0.9


def test_nothing_detected_scores_zero_not_an_error():
  scorer = detection.CocoScorer([1])
  scorer.add_ground_truth(1, (32, 32), np.array([[0, 0, 10, 10]]), np.array([0]), masks=square_mask((32, 32), 0, 0, 10, 10)[None])
  m = scorer.metrics()
  assert m['bbox_AP'] == 0 and m['segm_AP'] == 0


def grid_sample_paste(mask, box, hw):
  """mmdetection's ``_do_paste_mask`` written with torch's grid_sample over the whole image."""
  h, w = hw
  x1, y1, x2, y2 = box
  ys = (torch.arange(h, dtype=torch.float64) + 0.5 - y1) / (y2 - y1) * 2 - 1
  xs = (torch.arange(w, dtype=torch.float64) + 0.5 - x1) / (x2 - x1) * 2 - 1
  grid = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1)[None]
  out = torch.nn.functional.grid_sample(torch.from_numpy(mask)[None, None].double(), grid, align_corners=False)
  return out[0, 0].numpy()


@pytest.mark.parametrize('box', [(3.2, 5.7, 30.9, 21.1), (-6.0, -3.5, 12.0, 40.0), (40.0, 2.0, 63.5, 47.9),
                                 (10.0, 10.0, 10.4, 30.0)])
def test_paste_masks_equals_grid_sample_over_the_whole_image(box):
  rng = np.random.default_rng(0)
  mask = rng.uniform(size=(28, 28))
  hw = (48, 64)
  reference = grid_sample_paste(mask, box, hw) >= 0.5
  pasted = detection.paste_masks(mask[None], np.array([box]), hw)[0]
  np.testing.assert_array_equal(pasted, reference)
  # The threshold is applied to the same probabilities: a lower threshold only adds pixels.
  assert (detection.paste_masks(mask[None], np.array([box]), hw, threshold=0.2)[0] >= pasted).all()


def test_boxes_go_back_to_the_original_image_and_clip():
  boxes = np.array([[10.0, 20.0, 400.0, 300.0], [-5.0, 0.0, 1400.0, 900.0]])
  out = detection.to_original(boxes, scale=(2.0, 2.5), orig_hw=(400, 500))
  np.testing.assert_allclose(out[0], [4.0, 10.0, 160.0, 150.0])
  np.testing.assert_allclose(out[1], [0.0, 0.0, 500.0, 400.0])
