"""The shared parsers: KEY=VALUE options, comma lists, HxW pairs, devices and dtypes."""

import pytest
import torch

from lda_bench.core.devices import resolve_device, resolve_dtype
from lda_bench.core.errors import EXIT_USAGE, CommandError, UsageError
from lda_bench.core.options import parse_options, parse_pair, parse_value, split_list


@pytest.mark.parametrize("text,value", [
    ("true", True), ("false", False), ("null", None), ("~", None), ("3", 3), ("-2", -2), ("0.5", 0.5),
    ("1e-3", 0.001), ("2.5e2", 250.0), ("[1, 2]", [1, 2]), ("[]", []), ("pl", "pl"), ("'3'", "3"),
    ("a b", "a b"), ("", ""),
])
def test_values_are_yaml_scalars(text, value):
    parsed = parse_value(text)
    assert parsed == value and type(parsed) is type(value)


def test_options_split_on_the_first_equals_sign_and_keep_mappings():
    assert parse_options(["k_u=5", " rpb = false", "name=a=b"]) == {"k_u": 5, "rpb": False, "name": "a=b"}
    assert parse_options({"k_u": 5}) == {"k_u": 5} and parse_options(None) == {}
    for bad in ("k_u", "=5", " =5"):
        with pytest.raises(UsageError, match="--upsampler-option expects KEY=VALUE"):
            parse_options([bad], "--upsampler-option")


def test_split_list():
    assert split_list("a, b,,c") == ["a", "b", "c"] and split_list(["a,b", "c"]) == ["a", "b", "c"]
    assert split_list(None) is None and split_list(" , ") is None


@pytest.mark.parametrize("text", ["104x168", "104X168", " 104 , 168 ", (104, 168), [104, 168]])
def test_pairs(text):
    assert parse_pair(text, "--size", "HxW") == (104, 168)


@pytest.mark.parametrize("text", ["12", "0x5", "5x-1", "axb", "1x2x3", (1,), (1, 2, 3), ("a", 2)])
def test_bad_pairs_name_the_option(text):
    with pytest.raises(UsageError, match=r"--crop-size must look like 512x512, got"):
        parse_pair(text, "--crop-size", "512x512")


def test_devices_and_dtypes():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "gpu:0", "meta"):
        with pytest.raises(UsageError, match="--device"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            resolve_device("cuda:0")
    assert resolve_dtype("bf16") is torch.bfloat16
    with pytest.raises(UsageError, match="--dtype: unknown dtype 'fp8'"):
        resolve_dtype("fp8")


def test_errors_carry_their_exit_codes():
    assert UsageError("x").exit_code == EXIT_USAGE and isinstance(UsageError("x"), ValueError)
    assert CommandError("x").exit_code == 1
