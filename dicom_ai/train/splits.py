"""Deterministic, group-aware train/validation/test splits.

Whole groups (a patient, a block of neighbouring figshare IDs, a FracAtlas study group, an exam) go to one side,
so no neighbouring slice or second view of the same study leaks from training into validation or test.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

SplitName = Literal["train", "val", "test"]
SPLIT_NAMES: tuple[SplitName, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class SplitFractions:
    """Share of groups that go to validation and test; the rest trains."""

    val: float = 0.15
    test: float = 0.15

    def __post_init__(self) -> None:
        if not (0 <= self.val < 1 and 0 <= self.test < 1 and self.val + self.test < 1):
            raise ValueError(f"split fractions must be in [0, 1) and leave room for training: {self}")


# What every plan and single-model run uses; `dicom-ai evaluate` scores the same test split with the same seed.
DEFAULT_FRACTIONS = SplitFractions(val=0.15, test=0.15)


def assign_groups(
    groups: Sequence[str], fractions: SplitFractions, seed: int, strata: Sequence[str] | None = None
) -> dict[str, SplitName]:
    """Map each distinct group to a split, shuffled with `seed`; optionally stratified by a label per group.

    With `strata`, each stratum's groups are split separately so every class appears in each split when it has
    at least three groups. The mapping depends only on the set of groups, the seed and the fractions.
    """
    per_group_stratum: dict[str, str] = {}
    for index, group in enumerate(groups):
        per_group_stratum.setdefault(group, strata[index] if strata is not None else "")
    by_stratum: dict[str, list[str]] = {}
    for group, stratum in sorted(per_group_stratum.items()):
        by_stratum.setdefault(stratum, []).append(group)
    assignment: dict[str, SplitName] = {}
    for stratum, members in sorted(by_stratum.items()):
        rng = random.Random(f"{seed}:{stratum}")
        rng.shuffle(members)
        n_test = round(len(members) * fractions.test)
        n_val = round(len(members) * fractions.val)
        if len(members) >= 3:
            n_test, n_val = max(n_test, 1 if fractions.test else 0), max(n_val, 1 if fractions.val else 0)
        for position, group in enumerate(members):
            assignment[group] = "test" if position < n_test else "val" if position < n_test + n_val else "train"
    return assignment


def split_indices(
    groups: Sequence[str], fractions: SplitFractions, seed: int, strata: Sequence[str] | None = None
) -> dict[SplitName, list[int]]:
    """Row indices per split, whole groups kept together (see `assign_groups`)."""
    assignment = assign_groups(groups, fractions, seed, strata)
    out: dict[SplitName, list[int]] = {name: [] for name in SPLIT_NAMES}
    for index, group in enumerate(groups):
        out[assignment[group]].append(index)
    return out


def split_fingerprint(keys_by_split: dict[SplitName, Sequence[str]]) -> str:
    """A short sha256 over the sorted keys of each split, recorded with every trained model."""
    digest = hashlib.sha256()
    for name in SPLIT_NAMES:
        for key in sorted(keys_by_split.get(name, ())):
            digest.update(f"{name}\t{key}\n".encode())
    return digest.hexdigest()[:16]


def cap_per_class(indices: Sequence[int], labels: Sequence[str], limit: int | None) -> list[int]:
    """The first `limit` indices of each label, in the given order (small runs keep every class); None = all."""
    if limit is None:
        return list(indices)
    kept: dict[str, int] = {}
    out = []
    for i in indices:
        if kept.get(labels[i], 0) < limit:
            kept[labels[i]] = kept.get(labels[i], 0) + 1
            out.append(i)
    return out


@dataclass(frozen=True)
class GroupedSplit:
    """Row indices per split and the record written next to a run (`split.json`)."""

    indices: dict[SplitName, list[int]]
    record: dict[str, Any]

    def counts(self) -> dict[str, int]:
        return {name: len(self.indices[name]) for name in SPLIT_NAMES}


def grouped_split(keys: Sequence[str], groups: Sequence[str], strata: Sequence[str], seed: int,
                  per_class_cap: int | None = None,
                  fractions: SplitFractions = DEFAULT_FRACTIONS) -> GroupedSplit:
    """Split by group (stratified by `strata`), cap each split per stratum, and describe it (`described_split`)."""
    indices = split_indices(groups, fractions, seed, strata)
    indices = {name: cap_per_class(indices[name], strata, per_class_cap) for name in SPLIT_NAMES}
    return described_split(indices, keys, groups, seed, fractions)


def described_split(indices: dict[SplitName, list[int]], keys: Sequence[str], groups: Sequence[str], seed: int,
                    fractions: SplitFractions = DEFAULT_FRACTIONS) -> GroupedSplit:
    """`indices` with their record: seed, fractions, counts, the groups of each split, a fingerprint over `keys`."""
    record = {
        "seed": seed,
        "fractions": {"val": fractions.val, "test": fractions.test},
        "counts": {name: len(indices[name]) for name in SPLIT_NAMES},
        "groups": {name: sorted({groups[i] for i in indices[name]}) for name in SPLIT_NAMES},
        "fingerprint": split_fingerprint({name: [keys[i] for i in indices[name]] for name in SPLIT_NAMES}),
    }
    return GroupedSplit(indices, record)


def stable_order(keys: Sequence[str], indices: Sequence[int]) -> list[int]:
    """`indices` ordered by the sha256 of each item's key: fixed for a given set of items, independent of the
    order a manifest lists them in, and mixing classes (a sorted path order would put one class first)."""
    return sorted(indices, key=lambda i: (hashlib.sha256(keys[i].encode()).hexdigest(), keys[i]))
