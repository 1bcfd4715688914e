"""The curated public surface of ``privacy`` and fail-closed parsing of its text inputs."""

from __future__ import annotations

import types

from hypothesis import given, settings
from hypothesis import strategies as st

import veil.privacy as privacy
from veil.privacy import ModelSpec, TrainingConfig, TrainingRecord
from veil.sdk import TrainingProgress
from veil.sdk.errors import VeilError


def test_all_is_exactly_the_public_surface() -> None:
    exported = set(privacy.__all__)
    assert len(exported) == len(privacy.__all__)
    public = {
        name
        for name, value in vars(privacy).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert exported == public
    shared = {"ProgressEvent": TrainingProgress}  # defined once, in the SDK: the same object
    for name in exported:
        obj = getattr(privacy, name)
        if name in shared:
            assert obj is shared[name]
            continue
        module = getattr(obj, "__module__", "veil.privacy._")
        assert module.startswith("veil.privacy._"), (name, module)  # defined in a private module


def test_error_types_are_veil_errors() -> None:
    assert issubclass(privacy.TrainingAborted, VeilError)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_fuzzed_toml_raises_only_veil_errors(text: str) -> None:
    for parse, kind in (
        (ModelSpec.from_toml, ModelSpec),
        (TrainingConfig.from_toml, TrainingConfig),
    ):
        try:
            parsed = parse(text)
        except VeilError:
            continue
        assert isinstance(parsed, kind)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_fuzzed_records_raise_only_veil_errors(data: bytes | str) -> None:
    try:
        record = TrainingRecord.from_json(data)
    except VeilError:
        return
    assert TrainingRecord.from_json(record.to_json()) == record
