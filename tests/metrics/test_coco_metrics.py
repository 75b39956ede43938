"""COCO scoring on a synthetic dataset: ground truth scores 100, known perturbations score what
pycocotools gives on the same files, segm results are scored on mask areas."""

import contextlib
import copy
import io
import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from lda_bench.data import CocoDetection, detections_to_coco, load_coco_api
from lda_bench.data.synthetic import CATEGORIES, write_synthetic_coco
from lda_bench.metrics import STAT_NAMES, coco_evaluate


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    ann = write_synthetic_coco(root, num_images=5, objects_per_image=4)
    return root, ann


def gt_results(ann_file, iou_type, score=1.0):
    gt = json.loads(ann_file.read_text())
    out = []
    for a in gt["annotations"]:
        if a["iscrowd"]:
            continue
        rec = {"image_id": a["image_id"], "category_id": a["category_id"], "score": score}
        if iou_type == "bbox":
            rec["bbox"] = list(a["bbox"])
        else:
            h, w = next((i["height"], i["width"]) for i in gt["images"] if i["id"] == a["image_id"])
            rle = mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], h, w))
            rle["counts"] = rle["counts"].decode("ascii")
            rec["segmentation"] = rle
        out.append(rec)
    return out


def pycocotools_stats(ann_file, results, iou_type):
    """Plain pycocotools on files, the way its README does it."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]


def test_synthetic_dataset_layout(dataset):
    root, ann = dataset
    data = CocoDetection(root)
    assert len(data) == 5 and data.cat_ids == [1, 3, 7]
    gt = json.loads(ann.read_text())
    assert sum(a["iscrowd"] for a in gt["annotations"]) == 1
    assert not [a for a in gt["annotations"] if a["image_id"] == data.images[-1].image_id]  # one empty image
    assert data.read_bgr(data.images[0]).shape == (96, 128, 3)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_ground_truth_scores_100(dataset, iou_type):
    _, ann = dataset
    out = coco_evaluate(load_coco_api(ann), gt_results(ann, iou_type), iou_type)
    assert out["metrics"]["AP"] == 100.0 and out["metrics"]["AP50"] == 100.0 and out["metrics"]["AR100"] == 100.0
    assert out["metrics"]["AP_large"] is None  # no ground truth above 96^2 px: pycocotools says -1
    assert out["stats"][5] == -1.0


def test_shifted_boxes_hand_computed_ap(dataset):
    _, ann = dataset
    results = gt_results(ann, "bbox")
    for r in results:
        x, y, w, h = r["bbox"]
        dx = w * 28 / 172  # IoU = (w - dx) / (w + dx) = 0.72 for a horizontal shift
        r["bbox"] = [x + dx, y, w, h]
    m = coco_evaluate(load_coco_api(ann), results, "bbox")["metrics"]
    # matched at IoU thresholds 0.50 ... 0.70 (5 of 10): AP 50, AP50 100, AP75 0
    assert m["AP"] == pytest.approx(50.0) and m["AP50"] == 100.0 and m["AP75"] == 0.0


def test_missing_category_halves_nothing_but_counts_zero(dataset):
    _, ann = dataset
    results = [r for r in gt_results(ann, "bbox") if r["category_id"] != 3]
    m = coco_evaluate(load_coco_api(ann), results, "bbox")["metrics"]
    assert m["AP"] == pytest.approx(200 / 3)  # categories 1 and 7 perfect, 3 scores 0


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_random_perturbations_match_pycocotools_on_files(dataset, tmp_path, iou_type):
    _, ann = dataset
    rng = np.random.default_rng(0)
    results = gt_results(ann, "bbox" if iou_type == "bbox" else "segm")
    image_ids = [i["id"] for i in json.loads(ann.read_text())["images"]]
    if iou_type == "bbox":
        for r in results:
            r["bbox"] = ([v + float(rng.normal(0, 3)) for v in r["bbox"][:2]]
                         + [max(1.0, v + float(rng.normal(0, 3))) for v in r["bbox"][2:]])
            r["score"] = float(rng.uniform(0.1, 1.0))
        results += [{"image_id": int(rng.choice(image_ids)), "category_id": 7, "bbox": [10.0, 10.0, 30.0, 20.0],
                     "score": 0.5} for _ in range(5)]  # false positives
    else:
        for r in results:
            r["score"] = float(rng.uniform(0.1, 1.0))
            mask = mask_utils.decode(r["segmentation"])
            mask[:, : mask.shape[1] // 2 + int(rng.integers(-10, 10))] = 0  # cut the left part off
            rle = mask_utils.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode("ascii")
            r["segmentation"] = rle
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    ours = coco_evaluate(load_coco_api(ann), json.loads(path.read_text()), iou_type)
    assert ours["stats"] == pytest.approx(pycocotools_stats(ann, json.loads(path.read_text()), iou_type))
    assert 0 < ours["metrics"]["AP"] < 100
    assert list(ours["metrics"]) == list(STAT_NAMES)


def test_segm_results_are_scored_without_their_bbox(dataset):
    _, ann = dataset
    results = gt_results(ann, "segm", score=0.9)
    boxes = {(r["image_id"], r["category_id"], i): r for i, r in enumerate(gt_results(ann, "bbox"))}
    for i, r in enumerate(results):  # every record carries a bbox, as mmdet's segm.json does
        r["bbox"] = boxes[(r["image_id"], r["category_id"], i)]["bbox"]
    blob = np.zeros((96, 128), dtype=np.uint8)
    blob[0:4, 0:4] = 1  # a 16-px false positive ...
    rle = mask_utils.encode(np.asfortranarray(blob))
    rle["counts"] = rle["counts"].decode("ascii")
    image_id = results[0]["image_id"]
    results.append({"image_id": image_id, "category_id": results[0]["category_id"], "segmentation": rle,
                    "score": 0.95, "bbox": [0.0, 0.0, 128.0, 96.0]})  # ... whose box is the whole image
    ours = coco_evaluate(load_coco_api(ann), results, "segm")
    no_bbox = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    assert ours["stats"] == pytest.approx(pycocotools_stats(ann, no_bbox, "segm"))
    # with the bbox kept, loadRes takes the box area (large), so the small false positive is ignored
    # in the small range and AP_small looks perfect
    with_bbox = pycocotools_stats(ann, results, "segm")
    assert with_bbox[3] == 1.0 and ours["stats"][3] < 1.0
    assert with_bbox[0] == pytest.approx(ours["stats"][0])  # overall AP does not depend on it


def test_empty_results_and_subset_of_images(dataset):
    _, ann = dataset
    gt = load_coco_api(ann)
    out = coco_evaluate(gt, [], "bbox")
    assert out["num_results"] == 0 and all(v is None or v == 0 for v in out["metrics"].values())
    first = json.loads(ann.read_text())["images"][0]["id"]
    only_first = [r for r in gt_results(ann, "bbox") if r["image_id"] == first]
    assert coco_evaluate(gt, only_first, "bbox", img_ids=[first])["metrics"]["AP"] == 100.0
    assert coco_evaluate(gt, only_first, "bbox")["metrics"]["AP"] < 100.0


def test_results_writer_format():
    import torch

    from lda_bench.structures import Detections

    masks = torch.zeros(2, 6, 8, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    det = Detections(torch.tensor([[1.0, 2.0, 4.5, 6.0], [0.0, 0.0, 8.0, 6.0]]), torch.tensor([0.9, 0.3]),
                     torch.tensor([0, 2]), masks)
    bbox, segm = detections_to_coco(det, 42, [c["id"] for c in CATEGORIES], with_masks=True)
    assert bbox[0] == {"image_id": 42, "bbox": [1.0, 2.0, 3.5, 4.0], "score": pytest.approx(0.9), "category_id": 1}
    assert bbox[1]["category_id"] == 7  # label 2 -> third category id
    assert "bbox" not in segm[0] and isinstance(segm[0]["segmentation"]["counts"], str)
    assert segm[0]["segmentation"]["size"] == [6, 8]
    assert mask_utils.area(segm[0]["segmentation"]) == 6
