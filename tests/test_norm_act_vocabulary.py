"""One norm/act vocabulary: every part taking a norm or activation accepts the same values.

For every registered block and net with a ``LayerSpec`` parameter, each value of the vocabulary
is either rejected by validation (a :class:`SpecError` with a caret, before anything is built) or
builds. A value that passes validation and then fails in the constructor is the defect.
"""

from __future__ import annotations

import typing

import pytest
import torch

from lowrank import SpecError, list_parts
from lowrank.build import build
from lowrank.hints import MonaiLayer
from lowrank.registry import get_part_info
from lowrank.spec import parse_spec
from lowrank.validate import signature_of, validate

NORMS = [
    "layer",
    "layernorm",
    "channel_layer",
    "batch",
    "instance",
    "group(num_groups=2)",
    "group(group_size=4)",
]
ACTS = ["relu", "gelu", "leakyrelu(negative_slope=0.1)", "prelu", "tanh"]


def _layer_parameters() -> list[tuple[str, str, str]]:
    out = []
    for kind in ("block", "net"):
        for name in list_parts(kind):
            info = get_part_info(kind, name)
            _, hints = signature_of(info.obj)
            for param, hint in hints.items():
                if typing.get_origin(hint) is typing.Annotated and any(
                    isinstance(m, MonaiLayer) for m in typing.get_args(hint)[1:]
                ):
                    out.append((kind, name, param))
    return out


PARAMS = _layer_parameters()


def test_the_vocabulary_test_covers_the_hamburger_and_the_factorizer():
    names = {(name, param) for _, name, param in PARAMS}
    assert ("factorizer", "norm") in names
    assert any(name == "hamburger" and "norm" in param for name, param in names)


@pytest.mark.parametrize(("kind", "name", "param"), PARAMS, ids=[f"{n}.{p}" for _, n, p in PARAMS])
def test_a_value_that_validates_builds(kind, name, param):
    info = get_part_info(kind, name)
    base = parse_spec(info.test_spec or info.name)
    values = NORMS if "norm" in param else ACTS
    failures = []
    for value in values:
        spec = base.replace(**{param: parse_spec(value)})
        try:
            validate(kind, spec)
        except SpecError:
            continue  # rejected up front: fine
        try:
            with torch.device("meta"):
                if kind == "block":
                    build(kind, spec, channels=16, spatial_dims=3)
                else:
                    build(kind, spec, in_channels=2, out_channels=3, spatial_dims=3)
        except Exception as err:
            failures.append(f"{spec}: {type(err).__name__}: {str(err).splitlines()[0]}")
    assert not failures, "passed validation, then failed to build:\n" + "\n".join(failures)
