"""PQ/SQ/RQ against hand-computed panopticapi values (split segment, VOID, crowd, absent class)."""

import math

import numpy as np
import pytest
import torch

from lda_bench.metrics.panoptic import PanopticFormatError, PQAccumulator

# 1 person / 2 car: things; 10 sky / 11 grass / 12 road: stuff (road never appears).
CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 2, "name": "car", "isthing": 1},
    {"id": 10, "name": "sky", "isthing": 0},
    {"id": 11, "name": "grass", "isthing": 0},
    {"id": 12, "name": "road", "isthing": 0},
]


def seg(seg_id, category_id, iscrowd=0, area=None):
    s = {"id": seg_id, "category_id": category_id, "iscrowd": iscrowd}
    if area is not None:
        s["area"] = area
    return s


def split_case():
    """4 x 5 image. GT person (id 1) rows 0-1 (10 px), grass (id 2) rows 2-3 (10 px).
    Prediction splits the person into 6 px (id 5) + 4 px (id 6); grass (id 7) exact."""
    gt = np.zeros((4, 5), np.int64)
    gt[0:2] = 1
    gt[2:4] = 2
    pred = np.zeros((4, 5), np.int64)
    pred[0] = 5
    pred[1, :1] = 5
    pred[1, 1:] = 6
    pred[2:4] = 7
    gt_segs = [seg(1, 1, area=10), seg(2, 11, area=10)]
    pred_segs = [seg(5, 1), seg(6, 1), seg(7, 11)]
    return gt, gt_segs, pred, pred_segs


def void_case():
    """GT sky (id 3) rows 0-1, VOID row 2, grass (id 4) row 3. Prediction: sky (id 8) rows 0-1
    plus 3 VOID pixels of row 2; grass (id 9) row 3; car (id 10) on the last 2 VOID pixels."""
    gt = np.zeros((4, 5), np.int64)
    gt[0:2] = 3
    gt[3] = 4
    pred = np.zeros((4, 5), np.int64)
    pred[0:2] = 8
    pred[2, :3] = 8
    pred[2, 3:] = 10
    pred[3] = 9
    gt_segs = [seg(3, 10), seg(4, 11)]  # no 'area': counted from the map (10 and 5)
    pred_segs = [seg(8, 10), seg(9, 11), seg(10, 2)]
    return gt, gt_segs, pred, pred_segs


def crowd_case():
    """GT car crowd (id 5) rows 0-1, person (id 6) row 2, grass (id 7) row 3.
    Prediction: car (id 11) = row 0 (on the crowd) + row 2 cols 0-1 (on the person), 7 px;
    person (id 12) = row 1 (on the car crowd) + row 2 cols 2-4, 8 px; grass (id 13) row 3."""
    gt = np.zeros((4, 5), np.int64)
    gt[0:2] = 5
    gt[2] = 6
    gt[3] = 7
    pred = np.zeros((4, 5), np.int64)
    pred[0] = 11
    pred[2, :2] = 11
    pred[1] = 12
    pred[2, 2:] = 12
    pred[3] = 13
    gt_segs = [seg(5, 2, iscrowd=1, area=10), seg(6, 1, area=5), seg(7, 11, area=5)]
    pred_segs = [seg(11, 2), seg(12, 1), seg(13, 11)]
    return gt, gt_segs, pred, pred_segs


def accumulate(*cases):
    acc = PQAccumulator(CATEGORIES)
    for i, (gt, gt_segs, pred, pred_segs) in enumerate(cases):
        acc.update(gt, gt_segs, pred, pred_segs, image_id=i)
    return acc


def test_perfect_predictions_give_100():
    acc = PQAccumulator(CATEGORIES)
    for gt, gt_segs, _, _ in (split_case(), void_case(), crowd_case()):
        # Ground truth fed back as the prediction. The crowd region becomes a car prediction that
        # matches nothing (crowd is never matched) but lies fully on the car crowd: ignored, no FP.
        acc.update(gt, gt_segs, gt, gt_segs)
    s = acc.summary()
    for key in ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"):
        assert s[key] == pytest.approx(100.0), key


def test_split_segment():
    s = accumulate(split_case()).summary()
    # person: IoU(gt 1, pred 5) = 6 / (6 + 10 - 6) = 0.6 > 0.5 -> TP; pred 6 (IoU 0.4) -> FP.
    #   PQ = 0.6 / (1 + 0.5*1) = 0.4, SQ = 0.6 / 1 = 0.6, RQ = 1 / 1.5 = 2/3
    # grass: exact -> 1, 1, 1. car, sky, road: TP + FP + FN = 0 -> not averaged.
    assert s["per_class"]["person"]["PQ"] == pytest.approx(40.0)
    assert s["per_class"]["person"]["SQ"] == pytest.approx(60.0)
    assert s["per_class"]["person"]["RQ"] == pytest.approx(200.0 / 3)
    assert (s["per_class"]["person"]["tp"], s["per_class"]["person"]["fp"], s["per_class"]["person"]["fn"]) == (1, 1, 0)
    assert s["PQ"] == pytest.approx(70.0)  # (0.4 + 1) / 2
    assert s["SQ"] == pytest.approx(80.0)  # (0.6 + 1) / 2
    assert s["RQ"] == pytest.approx(250.0 / 3)  # (2/3 + 1) / 2 = 5/6
    assert (s["PQ_th"], s["SQ_th"], s["RQ_th"]) == pytest.approx((40.0, 60.0, 200.0 / 3))
    assert (s["PQ_st"], s["SQ_st"], s["RQ_st"]) == pytest.approx((100.0, 100.0, 100.0))
    assert s["num_categories"] == {"all": 2, "things": 1, "stuff": 1}


def test_void_region():
    s = accumulate(void_case()).summary()
    # sky: inter 10, pred area 13, gt area 10, pred-on-VOID 3: union = 13 + 10 - 10 - 3 = 10 -> IoU 1.
    # car prediction: 2 px, both on VOID: 2/2 > 0.5 -> ignored, so car has no TP/FP/FN.
    assert s["per_class"]["sky"]["PQ"] == pytest.approx(100.0)
    assert s["per_class"]["car"] == {"PQ": 0.0, "SQ": 0.0, "RQ": 0.0, "tp": 0, "fp": 0, "fn": 0, "iou": 0.0}
    assert s["PQ"] == pytest.approx(100.0)
    assert s["num_categories"] == {"all": 2, "things": 0, "stuff": 2}
    assert math.isnan(s["PQ_th"])  # no thing category counted: undefined (panopticapi divides by 0)


def test_crowd_region():
    s = accumulate(crowd_case()).summary()
    # car crowd: never matched and never a FN. Car prediction: (0 VOID + 5 on the car crowd) / 7
    #   = 0.71 > 0.5 -> ignored. Person prediction: IoU 3 / (8 + 5 - 3) = 0.3 -> no match; its
    #   5 px on the crowd are of another category -> FP; the person GT -> FN.
    # person: PQ = 0 / (0 + 0.5 + 0.5) = 0, SQ = 0 (no TP), RQ = 0. grass: 1, 1, 1.
    assert s["per_class"]["car"]["tp"] + s["per_class"]["car"]["fp"] + s["per_class"]["car"]["fn"] == 0
    assert (s["per_class"]["person"]["fp"], s["per_class"]["person"]["fn"]) == (1, 1)
    assert s["PQ"] == pytest.approx(50.0)  # (0 + 1) / 2
    assert s["SQ"] == pytest.approx(50.0)
    assert s["RQ"] == pytest.approx(50.0)
    assert (s["PQ_th"], s["PQ_st"]) == pytest.approx((0.0, 100.0))


def test_three_images_summed_per_category():
    s = accumulate(split_case(), void_case(), crowd_case()).summary()
    # person: TP 1, FP 1 + 1, FN 0 + 1, IoU 0.6 -> PQ 0.6 / (1 + 1 + 0.5) = 0.24, SQ 0.6, RQ 1 / 2.5 = 0.4
    # sky: TP 1, IoU 1. grass: TP 3, IoU 3 -> 1, 1, 1. car: ignored twice -> not counted.
    # road: absent from ground truth and predictions -> not counted.
    # All: PQ (0.24 + 1 + 1) / 3 = 74.666..., SQ (0.6 + 2) / 3 = 86.666..., RQ (0.4 + 2) / 3 = 80
    assert s["PQ"] == pytest.approx(224.0 / 3)
    assert s["SQ"] == pytest.approx(260.0 / 3)
    assert s["RQ"] == pytest.approx(80.0)
    assert (s["PQ_th"], s["SQ_th"], s["RQ_th"]) == pytest.approx((24.0, 60.0, 40.0))
    assert (s["PQ_st"], s["SQ_st"], s["RQ_st"]) == pytest.approx((100.0, 100.0, 100.0))
    assert s["num_categories"] == {"all": 3, "things": 1, "stuff": 2}
    assert s["num_images"] == 3
    assert s["per_class"]["road"]["tp"] + s["per_class"]["road"]["fp"] + s["per_class"]["road"]["fn"] == 0


def test_iou_exactly_half_is_not_a_match():
    gt = np.zeros((2, 4), np.int64)
    gt[:, :] = 1
    pred = np.zeros((2, 4), np.int64)
    pred[:, :2] = 2  # IoU 4 / 8 = 0.5: panopticapi requires > 0.5
    pred[:, 2:] = 3
    acc = PQAccumulator(CATEGORIES)
    acc.update(gt, [seg(1, 10)], pred, [seg(2, 10), seg(3, 10)])
    assert acc.category_counts(10) == {"tp": 0, "fp": 2, "fn": 1, "iou": 0.0}


def test_merge_equals_single_accumulator():
    cases = (split_case(), void_case(), crowd_case())
    whole = accumulate(*cases)
    parts = [accumulate(c) for c in cases]
    merged = PQAccumulator(CATEGORIES)
    for p in parts:
        merged += p
    assert np.array_equal(merged.stats, whole.stats)
    # Through the tensor form used by all_reduce.
    summed = sum(p.as_tensor() for p in parts)
    restored = PQAccumulator(CATEGORIES)
    restored.load_tensor(summed)
    assert np.array_equal(restored.stats, whole.stats) and restored.num_images == 3
    assert restored.summary()["PQ"] == pytest.approx(whole.summary()["PQ"])


def test_accepts_torch_maps():
    gt, gt_segs, pred, pred_segs = split_case()
    acc = PQAccumulator(CATEGORIES)
    acc.update(torch.from_numpy(gt), gt_segs, torch.from_numpy(pred), pred_segs)
    assert acc.summary()["PQ"] == pytest.approx(70.0)


def test_prediction_format_errors():
    gt, gt_segs, pred, pred_segs = split_case()
    acc = PQAccumulator(CATEGORIES)
    with pytest.raises(PanopticFormatError, match="not in its segments_info"):
        acc.update(gt, gt_segs, pred, pred_segs[:1] + pred_segs[2:])  # id 6 in the map only
    with pytest.raises(PanopticFormatError, match="not in the prediction map"):
        acc.update(gt, gt_segs, pred, pred_segs + [seg(99, 1)])
    with pytest.raises(PanopticFormatError, match="unknown category_id"):
        acc.update(gt, gt_segs, pred, [seg(5, 1), seg(6, 3), seg(7, 11)])
    with pytest.raises(PanopticFormatError, match="differ in size"):
        acc.update(gt, gt_segs, pred[:2], pred_segs)
