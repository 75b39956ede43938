"""Property-based tests of the files users feed: suite files and reports, as arbitrary data and as
arbitrary bytes; each is loaded or refused with the tool's own usage error, never another
exception."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lda_bench.core.errors import UsageError
from lda_bench.core.reports import dumps
from lda_bench.plotting import series as plotting
from lda_bench.profiling.compare import compare_files
from lda_bench.profiling.render import compare_table
from lda_bench.profiling.suites import load_suite, parse_suite

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True), st.text(max_size=8))
DATA = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                    max_leaves=12)
KEYS = st.sampled_from(["name", "description", "upsamplers", "inputs", "batch", "scale", "dtypes", "devices",
                        "metrics", "repeats", "min_time", "max_time", "label", "channels", "size", "options",
                        "count", "guide_channels"])
SUITE_LIKE = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                           st.dictionaries(KEYS, inner, max_size=5)), max_leaves=16)
FILE_BYTES = st.one_of(st.binary(max_size=64), st.text(max_size=64).map(str.encode))
NO_FIXTURE_RESET = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


@given(st.one_of(DATA, SUITE_LIKE, st.fixed_dictionaries({"name": st.text(min_size=1, max_size=5),
                                                           "inputs": st.lists(SUITE_LIKE, max_size=2)},
                                                          optional={"upsamplers": SUITE_LIKE, "dtypes": SUITE_LIKE,
                                                                    "metrics": SUITE_LIKE, "scale": SCALARS})))
def test_suite_data(data):
    try:
        suite = parse_suite(data, "fuzz.yaml")
    except UsageError:
        return
    assert suite.inputs and all(i.height >= 1 and i.width >= 1 for i in suite.inputs)


@NO_FIXTURE_RESET
@given(FILE_BYTES)
def test_suite_files(tmp_path, content):
    path = tmp_path / "suite.yaml"
    path.write_bytes(content)
    try:
        load_suite(path)
    except UsageError:
        pass


LATENCY = st.fixed_dictionaries({}, optional={"median": SCALARS, "samples": st.one_of(st.lists(SCALARS, max_size=3),
                                                                                        SCALARS)})
CASE = st.fixed_dictionaries({"id": st.text(max_size=6), "status": st.sampled_from(["ok", "error", 3])},
                             optional={"latency_ms": st.one_of(LATENCY, DATA), "macs": SCALARS, "params": SCALARS,
                                       "label": SCALARS, "upsampler": SCALARS, "backend": SCALARS,
                                       "input_shape": st.one_of(st.lists(SCALARS, max_size=4), SCALARS),
                                       "output_shape": st.one_of(st.lists(st.integers(-1, 9), max_size=4), SCALARS),
                                       "options": DATA, "dtype": SCALARS, "device": SCALARS})
REPORT = st.fixed_dictionaries({"schema_version": st.one_of(st.integers(-1, 2), DATA),
                                "kind": st.sampled_from(["profile", "sweep", "regress", None])},
                               optional={"cases": st.one_of(st.lists(CASE, max_size=3), DATA), "env": DATA,
                                         "settings": DATA})


@NO_FIXTURE_RESET
@given(st.one_of(FILE_BYTES, REPORT.map(lambda r: json.dumps(r).encode())), REPORT)
def test_reports_are_compared_or_refused(tmp_path, a_content, b_report):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_bytes(a_content)
    b.write_text(json.dumps(b_report))
    try:
        comparison = compare_files(a, b)
    except UsageError:
        return
    compare_table(comparison.rows, "a", "b")
    dumps(comparison.as_dict())
    plotting.load(b)
