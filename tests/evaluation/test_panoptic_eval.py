"""The panoptic evaluation loop: a model that knows the answer gives PQ 100 through fusion, segment
conversion, PNG writing and scoring; per-image numbers summed in order equal one accumulator."""

import json

import numpy as np
import pytest
import torch
from panoptic_helpers import KEEP_SIZE_SCALE, ColourOracle, detecting_panoptic_model

from lda_bench.data.coco_panoptic import CocoPanoptic, open_coco_panoptic, read_id_png
from lda_bench.data.errors import DataError
from lda_bench.data.synthetic_panoptic import write_synthetic_coco_panoptic
from lda_bench.evaluation.panoptic import run_panoptic_batches
from lda_bench.metrics.panoptic import PQAccumulator, evaluate_panoptic_files


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pan")
    write_synthetic_coco_panoptic(root, num_images=3)
    return root, open_coco_panoptic(root)


def test_synthetic_dataset_layout_and_labels(data):
    root, dataset = data
    assert len(dataset) == 3 and dataset.categories.names == ("person", "car", "banner", "tree")
    first = dataset[0]
    assert any(s["iscrowd"] for s in first.segments_info)
    ids = dataset.load_panoptic(0)
    assert (ids == 0).any() and set(np.unique(ids)) - {0} == {s["id"] for s in first.segments_info}
    assert dataset.read_bgr(0).shape == (96, 128, 3)


def test_ground_truth_through_the_scoring_path_gives_100(data):
    _, dataset = data
    acc = PQAccumulator(dataset.categories_json)
    for i, rec in enumerate(dataset.records):
        acc.update(dataset.load_panoptic(i), rec.segments_info, dataset.load_panoptic(i), rec.segments_info)
    summary = acc.summary()
    assert (summary["PQ"], summary["PQ_th"], summary["PQ_st"]) == (100.0, 100.0, 100.0)


def test_oracle_model_gives_pq_100_end_to_end(data, tmp_path):
    _, dataset = data
    oracle = ColourOracle()
    results = run_panoptic_batches(oracle, dataset, [[0, 1], [2]], torch.device("cpu"), KEEP_SIZE_SCALE, 32,
                                   png_folder=tmp_path / "pred")
    acc = PQAccumulator(dataset.categories_json)
    for r in results:
        acc.add(r.stats)
    summary = acc.summary()
    assert summary["num_images"] == 3
    assert (summary["PQ"], summary["SQ"], summary["RQ"]) == (100.0, 100.0, 100.0)
    assert summary["num_categories"] == {"all": 4, "things": 2, "stuff": 2}
    # The written PNGs + JSON score the same through the panopticapi file path; the crowd region
    # (predicted as a person instance) is ignored, not a false positive.
    pred_json = tmp_path / "pred.json"
    pred_json.write_text(json.dumps({"annotations": [
        {"image_id": r.image_id, "file_name": r.file_name, "segments_info": r.segments_info} for r in results]}))
    assert evaluate_panoptic_files(dataset.ann_file, pred_json)["PQ"] == 100.0
    assert {p.name for p in (tmp_path / "pred").iterdir()} == {r.file_name for r in dataset.records}


def test_random_model_shards_summed_in_order_equal_one_pass(data):
    _, dataset = data
    model = detecting_panoptic_model(dataset)
    cpu = torch.device("cpu")
    one_pass = run_panoptic_batches(model, dataset, [[0], [1], [2]], cpu, KEEP_SIZE_SCALE, 32)
    assert any(s["isthing"] for r in one_pass for s in r.segments_info)  # instances made it through fusion
    shards = [run_panoptic_batches(model, dataset, b, cpu, KEEP_SIZE_SCALE, 32) for b in ([[0], [2]], [[1]])]
    merged = sorted((r for part in shards for r in part), key=lambda r: r.index)
    totals = []
    for results in (one_pass, merged):
        acc = PQAccumulator(dataset.categories_json)
        for r in results:
            acc.add(r.stats)
        totals.append(acc.stats)
    assert np.array_equal(totals[0], totals[1])
    assert [r.segments_info for r in one_pass] == [r.segments_info for r in merged]


def test_layout_errors(tmp_path):
    write_synthetic_coco_panoptic(tmp_path / "coco", num_images=2)
    with pytest.raises(DataError, match="does not exist"):
        open_coco_panoptic(tmp_path / "nowhere")
    with pytest.raises(DataError, match="panoptic_train2017.json"):
        open_coco_panoptic(tmp_path / "coco", "train2017")
    for png in (tmp_path / "coco/annotations/panoptic_val2017").iterdir():
        png.unlink()
    (tmp_path / "coco/annotations/panoptic_val2017").rmdir()
    with pytest.raises(DataError, match="must be unzipped too"):
        open_coco_panoptic(tmp_path / "coco")


def test_read_bgr_checks_the_size(tmp_path):
    ann = write_synthetic_coco_panoptic(tmp_path, num_images=2)
    payload = json.loads(ann.read_text())
    payload["images"][0]["width"] = 100
    ann.write_text(json.dumps(payload))
    dataset = CocoPanoptic(ann, img_folder=tmp_path / "val2017")
    with pytest.raises(DataError, match="but the annotation says 100x96"):
        dataset.read_bgr(0)
    assert read_id_png(dataset.seg_folder / dataset[1].segm_file).shape == (96, 128)
