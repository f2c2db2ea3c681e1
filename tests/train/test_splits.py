"""Group-aware splits: deterministic, no group on two sides, every class in every split."""

from __future__ import annotations

import pytest

from dicom_ai.train.splits import SplitFractions, assign_groups, split_fingerprint, split_indices


def test_groups_never_straddle_splits_and_split_is_deterministic() -> None:
    groups = [f"patient{i // 5}" for i in range(200)]
    first = split_indices(groups, SplitFractions(0.15, 0.15), seed=0)
    again = split_indices(groups, SplitFractions(0.15, 0.15), seed=0)
    assert first == again
    owners = {name: {groups[i] for i in idx} for name, idx in first.items()}
    assert not owners["train"] & owners["val"] and not owners["train"] & owners["test"]
    assert not owners["val"] & owners["test"]
    assert len(owners["test"]) == 6 and len(owners["val"]) == 6  # 15 % of 40 patients
    assert split_indices(groups, SplitFractions(0.15, 0.15), seed=1) != first


def test_stratified_split_puts_each_class_in_each_split() -> None:
    groups = [f"g{i}" for i in range(30)]
    strata = ["rare" if i < 4 else "common" for i in range(30)]
    assignment = assign_groups(groups, SplitFractions(0.15, 0.15), 0, strata)
    rare = {assignment[f"g{i}"] for i in range(4)}
    assert rare == {"train", "val", "test"}


def test_bad_fractions_are_refused() -> None:
    with pytest.raises(ValueError):
        SplitFractions(0.6, 0.5)


def test_fingerprint_changes_when_an_item_moves() -> None:
    a = split_fingerprint({"train": ["x", "y"], "val": ["z"], "test": []})
    b = split_fingerprint({"train": ["x"], "val": ["z", "y"], "test": []})
    assert a != b and a == split_fingerprint({"train": ["y", "x"], "val": ["z"], "test": []})
