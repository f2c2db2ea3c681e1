"""`dicom-ai evaluate pipeline` as markdown: the section "End to end: what the node outputs on DICOM studies" of
docs/RESULTS.md, with the model alone (the manifest's test metrics) beside each end-to-end number."""

from __future__ import annotations

from dicom_ai.pipeline.routing import RoutingTree
from dicom_ai.train.pipeline_eval import PipelineEvaluation
from dicom_ai.train.pipeline_scores import MISSED, SPURIOUS

TITLE = "End to end: what the node outputs on DICOM studies"


def _number(value: object, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return "–"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _alone(evaluation: PipelineEvaluation, model: str | None, metric: str) -> str:
    if model is None:
        return "–"
    about = evaluation.models.get(model, {})
    if about.get("state") == "not in manifest":
        return f"{model}: not in manifest"
    value = about.get("metrics", {}).get(metric)
    return f"{model} {metric} {_number(value)}" if value is not None else f"{model}: no {metric}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _routing(evaluation: PipelineEvaluation, routing: RoutingTree) -> list[str]:
    lines = ["### Routing", "",
             "Each node's decision against the truth of the study (a node never reached, or without a decision, "
             "counts as wrong). *flagged*: header and classifier disagreed (the SR says so).", ""]
    rows = []
    for variant in evaluation.variants:
        for row in evaluation.routing[variant]["rows"]:
            node = row["node"]
            model = routing.nodes[node].model if node in routing.nodes else None
            dataset = "**all**" if row["dataset"] == "all" else row["dataset"]
            rows.append([node, dataset, variant, str(row["studies"]), str(row["correct"]),
                         f"{row['accuracy']:.1%}", f"{row['by_header']} / {row['by_classifier']}",
                         str(row["flagged"]), _alone(evaluation, model, "accuracy") if row["dataset"] == "all" else ""])
    lines += _table(["node", "dataset", "variant", "studies", "correct", "accuracy", "decided by header / classifier",
                     "flagged", "model alone (manifest)"], rows)
    for variant in evaluation.variants:
        for node, confusion in sorted(evaluation.routing[variant]["confusion"].items()):
            predicted = sorted({p for cells in confusion.values() for p in cells})
            lines += ["", f"{node}, {variant} (rows = truth, columns = what the node decided):", ""]
            lines += _table(["", *predicted], [[truth, *(str(cells.get(p, 0)) for p in predicted)]
                                               for truth, cells in sorted(confusion.items())])
    flagged = [f"{variant}: " + ", ".join(f"{d} {n}" for d, n in sorted(counts.items()))
               for variant, counts in evaluation.flagged_studies.items() if counts]
    lines += ["", "Studies with a flagged disagreement: " + ("; ".join(flagged) if flagged else "none") + "."]
    return lines


def _detection(evaluation: PipelineEvaluation) -> list[str]:
    lines = ["### Detection", "",
             "mAP50 over all scores (detectors run at confidence 0.001, boxes matched at IoU >= 0.5 in source "
             "pixels, all-point interpolated AP per class); precision and recall at the shipped operating point "
             "(boxes >= the manifest's `operating_point.confidence`, else 0.25). An image whose route did not reach "
             "the detector counts with all its truth missed.", ""]
    rows = []
    for variant in evaluation.variants:
        for name, scores in sorted(evaluation.detection[variant].items()):
            alone = "; ".join(_alone(evaluation, name, m) for m in ("mAP50", "precision", "recall"))
            rows.append([name, variant, str(scores["images"]), str(scores["reached_detector"]),
                         str(scores["truth_boxes"]), _number(scores["mAP50"]),
                         _number(scores["operating_confidence"], 2), _number(scores["precision"]),
                         _number(scores["recall"]), alone])
    if not rows:
        return [*lines, "No detection set in this run."]
    lines += _table(["detector", "variant", "images", "reached detector", "truth boxes", "mAP50 (all scores)",
                     "operating confidence", "precision", "recall", "model alone (manifest)"], rows)
    for variant in evaluation.variants:
        for name, scores in sorted(evaluation.detection[variant].items()):
            lines += ["", f"{name}, {variant}: per class", ""]
            lines += _table(["class", "truth boxes", "AP50", "boxes at operating point", "found", "precision",
                             "recall"],
                            [[c, str(s["truth"]), _number(s["ap50"]), str(s["predicted_at_operating_point"]),
                              str(s["found_at_operating_point"]), _number(s["precision"]), _number(s["recall"])]
                             for c, s in scores["per_class"].items()])
            columns = [*scores["classes"], MISSED]
            rows_order = [c for c in scores["classes"] if c in scores["confusion"]]
            rows_order += [SPURIOUS] if SPURIOUS in scores["confusion"] else []
            lines += ["", f"{name}, {variant}: boxes at the operating point, matched whatever their class "
                          "(rows = truth, columns = predicted class):", ""]
            lines += _table(["", *columns], [[r, *(str(scores["confusion"][r].get(c, 0)) for c in columns)]
                                             for r in rows_order])
    return lines


def _segmentation(evaluation: PipelineEvaluation) -> list[str]:
    lines = ["### Segmentation", "",
             "Per volume: one series per test patient, Dice of all its slices stacked (sum of slice "
             "intersections); a patient whose route did not reach the segmenter counts as an empty prediction.", ""]
    rows = []
    for variant in evaluation.variants:
        for name, s in sorted(evaluation.segmentation[variant].items()):
            if not s.get("patients"):
                continue
            rows.append([name, variant, str(s["patients"]), str(s["reached_segmenter"]), str(s["slices"]),
                         _number(s["volume_dice"]), _number(s["tumour_slice_dice"]),
                         str(s["patients_without_prediction"]), f"{s['empty_slice_false_positive_rate']:.1%}",
                         "; ".join(_alone(evaluation, name, m) for m in ("volume_dice", "tumour_slice_dice"))])
    if not rows:
        return [*lines, "No segmentation set in this run."]
    lines += _table(["segmenter", "variant", "patients", "reached segmenter", "slices", "volume Dice (mean)",
                     "tumour-slice Dice", "patients with no mask", "empty-slice false positives",
                     "model alone (manifest)"], rows)
    for name in sorted({n for v in evaluation.variants for n in evaluation.segmentation[v]}):
        per_variant = {v: {p["patient"]: p for p in evaluation.segmentation[v].get(name, {}).get("per_patient", [])}
                       for v in evaluation.variants}
        patients = sorted({p for table in per_variant.values() for p in table})
        if not patients:
            continue
        first = next(iter(per_variant.values()))
        lines += ["", f"{name}: Dice per patient", ""]
        lines += _table(["patient", "slices", "tumour slices", *(f"Dice {v}" for v in evaluation.variants)],
                        [[p, str(first.get(p, {}).get("slices", "–")),
                          str(first.get(p, {}).get("tumour_slices", "–")),
                          *(_number(per_variant[v].get(p, {}).get("dice")) for v in evaluation.variants)]
                         for p in patients])
    return lines


def _models(evaluation: PipelineEvaluation) -> list[str]:
    rows = [[name, about.get("state", ""), str(about.get("version", "–")),
             ", ".join(f"{k} {_number(v)}" for k, v in about.get("metrics", {}).items()) or "–"]
            for name, about in evaluation.models.items()]
    return ["Models (state as the node sees it; metrics = the model alone on its PNG test split, from the manifest):",
            "", *_table(["model", "state", "version", "model alone (manifest)"], rows)]


def markdown_report(evaluation: PipelineEvaluation, routing: RoutingTree, command: str = "") -> str:
    """The section for docs/RESULTS.md."""
    studies = ", ".join(f"{name} {d['studies']}" for name, d in evaluation.datasets.items())
    lines = [f"## {TITLE}", "",
             (f"`{command}`, " if command else "") + f"{evaluation.seconds / 60:.1f} min on "
             f"{evaluation.settings.get('device', 'cpu')} ({evaluation.cpu_seconds / 60:.1f} min of CPU time). "
             "The test split of each set (the split each model was "
             f"trained with) wrapped as DICOM studies and read back by `run_study`: {studies} studies per variant. "
             "**honest**: a real modality's header (CT in Hounsfield units with rescale and window, MR and X-ray "
             "at 12 bits, some MONOCHROME1 and some windowed, BodyPartExamined, ImageOrientationPatient where the "
             "plane is known); **bare**: an 8-bit Secondary Capture, Modality OT, no anatomy, orientation or "
             "window, so the classifiers decide every node.", "",
             *_models(evaluation), "", *_routing(evaluation, routing), "", *_detection(evaluation), "",
             *_segmentation(evaluation)]
    errors = {v: e for v, e in evaluation.errors.items() if e}
    if errors:
        lines += ["", "Errors: " + "; ".join(f"{v}: {len(e)} (first: {e[0]})" for v, e in errors.items())]
    return "\n".join(lines) + "\n"


def summary_lines(evaluation: PipelineEvaluation) -> list[str]:
    """A few lines for the terminal under the tables' markdown: the headline per variant."""
    out: list[str] = []
    for variant in evaluation.variants:
        accuracy = [f"{r['node']} {r['accuracy']:.1%}" for r in evaluation.routing[variant]["rows"]
                    if r["dataset"] == "all"]
        detection = [f"{n} mAP50 {_number(s['mAP50'])}" for n, s in sorted(evaluation.detection[variant].items())]
        segmentation = [f"{n} volume Dice {_number(s.get('volume_dice'))}"
                        for n, s in sorted(evaluation.segmentation[variant].items())]
        out.append(f"{variant}: " + "; ".join(accuracy + detection + segmentation))
    return out


__all__ = ["TITLE", "markdown_report", "summary_lines"]
