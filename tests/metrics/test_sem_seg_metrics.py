"""aAcc / mIoU / mAcc against hand-computed mmseg values."""

import math

import numpy as np
import pytest
import torch

from lda_bench.metrics.sem_seg import SemSegAccumulator, intersect_and_union


def test_perfect_predictions_give_100():
    rng = np.random.default_rng(0)
    acc = SemSegAccumulator(num_classes=5)
    for _ in range(3):
        label = rng.integers(0, 5, size=(7, 9)).astype(np.uint8)
        label[0, :3] = 255
        acc.update(label.astype(np.int64), label)  # prediction = label (255 pixels are ignored)
    m = acc.compute()
    assert (m["aAcc"], m["mIoU"], m["mAcc"]) == (100.0, 100.0, 100.0)
    assert m["num_images"] == 3


# Four classes; 255 = ignore.
LABEL = np.array([[0, 0, 0, 1, 1, 255],
                  [1, 1, 255, 0, 0, 0]], dtype=np.uint8)
PRED = np.array([[0, 0, 1, 1, 2, 3],
                 [1, 1, 0, 0, 2, 2]])


def test_hand_computed_case():
    inter, union, area_pred, area_label = intersect_and_union(PRED, LABEL, num_classes=4)
    # 10 valid pixels (the two 255s dropped, with the predictions 3 and 0 on them).
    # class 0: label 6, pred 3, inter 3 -> union 6 -> IoU 0.5,  Acc 3/6 = 0.5
    # class 1: label 4, pred 4, inter 3 -> union 5 -> IoU 0.6,  Acc 3/4 = 0.75
    # class 2: label 0, pred 3, inter 0 -> union 3 -> IoU 0,    Acc 0/0 = NaN (skipped)
    # class 3: predicted only on an ignored pixel -> union 0 -> IoU NaN, Acc NaN (absent from both)
    assert inter.tolist() == [3, 3, 0, 0]
    assert union.tolist() == [6, 5, 3, 0]
    assert area_pred.tolist() == [3, 4, 3, 0]
    assert area_label.tolist() == [6, 4, 0, 0]
    acc = SemSegAccumulator(num_classes=4)
    acc.update(torch.from_numpy(PRED), LABEL)
    m = acc.compute(["a", "b", "c", "d"])
    assert m["aAcc"] == pytest.approx(60.0)  # (3 + 3) / 10
    assert m["mIoU"] == pytest.approx(110.0 / 3)  # (0.5 + 0.6 + 0) / 3
    assert m["mAcc"] == pytest.approx(62.5)  # (0.5 + 0.75) / 2
    assert m["per_class"]["c"]["IoU"] == 0.0 and math.isnan(m["per_class"]["c"]["Acc"])
    assert math.isnan(m["per_class"]["d"]["IoU"]) and math.isnan(m["per_class"]["d"]["Acc"])


def test_counts_are_summed_over_the_dataset_before_dividing():
    acc = SemSegAccumulator(num_classes=2)
    acc.update(np.array([[0, 0, 1, 1]]), np.array([[0, 0, 1, 1]], np.uint8))  # perfect: mIoU 100 alone
    acc.update(np.zeros((1, 8), np.int64), np.ones((1, 8), np.uint8))  # all wrong: mIoU 0 alone
    # Summed: class 0 inter 2, pred 10, label 2 -> IoU 2/10; class 1 inter 2, pred 2, label 10 -> 2/10.
    # mIoU 20 (the mean of per-image mIoUs would be 50). aAcc 4/12, mAcc (1 + 0.2) / 2.
    m = acc.compute()
    assert m["mIoU"] == pytest.approx(20.0)
    assert m["aAcc"] == pytest.approx(100.0 / 3)
    assert m["mAcc"] == pytest.approx(60.0)


def test_out_of_range_values_are_ignored_like_histc():
    inter, union, area_pred, area_label = intersect_and_union(np.array([[0, 7]]), np.array([[0, 9]]), 2)
    assert area_pred.tolist() == [1, 0] and area_label.tolist() == [1, 0] and inter.tolist() == [1, 0]


def test_merge_and_tensor_round_trip():
    halves = [SemSegAccumulator(4), SemSegAccumulator(4)]
    halves[0].update(PRED[:1], LABEL[:1])
    halves[1].update(PRED[1:], LABEL[1:])
    whole = SemSegAccumulator(4)
    whole.update(PRED[:1], LABEL[:1])
    whole.update(PRED[1:], LABEL[1:])
    merged = SemSegAccumulator(4)
    merged.load_tensor(halves[0].as_tensor() + halves[1].as_tensor())
    assert torch.equal(merged.as_tensor(), whole.as_tensor())
    halves[0] += halves[1]
    assert torch.equal(halves[0].as_tensor(), whole.as_tensor())
    with pytest.raises(ValueError):
        whole.merge(SemSegAccumulator(5))


def test_input_errors():
    acc = SemSegAccumulator(3)
    with pytest.raises(ValueError, match="differs from label shape"):
        acc.update(np.zeros((2, 2), np.int64), np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="integer class indices"):
        acc.update(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.uint8))
