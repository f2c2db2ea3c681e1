"""The manifest of installed models: `models/manifest.toml`, one `[models.<name>]` table per model.

Each table records what the registry needs to load and run the model and what a reader needs to trust it: task
(classify | detect | segment), architecture (a name `dicom_ai.models.architectures` builds), the ordered class
names, the input size (square letterbox side) and channels, the normalisation applied to the [0, 1] image
(`(x - mean) / std`), the weights file relative to the models folder with its sha256, the version, what it was
trained on, its test metrics and the relative path of its model card. `upsert_model_spec` rewrites the file sorted
by name with a fixed key order, so diffs stay small.

Two optional tables make a model's quality an operating fact rather than a footnote:
- `[models.<name>.operating_point]`: `confidence` (detectors: the lowest box score the node shows) or `threshold`
  (segmenters: the probability a pixel needs), chosen on the validation split by the rule in `rule`;
- `[models.<name>.minimum]`: the lowest test metric (same names as `metrics`) the model must reach to be used.
  A model below its minimum is disabled unless the node's config enables it explicitly
  (`pipeline.enable_models_below_minimum`); `status` and the SR say which minimum it misses.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from dicom_ai.models.architectures import CLASSIFIERS, DETECTORS, SEGMENTERS

MANIFEST_NAME = "manifest.toml"
Task = Literal["classify", "detect", "segment"]
TASKS: tuple[Task, ...] = ("classify", "detect", "segment")
ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "classify": CLASSIFIERS,
    "detect": tuple(DETECTORS),
    "segment": SEGMENTERS,
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_HEADER = ("# Installed models: one [models.<name>] table each; written by `dicom_ai.models.manifest`.\n"
           "# weights and card are relative to this folder; sha256 is checked before a model is loaded.\n")


class ManifestError(ValueError):
    """The manifest or one of its entries is malformed; the message names the file and the model."""


@dataclass(frozen=True)
class ModelSpec:
    """One manifest entry (see the module docstring for each field's meaning)."""

    name: str
    task: Task
    architecture: str
    classes: tuple[str, ...]
    input_size: int
    in_channels: int
    mean: float
    std: float
    weights: str
    sha256: str
    version: str
    trained_on: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    card: str = ""
    operating_point: Mapping[str, float | str] = field(default_factory=dict)
    minimum: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "metrics", dict(self.metrics))
        object.__setattr__(self, "operating_point", dict(self.operating_point))
        object.__setattr__(self, "minimum", dict(self.minimum))
        problems = _problems(self)
        if problems:
            raise ManifestError(f"model {self.name!r}: " + "; ".join(problems))

    def weights_path(self, models_dir: Path) -> Path:
        return Path(models_dir) / self.weights

    def below_minimum(self) -> list[str]:
        """Each test metric under its `minimum` (or missing), as "mAP50 0.054 < 0.35"; empty when the model passes."""
        failures = []
        for metric, floor in sorted(self.minimum.items()):
            value = self.metrics.get(metric)
            if value is None:
                failures.append(f"{metric} not measured (minimum {floor:g})")
            elif value < floor:
                failures.append(f"{metric} {value:.3f} < {floor:g}")
        return failures

    def operating_value(self, key: str, default: float) -> float:
        """`operating_point[key]` as a number (`confidence`, `threshold`), else `default`."""
        value = self.operating_point.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def is_valid_model_name(name: str) -> bool:
    """Lower-case letters, digits, '_' or '-', starting with a letter or digit (a folder and a TOML key)."""
    return bool(_NAME.match(name))


def _relative(value: str) -> bool:
    path = PurePosixPath(value)
    return bool(value) and not path.is_absolute() and ".." not in path.parts and "\\" not in value


def _problems(spec: ModelSpec) -> list[str]:
    problems: list[str] = []
    if not isinstance(spec.name, str) or not is_valid_model_name(spec.name):
        problems.append("name must be lower-case letters, digits, '_' or '-'")
    if spec.task not in TASKS:
        problems.append(f"task {spec.task!r} is not one of {', '.join(TASKS)}")
    elif spec.architecture not in ARCHITECTURES[spec.task]:
        problems.append(f"architecture {spec.architecture!r} is not a {spec.task} architecture "
                        f"({', '.join(ARCHITECTURES[spec.task])})")
    if not spec.classes or not all(isinstance(c, str) and c for c in spec.classes):
        problems.append("classes must be a non-empty list of names")
    elif len(set(spec.classes)) != len(spec.classes):
        problems.append("classes must be unique")
    elif spec.task == "classify" and len(spec.classes) < 2:
        problems.append("a classifier needs at least two classes")
    if not isinstance(spec.input_size, int) or isinstance(spec.input_size, bool) or spec.input_size < 16:
        problems.append(f"input_size must be an integer >= 16, got {spec.input_size!r}")
    elif spec.task != "classify" and spec.input_size % 32:
        problems.append(f"input_size {spec.input_size} must be a multiple of 32 for a {spec.task} model")
    if spec.in_channels not in (1, 3):
        problems.append(f"in_channels must be 1 or 3, got {spec.in_channels!r}")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (spec.mean, spec.std)) or spec.std <= 0:
        problems.append(f"normalisation needs a finite mean and a positive std, got {spec.mean!r}/{spec.std!r}")
    if not isinstance(spec.weights, str) or not _relative(spec.weights):
        problems.append(f"weights must be a path relative to the models folder, got {spec.weights!r}")
    elif spec.task == "detect" and not spec.weights.endswith(".pt"):
        problems.append("detector weights must be an ultralytics .pt checkpoint")
    elif spec.task != "detect" and not spec.weights.endswith(".safetensors"):
        problems.append(f"{spec.task} weights must be a .safetensors file")
    if not isinstance(spec.sha256, str) or not _SHA256.match(spec.sha256):
        problems.append("sha256 must be 64 lower-case hex digits")
    if not isinstance(spec.version, str) or not spec.version:
        problems.append("version must be a non-empty string")
    if not isinstance(spec.trained_on, str):
        problems.append("trained_on must be a string")
    if spec.card and not _relative(spec.card):
        problems.append(f"card must be a path relative to the models folder, got {spec.card!r}")
    if not all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
               for k, v in spec.metrics.items()):
        problems.append("metrics must map names to numbers")
    if not all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
               for k, v in spec.minimum.items()):
        problems.append("minimum must map metric names to numbers")
    for key in ("confidence", "threshold"):
        value = spec.operating_point.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0.0 <= float(value) <= 1.0):
            problems.append(f"operating_point.{key} must be a number in [0, 1], got {value!r}")
    return problems


def _spec_from_table(name: str, table: Mapping[str, Any]) -> ModelSpec:
    known = {"task", "architecture", "classes", "input_size", "in_channels", "normalisation", "weights", "sha256",
             "version", "trained_on", "metrics", "card", "operating_point", "minimum"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ManifestError(f"model {name!r}: unknown keys {', '.join(unknown)}")
    missing = sorted({"task", "architecture", "classes", "input_size", "in_channels", "weights", "sha256",
                      "version"} - set(table))
    if missing:
        raise ManifestError(f"model {name!r}: missing keys {', '.join(missing)}")
    normalisation = table.get("normalisation", {"mean": 0.0, "std": 1.0})
    if not isinstance(normalisation, Mapping) or set(normalisation) != {"mean", "std"}:
        raise ManifestError(f"model {name!r}: normalisation must be {{ mean = ..., std = ... }}")
    classes = table["classes"]
    if not isinstance(classes, list):
        raise ManifestError(f"model {name!r}: classes must be a list")
    metrics = table.get("metrics", {})
    for key in ("metrics", "operating_point", "minimum"):
        if not isinstance(table.get(key, {}), Mapping):
            raise ManifestError(f"model {name!r}: {key} must be a table")
    return ModelSpec(name=name, task=table["task"], architecture=table["architecture"], classes=tuple(classes),
                     input_size=table["input_size"], in_channels=table["in_channels"],
                     mean=normalisation["mean"], std=normalisation["std"], weights=table["weights"],
                     sha256=table["sha256"], version=str(table["version"]), trained_on=table.get("trained_on", ""),
                     metrics=metrics, card=table.get("card", ""), operating_point=table.get("operating_point", {}),
                     minimum=table.get("minimum", {}))


def read_manifest_entries(models_dir: Path) -> tuple[dict[str, ModelSpec], dict[str, str]]:
    """Valid specs by name and, separately, the error of each invalid entry (a missing file is an empty manifest).

    Raises ManifestError when the file itself is not readable TOML of the expected shape.
    """
    path = Path(models_dir) / MANIFEST_NAME
    if not path.is_file():
        return {}, {}
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ManifestError(f"{path}: not readable TOML: {exc}") from exc
    extra = sorted(set(document) - {"models"})
    models = document.get("models", {})
    if extra or not isinstance(models, dict):
        raise ManifestError(f"{path}: expected only [models.<name>] tables, found {', '.join(extra) or 'models'}")
    specs: dict[str, ModelSpec] = {}
    errors: dict[str, str] = {}
    for name, table in models.items():
        try:
            if not isinstance(table, dict):
                raise ManifestError(f"model {name!r}: expected a table")
            specs[name] = _spec_from_table(name, table)
        except (ManifestError, TypeError) as exc:
            errors[name] = f"{path}: {exc}"
    return specs, errors


def read_manifest(models_dir: Path) -> dict[str, ModelSpec]:
    """Every spec of `models_dir/manifest.toml` by name; ManifestError names the first invalid entry."""
    specs, errors = read_manifest_entries(models_dir)
    if errors:
        raise ManifestError("; ".join(errors.values()))
    return specs


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to the manifest")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_\-]+", key) else _toml_value(key)


def render_manifest(specs: Mapping[str, ModelSpec]) -> str:
    """The manifest text for `specs`: sorted by name, fixed key order, metrics sorted."""
    parts = [_HEADER]
    for name in sorted(specs):
        spec = specs[name]
        lines = [f"\n[models.{_toml_key(name)}]",
                 f"task = {_toml_value(spec.task)}",
                 f"architecture = {_toml_value(spec.architecture)}",
                 f"classes = {_toml_value(list(spec.classes))}",
                 f"input_size = {spec.input_size}",
                 f"in_channels = {spec.in_channels}",
                 f"normalisation = {{ mean = {float(spec.mean)!r}, std = {float(spec.std)!r} }}",
                 f"weights = {_toml_value(spec.weights)}",
                 f"sha256 = {_toml_value(spec.sha256)}",
                 f"version = {_toml_value(spec.version)}",
                 f"trained_on = {_toml_value(spec.trained_on)}",
                 f"card = {_toml_value(spec.card)}"]
        for table, values in (("metrics", spec.metrics), ("operating_point", spec.operating_point),
                              ("minimum", spec.minimum)):
            if values:
                lines.append(f"\n[models.{_toml_key(name)}.{table}]")
                lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in sorted(values.items()))
        parts.append("\n".join(lines) + "\n")
    return "".join(parts)


def upsert_model_spec(models_dir: Path, spec: ModelSpec) -> Path:
    """Add or replace `spec` in `models_dir/manifest.toml` (atomic rewrite); returns the manifest's path.

    Other entries are kept as they are; an invalid existing entry stops the write (ManifestError) rather than
    being dropped.
    """
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    specs = read_manifest(models_dir)
    specs[spec.name] = spec
    path = models_dir / MANIFEST_NAME
    handle, temporary = tempfile.mkstemp(prefix=".manifest-", suffix=".toml", dir=models_dir)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(render_manifest(specs))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


__all__ = ["MANIFEST_NAME", "TASKS", "ManifestError", "ModelSpec", "Task", "is_valid_model_name", "read_manifest",
           "read_manifest_entries", "render_manifest", "upsert_model_spec"]
