"""Property-based test of predictions files: arbitrary JSON-like records are scored or refused with
a counted explanation, never another exception."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lda_bench.data import load_coco_api
from lda_bench.data.synthetic import write_synthetic_coco
from lda_bench.metrics.coco import MetricsError, check_results, coco_evaluate

NUMBER = st.one_of(st.integers(-5, 200), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
                   st.text(max_size=3))
# write_synthetic_coco(num_images=2, seed=0) has images 1000 and 1007 and categories 1, 3 and 7.
IMAGE = st.one_of(st.sampled_from([1000, 1007]), NUMBER)
CATEGORY = st.one_of(st.sampled_from([1, 3, 7]), NUMBER)
COORDINATE = st.one_of(st.floats(-5, 150), NUMBER)
RLE = st.fixed_dictionaries({}, optional={"size": st.one_of(st.lists(st.integers(-1, 200), max_size=3), NUMBER),
                                          "counts": st.one_of(st.lists(st.integers(-2, 50), max_size=6), NUMBER,
                                                              st.text(max_size=6))})
RECORD = st.fixed_dictionaries({}, optional={"image_id": IMAGE, "category_id": CATEGORY,
                                             "score": st.one_of(st.floats(0, 1), NUMBER),
                                             "bbox": st.one_of(st.lists(COORDINATE, min_size=4, max_size=4),
                                                               st.lists(NUMBER, max_size=5), NUMBER),
                                             "segmentation": st.one_of(NUMBER, RLE, st.lists(st.lists(COORDINATE, min_size=6,
                                                                                                   max_size=8),
                                                                                          max_size=2))})


@pytest.fixture(scope="module")
def gt(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    write_synthetic_coco(root, num_images=2, seed=0)
    return load_coco_api(root / "annotations" / "instances_val2017.json")


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=120)
@given(st.one_of(st.lists(RECORD, max_size=4), NUMBER), st.sampled_from(["bbox", "segm"]))
def test_results_are_scored_or_refused(gt, results, iou_type):
    try:
        check_results(gt, results, iou_type, "fuzz.json")
    except MetricsError as exc:
        assert str(exc).startswith("fuzz.json")
        return
    coco_evaluate(gt, results, iou_type)
