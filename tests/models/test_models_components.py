"""Hand-computed checks of every detector component that differs from torchvision's."""

import math

import pytest
import torch
import torch.nn.functional as F

from lda_bench.models.anchors import AnchorGenerator
from lda_bench.models.bbox_head import RCNN_STDS
from lda_bench.models.box_coder import MAX_DWH, decode_deltas, encode_deltas
from lda_bench.models.config import RPNTestConfig
from lda_bench.models.mask_head import paste_masks
from lda_bench.models.nms import batched_nms, multiclass_nms
from lda_bench.models.roi_extractor import RoIExtractor, bbox2roi, map_roi_levels
from lda_bench.models.rpn import RPNHead

# --- anchors -----------------------------------------------------------------------------------

S2 = 8 * 4 * math.sqrt(2) / 2  # half the long side of a ratio-0.5 / ratio-2 anchor at stride 4: 22.627417
S1 = 8 * 4 / math.sqrt(2) / 2  # half the short side: 11.313708


def test_base_anchors_are_float_and_centred_on_zero():
    gen = AnchorGenerator()
    # ratio = h / w: 0.5 is wide, 1 square (32 x 32 at stride 4), 2 tall; torchvision would round
    # the half sizes to 23 and 11.
    expected = torch.tensor([[-S2, -S1, S2, S1], [-16, -16, 16, 16], [-S1, -S2, S1, S2]])
    torch.testing.assert_close(gen.base_anchors[0], expected)
    assert gen.base_anchors[0][0, 0] != -23.0
    torch.testing.assert_close(gen.base_anchors[4][1], torch.tensor([-256.0, -256.0, 256.0, 256.0]))  # stride 64


def test_grid_anchor_order_is_y_x_anchor():
    gen = AnchorGenerator()
    anchors = gen.grid_anchors([(2, 3), (1, 1), (1, 1), (1, 1), (1, 1)])
    assert anchors[0].shape == (2 * 3 * 3, 4)
    # (y=1, x=2, anchor=1): index (1*3 + 2)*3 + 1 = 16, centre (8, 4), the 32 x 32 square
    torch.testing.assert_close(anchors[0][16], torch.tensor([-8.0, -12.0, 24.0, 20.0]))
    # (y=0, x=1, anchor=0): centre (4, 0)
    torch.testing.assert_close(anchors[0][3], torch.tensor([4 - S2, -S1, 4 + S2, S1]))


# --- box coding ---------------------------------------------------------------------------------

def test_decode_hand_values_rpn_and_rcnn_stds():
    roi = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), 10 x 20
    # dx 0.1 -> centre x 6; dy 0.2 -> centre y 14; dw log 2 -> width 20; dh 0 -> height 20
    box = decode_deltas(roi, torch.tensor([[0.1, 0.2, math.log(2), 0.0]]))
    torch.testing.assert_close(box, torch.tensor([[-4.0, 4.0, 16.0, 24.0]]))
    # the RCNN coder divides the network output by stds (0.1, 0.1, 0.2, 0.2) when encoding
    box = decode_deltas(roi, torch.tensor([[1.0, 2.0, 5 * math.log(2), 0.0]]), stds=RCNN_STDS)
    torch.testing.assert_close(box, torch.tensor([[-4.0, 4.0, 16.0, 24.0]]))


def test_decode_clamps_dw_dh_both_ways_and_clips_to_image():
    roi = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    box = decode_deltas(roi, torch.tensor([[0.0, 0.0, 10.0, -10.0]]))
    # |dw|, |dh| <= log(1000/16) = 4.135: width 10 * 62.5 = 625, height 10 / 62.5 = 0.16
    assert MAX_DWH == pytest.approx(math.log(62.5))
    torch.testing.assert_close(box, torch.tensor([[5 - 312.5, 5 - 0.08, 5 + 312.5, 5 + 0.08]]))
    clipped = decode_deltas(roi, torch.tensor([[0.0, 0.0, 10.0, -10.0]]), max_shape=(7, 12))
    # x to [0, W = 12], y to [0, H = 7] (no -1, mmdet >= 2.0)
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 4.92, 12.0, 5.08]]))


def test_decode_is_class_major_and_inverts_encode():
    rois = torch.tensor([[2.0, 3.0, 30.0, 50.0], [10.0, 10.0, 20.0, 40.0]])
    gt = torch.tensor([[4.0, 1.0, 35.0, 44.0], [12.0, 15.0, 16.0, 41.0]])
    deltas = encode_deltas(rois, gt, stds=RCNN_STDS)
    torch.testing.assert_close(deltas[0, 0], torch.tensor((19.5 - 16.0) / 28.0 / 0.1))  # dx = (gx - px) / pw / std
    two_classes = torch.cat([torch.zeros_like(deltas), deltas], dim=1)  # class 0: no change, class 1: gt
    out = decode_deltas(rois, two_classes, stds=RCNN_STDS)
    torch.testing.assert_close(out[:, :4], rois)
    torch.testing.assert_close(out[:, 4:], gt)


# --- RoI level mapping and aligned RoIAlign ------------------------------------------------------

@pytest.mark.parametrize(
    "side,level",
    [(10, 0), (111.9, 0), (112, 1), (223.9, 1), (224, 2), (447, 2), (448, 3), (2000, 3)],
)
def test_roi_level_mapping(side, level):
    # floor(log2(sqrt(wh) / 56 + 1e-6)) clamped to [0, 3]: < 112 -> P2, 112..224 -> P3, 224..448 -> P4, >= 448 -> P5
    rois = torch.tensor([[0.0, 0.0, 0.0, side, side]])
    assert map_roi_levels(rois, 4).item() == level


def test_roi_align_is_aligned_with_adaptive_sampling():
    # f(y, x) = x: bilinear sampling returns the x coordinate in pixel-index units.
    feat = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 8, 8).contiguous()
    extractor = RoIExtractor(2, strides=(1,))
    out = extractor([feat], torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]]))
    # aligned=True shifts the box by -0.5 px: [-0.5, 3.5]; bins 2 px wide; sampling_ratio 0 -> ceil(4/2) = 2
    # samples per bin at x = 0, 1 | 2, 3 -> means 0.5 | 2.5. (aligned=False would give 1.0 | 3.0.)
    torch.testing.assert_close(out[0, 0], torch.tensor([[0.5, 2.5], [0.5, 2.5]]))


def test_roi_extractor_pools_each_roi_from_its_level():
    feats = [torch.full((1, 1, 64, 64), float(level)) for level in range(4)]
    rois = bbox2roi([torch.tensor([[0.0, 0.0, 50, 50], [0, 0, 150, 150], [0, 0, 300, 300], [0, 0, 600, 600]])])
    out = RoIExtractor(7)(feats, rois)
    assert out[:, 0].mean(dim=(1, 2)).tolist() == [0.0, 1.0, 2.0, 3.0]


# --- NMS ------------------------------------------------------------------------------------------

def test_batched_nms_separates_classes():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10]])  # IoU(0, 1) = 90/110
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 1]), 0.5).tolist() == [0, 2]
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 1]), 0.85).tolist() == [0, 1, 2]


def test_multiclass_nms_background_last_threshold_and_order():
    boxes = torch.tensor([[0.0, 0, 10, 10, 0, 0, 20, 20], [0, 0, 10, 10, 0, 0, 20, 20]])  # 2 classes x 4
    scores = torch.tensor([[0.6, 0.05, 0.35], [0.3, 0.2, 0.5]])  # last column: background, never a label
    out_boxes, out_scores, labels = multiclass_nms(boxes, scores, 0.05, 0.5, 100)
    # 0.05 is not > 0.05; the two class-0 boxes coincide, NMS keeps the 0.6 one
    assert out_scores.tolist() == pytest.approx([0.6, 0.2])
    assert labels.tolist() == [0, 1]
    torch.testing.assert_close(out_boxes, torch.tensor([[0.0, 0, 10, 10], [0, 0, 20, 20]]))
    assert multiclass_nms(boxes, scores, 0.05, 0.5, 1)[2].tolist() == [0]
    empty = multiclass_nms(torch.zeros(0, 8), torch.zeros(0, 3), 0.05, 0.5, 100)  # no proposals at all
    assert [t.shape[0] for t in empty] == [0, 0, 0]


# --- RPN proposals ----------------------------------------------------------------------------------

def test_rpn_proposals_decode_clip_and_nms_per_level():
    head = RPNHead(8)
    sizes = [(2, 2), (1, 1), (1, 1), (1, 1), (1, 1)]
    scores = [torch.full((1, 3, h, w), -10.0) for h, w in sizes]
    deltas = [torch.zeros(1, 12, h, w) for h, w in sizes]
    scores[0][0, 1, 1, 1] = 5.0  # level 0, anchor 1 (32 x 32 square) at (y=1, x=1): centre (4, 4)
    scores[1][0, 1, 0, 0] = 4.0  # level 1, same centre-0 square 64 x 64
    out = head.proposals(scores, deltas, [(20, 30)], RPNTestConfig())[0]
    # boxes are clipped to the 30 x 20 image; the two top boxes overlap a lot but are on different
    # levels, so per-level NMS keeps both
    torch.testing.assert_close(out[0], torch.tensor([0.0, 0.0, 20.0, 20.0, torch.sigmoid(torch.tensor(5.0)).item()]))
    torch.testing.assert_close(out[1], torch.tensor([0.0, 0.0, 30.0, 20.0, torch.sigmoid(torch.tensor(4.0)).item()]))


# --- mask pasting -------------------------------------------------------------------------------------

def test_paste_uniform_mask_hand_values():
    # A 2x2 mask of 0.6 pasted into the 4x4 box [0, 4): pixel centres 0.5..3.5 map to mask
    # coordinates -0.25, 0.25, 0.75, 1.25; zero padding halves nothing in the middle (0.6) but gives
    # 0.75 * 0.6 = 0.45 < 0.5 on the border rows/columns. So only the centre 2x2 is set.
    probs = torch.full((1, 2, 2), 0.6)
    mask = paste_masks(probs, torch.tensor([[0.0, 0.0, 4.0, 4.0]]), 6, 6)
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[1:3, 1:3] = True
    assert torch.equal(mask[0], expected)


def _paste_full_image(probs, boxes, h, w):
    """mmdet's _do_paste_mask with skip_empty=False (the GPU path), over the whole image."""
    x0, y0, x1, y1 = torch.split(boxes, 1, dim=1)
    img_y = (torch.arange(0, h, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
    img_x = (torch.arange(0, w, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
    img_x[torch.isinf(img_x)] = 0
    img_y[torch.isinf(img_y)] = 0
    n = probs.shape[0]
    grid = torch.stack([img_x[:, None, :].expand(n, h, w), img_y[:, :, None].expand(n, h, w)], dim=3)
    return F.grid_sample(probs[:, None], grid, align_corners=False)[:, 0] >= 0.5


def test_paste_equals_uncropped_mmdet_paste():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(6, 28, 28, generator=g)
    probs[0] = 1.0  # saturated mask: its box edge lands exactly on 0.5
    # boxes: ordinary, whole image, partly outside, zero width (mmdet paints a full-height stripe),
    # tiny, and one ending just inside the border
    boxes = torch.tensor([[3.2, 4.7, 40.1, 30.3], [0.0, 0.0, 64.0, 48.0], [-10.0, 20.0, 30.0, 70.0],
                          [50.5, 10.0, 50.5, 30.0], [10.0, 10.0, 11.0, 11.0], [20.0, 5.0, 63.9, 47.9]])
    ours = paste_masks(probs, boxes, 48, 64)
    assert torch.equal(ours, _paste_full_image(probs, boxes, 48, 64))
