"""Property-based tests of what users type: arbitrary text in, a parsed value or the tool's own
usage error out, never another exception."""

import json

from hypothesis import given
from hypothesis import strategies as st

from lda_bench.core.errors import UsageError
from lda_bench.core.options import parse_bytes, parse_options, parse_pair, parse_value
from lda_bench.core.reports import dumps

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
YAMLISH = st.text(alphabet=st.sampled_from(list("[]{},:'\"!&*?|>-#%@`~ \t\n0123456789.eE+xabnulrt")), max_size=30)


@given(st.one_of(TEXT, YAMLISH))
def test_option_values(text):
    try:
        value = parse_value(text)
    except UsageError:
        return
    json.loads(dumps({"value": value}))  # whatever is accepted fits a JSON report


@given(st.lists(st.one_of(TEXT, YAMLISH), max_size=4))
def test_option_lists(pairs):
    try:
        options = parse_options(pairs)
    except UsageError:
        return
    assert all(isinstance(k, str) and k == k.strip() and k for k in options)


@given(st.one_of(TEXT, st.from_regex(r"\s*-?\d{0,7}\s*[xX,]\s*-?\d{0,7}\s*", fullmatch=True)))
def test_sizes(text):
    try:
        h, w = parse_pair(text, "--size", "HxW")
    except UsageError:
        return
    assert h >= 1 and w >= 1


@given(st.one_of(TEXT, st.from_regex(r"\s*\d{0,4}(\.\d{0,3})?\s*[kKmMgGtT]?(i?[bB])?\s*", fullmatch=True)))
def test_byte_sizes(text):
    try:
        assert parse_bytes(text, "--memory-budget") > 0
    except UsageError:
        pass
