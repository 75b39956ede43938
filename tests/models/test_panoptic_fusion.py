"""mmdet 2.x heuristic fusion on hand-made detections + semantic logits, then PQ on the result."""

import numpy as np
import pytest
import torch

from lda_bench.data.coco_panoptic import PanopticCategories, pan_to_segments
from lda_bench.metrics.panoptic import PQAccumulator
from lda_bench.models.panoptic_fusion import PANOPTIC_FPN_TEST_CFG, PanopticTestConfig, heuristic_fusion, lay_masks

# 2 things (labels 0, 1), 2 stuff (labels 2, 3); VOID label 4. Small images, so a small stuff limit.
CFG = PanopticTestConfig(stuff_area_limit=4)
H, W = 4, 6


def box_mask(rows, cols, inside=0.7, outside=0.2):
    m = torch.full((H, W), outside)
    m[rows, cols] = inside
    return m


def scene():
    # Semantic argmax: stuff 0 on cols 0-2, stuff 1 on cols 3-5, the "things" channel at rows 0-1
    # cols 0-1 and at (0, 5).
    logits = torch.zeros(3, H, W)
    logits[0, :, :3] = 1.0
    logits[1, :, 3:] = 1.0
    logits[2, 0:2, 0:2] = 2.0
    logits[2, 0, 5] = 2.0
    detections = [  # (score, label, mask)
        (0.9, 1, box_mask(slice(0, 2), slice(0, 3))),  # A: 6 px
        (0.8, 0, box_mask(slice(0, 3), slice(1, 3))),  # B: 6 px, 4 of them under A (4/6 > 0.5): dropped
        (0.7, 0, box_mask(slice(2, 4), slice(0, 1), inside=0.5)),  # C: 2 px (0.5 >= threshold), free
        (0.95, 0, box_mask(slice(3, 4), slice(4, 6))),  # D: 2 px, highest score, laid first
        (0.65, 1, torch.zeros(H, W)),  # E: empty mask: skipped
        (0.6, 1, box_mask(slice(1, 4), slice(2, 3))),  # F: 3 px, 1 under A (1/3 <= 0.5): keeps 2 px
    ]
    scores = torch.tensor([d[0] for d in detections])
    labels = torch.tensor([d[1] for d in detections])
    masks = torch.stack([d[2] for d in detections])
    boxes = torch.zeros(len(detections), 4)
    return boxes, scores, labels, masks, logits


EXPECTED = [
    # Laid by score: D -> id 1 (label 0 + 1000), A -> id 2 (1 + 2000), C -> id 3 (0 + 3000),
    # F -> id 4 (1 + 4000). Left: stuff 1 (label 3) 9 px, kept; stuff 0 (label 2) only at
    # (2, 1), (3, 1): 2 px < 4 -> VOID (4); the uncovered "things" pixel (0, 5) is VOID.
    [2001, 2001, 2001, 3, 3, 4],
    [2001, 2001, 2001, 3, 3, 3],
    [3000, 4, 4001, 3, 3, 3],
    [3000, 4, 4001, 3, 1000, 1000],
]


def test_fusion_gives_the_hand_made_map():
    pan = heuristic_fusion(*scene(), num_things_classes=2, num_stuff_classes=2, config=CFG)
    assert pan.tolist() == EXPECTED


def test_stuff_area_limit_is_mmdet_4096_by_default():
    assert PANOPTIC_FPN_TEST_CFG.stuff_area_limit == 4096
    assert (PANOPTIC_FPN_TEST_CFG.score_thr, PANOPTIC_FPN_TEST_CFG.mask_overlap) == (0.6, 0.5)
    pan = heuristic_fusion(*scene(), num_things_classes=2, num_stuff_classes=2)
    assert (pan < 1000).logical_and(pan != 4).sum() == 0  # every stuff region is below 4096 px


def test_lay_masks_order_and_overlap():
    _, scores, labels, masks, _ = scene()
    id_map, kept = lay_masks(scores, labels, masks >= 0.5, 0.5)
    assert kept.tolist() == [0, 1, 0, 1]  # D, A, C, F
    assert int((id_map == 4).sum()) == 2  # F keeps its 2 free pixels only
    empty_map, empty = lay_masks(torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, H, W, dtype=torch.bool))
    assert empty.numel() == 0 and int(empty_map.sum()) == 0


def test_no_detections_gives_semantic_map():
    _, _, _, _, logits = scene()
    pan = heuristic_fusion(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                           torch.zeros(0, H, W), logits, num_things_classes=2, num_stuff_classes=2, config=CFG)
    expected = np.array([[4, 4, 2, 3, 3, 4], [4, 4, 2, 3, 3, 3], [2, 2, 2, 3, 3, 3], [2, 2, 2, 3, 3, 3]])
    assert pan.tolist() == expected.tolist()


def test_inconsistent_detections_are_refused():
    boxes, scores, labels, masks, logits = scene()
    with pytest.raises(ValueError, match="disagree in number"):
        heuristic_fusion(boxes[:2], scores, labels, masks, logits, 2, 2, CFG)
    with pytest.raises(ValueError, match="num_stuff"):
        heuristic_fusion(boxes, scores, labels, masks, logits[:2], 2, 2, CFG)


def test_fused_map_scored_against_itself_and_a_ground_truth():
    categories = [{"id": 1, "name": "a", "isthing": 1}, {"id": 2, "name": "b", "isthing": 1},
                  {"id": 5, "name": "s0", "isthing": 0}, {"id": 6, "name": "s1", "isthing": 0}]
    cats = PanopticCategories.from_json(categories)
    pan = heuristic_fusion(*scene(), num_things_classes=2, num_stuff_classes=2, config=CFG)
    ids, segments = pan_to_segments(pan.numpy(), cats)
    acc = PQAccumulator(categories)
    acc.update(ids, [dict(s, iscrowd=0) for s in segments], ids, segments)
    assert acc.summary()["PQ"] == pytest.approx(100.0)
    # Ground truth where the stuff 0 strip (2 px, turned VOID by the area limit) is labelled:
    # the prediction's VOID there costs a FN for s0 and nothing else.
    gt = ids.copy()
    gt[2:4, 1] = 77
    acc = PQAccumulator(categories)
    acc.update(gt, [dict(s, iscrowd=0) for s in segments] + [{"id": 77, "category_id": 5, "iscrowd": 0}], ids, segments)
    s = acc.summary()
    assert s["per_class"]["s0"]["fn"] == 1 and s["per_class"]["s0"]["PQ"] == 0.0
    assert s["PQ"] == pytest.approx(100.0 * 3 / 4)  # a, b, s1 perfect; s0 0
