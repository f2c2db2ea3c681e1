"""Deterministic, group-aware train/validation/test splits.

Whole groups (a patient, a block of neighbouring figshare IDs, a FracAtlas study group, an exam) go to one side,
so no neighbouring slice or second view of the same study leaks from training into validation or test.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

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
