"""One slice as a PNG and wrapped as DICOM at 8, 12 and 16 bits, with and without a window, MONOCHROME1 and 2, and as
CT Hounsfield units with rescale: the model input (`pixels.model_input`) stays within MAX_INPUT_DIFFERENCE of the
PNG's, and the shipped models route every encoding the same way.

The wrappers are the evaluation's (`dicom_ai.train.studies`), written as Part 10 files and read back.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_ai.models.registry import ModelRegistry
from dicom_ai.pipeline import parse_routing
from dicom_ai.pipeline.pixels import load_frames, load_image_file, model_input
from dicom_ai.pipeline.run import run_study
from dicom_ai.train.study_specs import read_8bit
from dicom_ai.train.studies import Acquisition, SeriesIdentity, grey_instance, honest_instance
from pydicom.uid import SecondaryCaptureImageStorage

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
MODELS = REPO / "models"
MAX_INPUT_DIFFERENCE = 0.02  # the tolerance on the [0, 1] model input
MAX_PROBABILITY_DIFFERENCE = 0.02
INPUT_SIZE = 64
SLICES = {  # an MR slice with tumour and a hand radiograph: different routes, both through the classifiers
    "mr": DATA / "lgg" / "TCGA_DU_7008_19830723" / "TCGA_DU_7008_19830723_25.png",
    "xr": DATA / "fracatlas" / "images" / "IMG0000019.jpg",
}
ENCODINGS = [(bits, window, monochrome1) for bits in (8, 12, 16) for window in (False, True)
             for monochrome1 in (False, True)]
OFFSET = {8: 0, 12: 7, 16: 100}  # a small offset below one 8-bit step, as a scanner's stored values have


@pytest.fixture(scope="module")
def node() -> tuple[ModelRegistry, object]:
    """The shipped models and routing tree, without the detectors and segmenters: they do not change a route,
    and leaving them out keeps 26 studies quick."""
    tree = tomllib.loads((MODELS / "routing.toml").read_text())
    for node in tree["nodes"].values():
        for route in node.get("routes", {}).values():
            route.pop("detect", None)
            route.pop("segment", None)
    return ModelRegistry(MODELS, device="cpu"), parse_routing(tree, str(MODELS / "routing.toml"))


def _written(ds: pydicom.Dataset, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _encoded(name: str, bits: int, window: bool, monochrome1: bool, tmp_path: Path) -> Path:
    identity = SeriesIdentity.derived("model-input", f"{name}-{bits}-{window}-{monochrome1}", "bare")
    ds = grey_instance(read_8bit(SLICES[name]), identity, 0, sop_class=SecondaryCaptureImageStorage,
                       modality="OT", bits=bits, offset=OFFSET[bits], monochrome1=monochrome1, window=window)
    return _written(ds, tmp_path)


def _input_from_dicom(path: Path) -> np.ndarray:
    (frame,) = load_frames(pydicom.dcmread(path))
    return model_input(frame.image, INPUT_SIZE).image


def _route(path: Path, node: tuple[ModelRegistry, object]) -> list[tuple[str, str | None, dict[str, float]]]:
    registry, routing = node
    (series,) = run_study([path], registry, routing).series  # type: ignore[arg-type]
    return [(d.node, d.label, next((e.probabilities for e in d.evidence if e.source == "classifier"), {}))
            for d in series.route]


@pytest.fixture(scope="module")
def reference_routes(node: tuple[ModelRegistry, object], tmp_path_factory: pytest.TempPathFactory
                     ) -> dict[str, list[tuple[str, str | None, dict[str, float]]]]:
    """The route of each slice stored the plainest way: 8 bits, MONOCHROME2, no window."""
    folder = tmp_path_factory.mktemp("reference")
    return {name: _route(_encoded(name, 8, False, False, folder), node) for name in SLICES}


@pytest.mark.parametrize("name", sorted(SLICES))
@pytest.mark.parametrize(("bits", "window", "monochrome1"), ENCODINGS,
                         ids=[f"{b}bit-{'window' if w else 'nowindow'}-{'mono1' if m else 'mono2'}"
                              for b, w, m in ENCODINGS])
def test_wrapped_slice_gives_the_png_model_input_and_route(name: str, bits: int, window: bool, monochrome1: bool,
                                                           node: tuple[ModelRegistry, object],
                                                           reference_routes: dict[str, list[tuple[str, str | None,
                                                                                                  dict[str, float]]]],
                                                           tmp_path: Path) -> None:
    from_png = model_input(load_image_file(SLICES[name]), INPUT_SIZE).image
    path = _encoded(name, bits, window, monochrome1, tmp_path)
    ds = pydicom.dcmread(path)
    assert (int(ds.BitsStored), "WindowCenter" in ds, ds.PhotometricInterpretation) == \
        (bits, window, "MONOCHROME1" if monochrome1 else "MONOCHROME2")
    assert np.abs(_input_from_dicom(path) - from_png).max() <= MAX_INPUT_DIFFERENCE

    reference = reference_routes[name]
    route = _route(path, node)
    assert [(n, label) for n, label, _ in route] == [(n, label) for n, label, _ in reference]
    assert route[0][1] is not None  # the modality classifier decided: the routes compared are real decisions
    for (_, _, probabilities), (_, _, expected) in zip(route, reference):
        assert probabilities.keys() == expected.keys()
        for key, value in probabilities.items():
            assert value == pytest.approx(expected[key], abs=MAX_PROBABILITY_DIFFERENCE)


@pytest.mark.parametrize("window", [(40.0, 400.0), (-600.0, 1600.0)])
def test_ct_in_hounsfield_units_gives_the_png_model_input(window: tuple[float, float], tmp_path: Path) -> None:
    png = DATA / "modality" / "CT" / "tcia_Lung_Dx-A0001_2.000000-5mm-40805_1-10.png"
    identity = SeriesIdentity.derived("model-input", f"ct-{window}", "honest")
    path = _written(honest_instance(read_8bit(png), Acquisition("CT", ct_window=window), identity, 0), tmp_path)
    ds = pydicom.dcmread(path)
    assert (ds.pixel_array.dtype, float(ds.RescaleIntercept), float(ds.WindowWidth)) == (np.int16, -1024.0, window[1])
    from_png = model_input(load_image_file(png), INPUT_SIZE).image
    assert np.abs(_input_from_dicom(path) - from_png).max() <= MAX_INPUT_DIFFERENCE
