"""`dicom-ai evaluate NAME`: an installed model scored on its set's test split (or a folder), as markdown, JSON
and plots; `dicom-ai evaluate pipeline`: the node itself scored on every set's test split wrapped as DICOM studies.

    dicom-ai evaluate lgg --data ../shared/data --json lgg.json --plots plots/      # lgg's test split
    dicom-ai evaluate mri_region --folder DIR --limit 50                             # every item of DIR
    dicom-ai evaluate pipeline --data ../shared/data --markdown e2e.md --limit 5     # DICOM in, findings scored
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from dicom_ai.cli.app import ConfigOption, app, exit_2_on
from dicom_ai.cli.train_model_cmd import data_or_folder


@app.command()
def evaluate(
    name: Annotated[str, typer.Argument(help="The model's name in the manifest, or `pipeline` for the whole node "
                                        "on DICOM studies.")],
    data: Annotated[Optional[Path], typer.Option("--data", help="shared/data (or a packed copy): the test split "
                                                 "of --dataset is scored.")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="The named set the model was trained on "
                                                   "(default: the model's name).")] = None,
    folder: Annotated[Optional[Path], typer.Option("--folder", help="Instead: every item of a folder in the "
                                                   "task's layout (see `dicom-ai train classify --help`).")] = None,
    models_dir: Annotated[Optional[Path], typer.Option("--models-dir", "--models", help="Models folder "
                                                       "(manifest.toml; default: models, or the config's for "
                                                       "`pipeline`).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Split seed the model was trained with.")] = 0,
    max_items: Annotated[Optional[int], typer.Option("--max-items", help="The cap the training run used, if "
                                                     "any (same split).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Score only the first N test items in a "
                                                 "stable order (a fixed small sample); `pipeline`: N studies per "
                                                 "dataset.")] = None,
    json_file: Annotated[Optional[Path], typer.Option("--json", help="Write the full result as JSON here.")] = None,
    plots: Annotated[Optional[Path], typer.Option("--plots", help="Write PNG plots into this folder.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    config: ConfigOption = None,
    variants: Annotated[str, typer.Option("--variants", help="`pipeline`: header variants, comma-separated "
                                          "(honest, bare).")] = "honest,bare",
    datasets: Annotated[Optional[str], typer.Option("--datasets", help="`pipeline`: the sets to wrap, "
                                                    "comma-separated (default: all).")] = None,
    markdown: Annotated[Optional[Path], typer.Option("--markdown", help="`pipeline`: write the RESULTS.md "
                                                     "section here.")] = None,
    keep_studies: Annotated[Optional[Path], typer.Option("--keep-studies", help="`pipeline`: keep the DICOM "
                                                         "studies in this folder.")] = None,
) -> None:
    """Score an installed model: accuracy and per-class P/R, mAP and matched-box IoU, or Dice and IoU.

    `dicom-ai evaluate pipeline --data ../shared/data`: the node's own output (routing, boxes, masks) on the test
    split of every set wrapped as DICOM studies, with honest and bare headers, beside the models alone."""
    from dicom_ai.models.device import DeviceUnavailable
    from dicom_ai.models.registry import ModelRegistry, ModelUnavailable
    from dicom_ai.train.datasets import DatasetError
    from dicom_ai.train.evaluate import evaluate_model, markdown_report
    from dicom_ai.train.sources import training_set

    if limit is not None and limit < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--limit")
    if name == "pipeline":
        from dicom_ai.cli.evaluate_pipeline_cmd import evaluate_pipeline_command

        evaluate_pipeline_command(data, models_dir, config, variants, datasets, limit, seed, json_file, markdown,
                                  keep_studies, device)
        return
    models_dir = models_dir or Path("models")
    if folder is None and data is not None:
        dataset = dataset or name
    location = data_or_folder(dataset, data, folder)
    with exit_2_on(ModelUnavailable, DatasetError, DeviceUnavailable):
        # a model below its quality gate is scored too: evaluating it is how its metric is known
        registry = ModelRegistry(models_dir, device=device, enabled_below_minimum=[name])
        spec = registry.spec(name)
        source = training_set(spec.task, location, dataset)
        evaluation = evaluate_model(registry, name, source, seed=seed, cap=max_items, limit=limit,
                                    whole=folder is not None, plots_dir=plots)
    typer.echo(markdown_report(evaluation))
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps(evaluation.to_dict(), indent=2, sort_keys=True, default=str) + "\n")
    for plot in evaluation.plots:
        typer.echo(f"wrote {plot}")
