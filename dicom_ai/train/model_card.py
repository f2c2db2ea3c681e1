"""MODEL_CARD.md of an installed model: what it is, what it learned from (under which licence), how the data was
split, where and for how long it trained, its test metrics and, for a plan run, the candidates it was chosen from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dicom_ai.models.manifest import Task
from dicom_ai.train.metrics import headline_metrics
from dicom_ai.train.sources import DATASET_TASKS
from dicom_ai.train.splits import SPLIT_NAMES


@dataclass(frozen=True)
class Candidate:
    """One architecture trained for the same stage, with its validation and test numbers."""

    arch: str
    validation: Mapping[str, float]
    test: Mapping[str, float]
    epochs: int | None
    train_seconds: float | None
    selected: bool


@dataclass(frozen=True)
class ModelCard:
    """The facts a card states; `render_card` writes them as markdown."""

    name: str
    version: str
    task: Task
    architecture: str
    classes: Sequence[str]
    input_size: int
    dataset: str
    data_location: str
    licence: str
    split_counts: Mapping[str, int]
    split_fingerprint: str
    seed: int
    trained_by: str
    machine: str
    train_seconds: float | None
    wall_seconds: float | None
    epochs: int | None
    best_epoch: int | None
    test: Mapping[str, Any]
    selection: str = ""
    candidates: Sequence[Candidate] = ()
    cap: int | None = None  # items per split (per class) the run was limited to; evaluate needs it for the same split
    operating_point: Mapping[str, Any] = field(default_factory=dict)  # detector confidence chosen on validation
    minimum: Mapping[str, float] = field(default_factory=dict)  # the quality gate (see dicom_ai.train.install)
    notes: Sequence[str] = ()  # e.g. what the weights were initialised from, with its licence
    curve: Sequence[Mapping[str, Any]] = ()  # per epoch: epoch, training loss, validation metric (the run's log)

    @property
    def headline(self) -> dict[str, float]:
        return headline_metrics(self.task, dict(self.test))

    @property
    def trained_on(self) -> str:
        """One line for the manifest's `trained_on`."""
        counts = " / ".join(f"{k} {self.split_counts[k]}" for k in SPLIT_NAMES if k in self.split_counts)
        return f"{self.dataset} (seed {self.seed}: {counts}); {self.trained_by}"


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "–" if value is None else str(value)


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f} s ({value / 60:.1f} min)"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_number(v) for v in row) + " |" for row in rows]
    return lines


def _input_line(card: ModelCard) -> str:
    standardised = ("grey image standardised (0.5–99.5 percentile stretch: the same input whatever the storage, "
                    "`pixels.model_input`)")
    if card.task == "detect":
        return (f"{standardised}, letterboxed to {card.input_size} × {card.input_size} on grey 114/255, in [0, 1], "
                "repeated to 3 channels (ultralytics' own input)")
    return (f"{standardised}, letterboxed to {card.input_size} × {card.input_size}, "
            "normalised (x − 0.5) / 0.25")


def _classification_details(test: Mapping[str, Any]) -> list[str]:
    classes = list(test.get("classes", []))
    if not classes:
        return []
    precision, recall = test.get("precision", {}), test.get("recall", {})
    lines = ["", "Per class:", ""]
    lines += _table(["class", "precision", "recall"], [[c, precision.get(c), recall.get(c)] for c in classes])
    confusion = test.get("confusion")
    if confusion:
        lines += ["", "Confusion matrix (rows = truth, columns = prediction):", ""]
        lines += _table(["", *classes], [[c, *row] for c, row in zip(classes, confusion)])
    return lines


def _candidates(card: ModelCard) -> list[str]:
    if not card.candidates:
        return []
    validation = sorted({k for c in card.candidates for k in c.validation})
    test = sorted({k for c in card.candidates for k in c.test})
    rows = [[c.arch + (" (selected)" if c.selected else ""), *(c.validation.get(k) for k in validation),
             *(c.test.get(k) for k in test), c.epochs, _seconds(c.train_seconds)] for c in card.candidates]
    header = ["architecture", *validation, *(f"test {k}" for k in test), "epochs", "training time"]
    return ["", "## Candidates (chosen on the validation split only)", "", card.selection, "", *_table(header, rows)]


def render_card(card: ModelCard) -> str:
    """The markdown text of MODEL_CARD.md."""
    counts = ", ".join(f"{k} {card.split_counts[k]}" for k in SPLIT_NAMES if k in card.split_counts)
    lines = [
        f"# {card.name}: {card.task}, {card.architecture}",
        "",
        f"- Version: {card.version}",
        f"- Classes (output order): {', '.join(card.classes)}",
        f"- Input: {_input_line(card)}",
        "",
        "## Training data",
        "",
        f"- Dataset: {card.dataset} ({card.data_location})",
        f"- Licence: {card.licence}",
        f"- Split: seed {card.seed}, whole groups (patient / study) on one side: {counts}"
        + (f" (capped at {card.cap} per split and class)" if card.cap else "")
        + f"; fingerprint `{card.split_fingerprint}`",
        "",
        "## Training",
        "",
        f"- How: {card.trained_by}",
        f"- Where: {card.machine}",
        f"- Epochs: {_number(card.epochs)} (best validation epoch {_number(card.best_epoch)})",
        f"- Training time: {_seconds(card.train_seconds)}; wall time of the whole run: {_seconds(card.wall_seconds)}",
        "",
        f"## Test metrics ({card.split_counts.get('test', '?')} items of the test split)",
        "",
        *_table(["metric", "value"], [[k, v] for k, v in card.headline.items()]),
    ]
    if card.task == "classify":
        lines += _classification_details(card.test)
    lines += _candidates(card)
    if card.operating_point:
        point = dict(card.operating_point)
        rule = point.pop("rule", "")
        lines += ["", "## Operating point", "", f"- {', '.join(f'{k} {_number(v)}' for k, v in point.items())}"
                  + (f" ({rule})" if rule else "")]
    if card.minimum:
        failures = [f"{k} {_number(card.headline.get(k))} < {v:g}" for k, v in card.minimum.items()
                    if card.headline.get(k) is None or card.headline[k] < v]
        lines += ["", "## Quality gate", "",
                  f"- Minimum test metric: {', '.join(f'{k} {v:g}' for k, v in card.minimum.items())}: "
                  + (f"**not met** ({'; '.join(failures)}): the node ships this model disabled; "
                     "`pipeline.enable_models_below_minimum` enables it." if failures else "met.")]
    if card.curve:
        keys = [k for k in card.curve[0] if k != "epoch"]
        lines += ["", "## Learning curve (validation split, per epoch)", "",
                  *_table(["epoch", *keys], [[row["epoch"], *(row[k] for k in keys)] for row in card.curve])]
    if card.notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in card.notes)]
    if card.dataset in DATASET_TASKS:
        lines += ["", f"Re-score: `dicom-ai evaluate {card.name} --models-dir <models> --dataset {card.dataset} "
                      f"--data <shared/data> --seed {card.seed}" + (f" --max-items {card.cap}" if card.cap else "")
                      + "`"]
    return "\n".join(lines) + "\n"
