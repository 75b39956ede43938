"""COCO-panoptic reading/writing, and PQ on files (the panopticapi pq_compute path)."""

import json

import numpy as np
import pytest
from PIL import Image

from lda_bench.data.coco_panoptic import (
    CocoPanoptic,
    PanopticCategories,
    PanopticPredictionWriter,
    id2rgb,
    pan_to_segments,
    read_id_png,
    rgb2id,
)
from lda_bench.metrics.panoptic import PanopticFormatError, evaluate_panoptic_files

# Listed out of order on purpose: labels must be things by id, then stuff by id.
CATEGORIES = [
    {"id": 92, "name": "banner", "isthing": 0},
    {"id": 3, "name": "car", "isthing": 1},
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 184, "name": "tree", "isthing": 0},
]


def test_rgb_id_round_trip():
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 4001, 256**3 - 1]])
    rgb = id2rgb(ids)
    assert rgb.dtype == np.uint8
    assert rgb[0, 3].tolist() == [0, 1, 0]  # 256 = R 0 + 256 * G 1
    assert rgb[1, 1].tolist() == [0, 0, 1]  # 65536 = 256^2 * B 1
    assert np.array_equal(rgb2id(rgb), ids)
    with pytest.raises(ValueError):
        id2rgb(np.array([[256**3]]))


def test_categories_follow_mmdet_label_order():
    cats = PanopticCategories.from_json(CATEGORIES)
    assert [c["id"] for c in cats.categories] == [1, 3, 92, 184]
    assert (cats.num_things, cats.num_stuff, cats.num_classes) == (2, 2, 4)
    assert cats.names == ("person", "car", "banner", "tree")
    assert cats.cat_id(2) == 92 and cats.label(184) == 3 and cats.isthing(1) and not cats.isthing(2)


def test_pan_to_segments_like_mmdet_pan2json():
    cats = PanopticCategories.from_json(CATEGORIES)
    void = cats.num_classes  # 4
    pan = np.array([[2, 2, 1000, void], [3, 3, 2001, 2001]])  # stuff labels 2, 3; instances of labels 0, 1
    ids, segments = pan_to_segments(pan, cats)
    assert ids.tolist() == [[2, 2, 1000, 0], [3, 3, 2001, 2001]]
    assert segments == [
        {"id": 2, "category_id": 92, "isthing": 0, "area": 2},
        {"id": 3, "category_id": 184, "isthing": 0, "area": 2},
        {"id": 1000, "category_id": 1, "isthing": 1, "area": 1},
        {"id": 2001, "category_id": 3, "isthing": 1, "area": 2},
    ]


def make_gt(root, maps):
    """A tiny COCO-panoptic ground truth: one PNG per map, segments from the map's ids."""
    seg_dir = root / "panoptic_val"
    seg_dir.mkdir()
    images, annotations = [], []
    for image_id, (ids, cats_of_ids, crowd) in enumerate(maps, start=1):
        name = f"{image_id:012d}"
        Image.fromarray(id2rgb(ids)).save(seg_dir / f"{name}.png")
        segments = [
            {"id": i, "category_id": c, "area": int((ids == i).sum()), "iscrowd": int(i in crowd), "bbox": [0, 0, 1, 1]}
            for i, c in cats_of_ids.items()
        ]
        images.append({"id": image_id, "file_name": f"{name}.jpg", "height": ids.shape[0], "width": ids.shape[1]})
        annotations.append({"image_id": image_id, "file_name": f"{name}.png", "segments_info": segments})
    ann_file = root / "panoptic_val.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return ann_file


def two_images():
    a = np.zeros((6, 8), np.int64)
    a[:3] = 7  # banner
    a[3:, :4] = 21  # person
    a[3:, 4:] = 22  # car (crowd)
    b = np.full((5, 5), 9, np.int64)  # tree
    b[1:3, 1:3] = 0  # VOID
    return [(a, {7: 92, 21: 1, 22: 3}, {22}), (b, {9: 184}, set())]


def test_reader(tmp_path):
    ann_file = make_gt(tmp_path, two_images())
    data = CocoPanoptic(ann_file)  # PNG folder defaults to the JSON path without .json
    assert len(data) == 2
    rec = data[0]
    assert (rec.image_id, rec.file_name, rec.segm_file, rec.height, rec.width) == (1, "000000000001.jpg",
                                                                                  "000000000001.png", 6, 8)
    assert np.array_equal(data.load_panoptic(0), two_images()[0][0])
    assert data.categories.names == ("person", "car", "banner", "tree")
    with pytest.raises(ValueError, match="img_folder"):
        data.load_image(0)


def test_ground_truth_as_prediction_gives_pq_100_through_files(tmp_path):
    ann_file = make_gt(tmp_path, two_images())
    data = CocoPanoptic(ann_file)
    writer = PanopticPredictionWriter(tmp_path / "pred")
    for i, rec in enumerate(data.records):
        writer.add(rec.image_id, rec.segm_file, data.load_panoptic(i), rec.segments_info)
    pred_json = writer.write_json(tmp_path / "pred.json", data.categories_json)
    result = evaluate_panoptic_files(ann_file, pred_json)
    assert result["PQ"] == pytest.approx(100.0) and result["num_images"] == 2
    # car is crowd only: its prediction lies on the crowd and is ignored, so car is not counted.
    assert result["num_categories"] == {"all": 3, "things": 1, "stuff": 2}
    assert np.array_equal(read_id_png(tmp_path / "pred" / "000000000001.png"), two_images()[0][0])


def test_files_path_matches_hand_values(tmp_path):
    ann_file = make_gt(tmp_path, two_images())
    a, b = (m[0] for m in two_images())
    pa = a.copy()
    pa[3:, 3] = 7  # banner grows by 3 px into the person: banner IoU 24 / 27, person IoU 9 / 12
    pb = np.full((5, 5), 5, np.int64)  # tree everywhere, including the 4 VOID px: IoU 21 / 21
    writer = PanopticPredictionWriter(tmp_path / "pred")
    writer.add(1, "000000000001.png", pa, [{"id": 7, "category_id": 92}, {"id": 21, "category_id": 1},
                                           {"id": 22, "category_id": 3}])
    writer.add(2, "000000000002.png", pb, [{"id": 5, "category_id": 184}])
    result = evaluate_panoptic_files(ann_file, writer.write_json(tmp_path / "pred.json", CATEGORIES))
    # person 0.75, banner 24/27 = 0.8889, tree 1: all TPs, so RQ 100 and PQ = SQ = mean IoU.
    assert result["PQ"] == pytest.approx(100 * (0.75 + 24 / 27 + 1) / 3)
    assert result["SQ"] == pytest.approx(result["PQ"]) and result["RQ"] == pytest.approx(100.0)


def test_missing_prediction(tmp_path):
    ann_file = make_gt(tmp_path, two_images())
    data = CocoPanoptic(ann_file)
    writer = PanopticPredictionWriter(tmp_path / "pred")
    writer.add(1, data[0].segm_file, data.load_panoptic(0), data[0].segments_info)
    pred_json = writer.write_json(tmp_path / "pred.json", CATEGORIES)
    with pytest.raises(PanopticFormatError, match="no prediction for the image with id 2"):
        evaluate_panoptic_files(ann_file, pred_json)
    assert evaluate_panoptic_files(ann_file, pred_json, only_predicted_images=True)["num_images"] == 1
