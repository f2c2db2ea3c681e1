"""End to end: a real Orthanc C-STOREs studies to `dicom-ai serve`; the findings (SEG, SR, key images) come back
into the same study in Orthanc, referencing the right instances, with every hop in `dicom-ai audit`; our own
outputs sent back to the node are stored and audited but never analysed again.

Studies: the real CT series, a brain MR series built from LGG slices, a FracAtlas hand radiograph as DX.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.e2e.served_node import REPO_ROOT, ServedNode, free_port
from tests.e2e.studies import BuiltStudy, brain_mr_study, ct_study, hand_dx_study
from tests.support.orthanc import OrthancNode
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33",
              "1.2.840.10008.5.1.4.1.1.88.34"}
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MR_FIRST_SLICE, MR_SLICES = 20, 6  # LGG slices 20-25 of the chosen patient: tumour on every one
RESULTS_TIMEOUT = 240.0


def stages_missing() -> list[str]:
    missing = []
    for module, name in (("dicom_ai.pipeline", "run_study"), ("dicom_ai.report", "build_outputs"),
                         ("dicom_ai.report", "is_own_output")):
        try:
            getattr(__import__(module, fromlist=[name]), name)
        except (ImportError, AttributeError):
            missing.append(f"{module}.{name}")
    return missing


def models_for_the_node(directory: Path) -> Path:
    """The shipped models when models/manifest.toml exists; otherwise tiny models trained here (the pipeline
    tests' helpers): the LGG tumour segmenter learnt from other slices of the same patient, and YOLO detectors
    built from their yaml. Without a modality classifier the routing tree decides on the DICOM header."""
    shipped = REPO_ROOT / "models"
    if (shipped / "manifest.toml").is_file():
        return shipped
    from tests.pipeline import trained
    from tests.pipeline.registering import register_detector, register_segmenter

    register_segmenter(directory, "lgg", trained.train_segmenter(), ["tumour"], trained.INPUT_SIZE)
    register_detector(directory, "brain_tumor_det", ["pituitary", "meningioma", "glioma"], trained.INPUT_SIZE)
    register_detector(directory, "fracatlas", ["fracture"], trained.INPUT_SIZE)
    return directory


def node_sending_to(pacs: OrthancNode, root: Path, port: int) -> ServedNode:
    """`dicom-ai serve` in `root/node` on `port` with the real pipeline, its results going back to `pacs`."""
    return ServedNode(root / "node", {
        "nodes.PACS": {"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port},
        "queue": {"stable_after_seconds": 1.0, "poll_seconds": 0.2},
        "send": {"poll_seconds": 0.2, "backoff_initial_seconds": 1, "backoff_max_seconds": 5},
        "pipeline": {"device": "cpu", "models_dir": str(models_for_the_node(root / "models")),
                     "routing_file": str(REPO_ROOT / "models" / "routing.toml")},
    }, port=port)


@dataclass
class Deployment:
    pacs: OrthancNode
    node: ServedNode
    studies: dict[str, BuiltStudy] = field(default_factory=dict)
    orthanc_ids: dict[str, str] = field(default_factory=dict)


def push_to_node(pacs: OrthancNode, study: BuiltStudy) -> str:
    """Upload the study's files to Orthanc and have Orthanc C-STORE the study to the node; its Orthanc ID."""
    for path in study.files:
        pacs.upload(path.read_bytes())
    [found] = [item for item in pacs.post("/tools/lookup", study.study_uid.encode()) if item["Type"] == "Study"]
    pacs.post("/modalities/DICOM_AI/store", {"Resources": [found["ID"]], "Synchronous": True})
    return str(found["ID"])


def datasets_in(pacs: OrthancNode, orthanc_study: str) -> list[Dataset]:
    return [pydicom.dcmread(io.BytesIO(pacs.get_bytes(f"/instances/{item['ID']}/file")))
            for item in pacs.get(f"/studies/{orthanc_study}/instances")]


def results_of(pacs: OrthancNode, orthanc_study: str, study: BuiltStudy) -> list[Dataset]:
    sources = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in study.files}
    return [ds for ds in datasets_in(pacs, orthanc_study) if str(ds.SOPInstanceUID) not in sources]


def classes(results: list[Dataset]) -> set[str]:
    found = set()
    for ds in results:
        uid = str(ds.SOPClassUID)
        found.add("SEG" if uid == SEG else "SR" if uid in SR_CLASSES else
                  "SC" if uid.startswith(SECONDARY_CAPTURE) else uid)
    return found


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    missing = stages_missing()
    if missing:
        pytest.skip(f"end to end needs every stage; not in this tree yet: {', '.join(missing)}")
    root = tmp_path_factory.mktemp("e2e")
    node_port = free_port()
    pacs = OrthancNode(root / "orthanc", modalities={"DICOM_AI": ("DICOM_AI", "127.0.0.1", node_port)},
                       dicomweb=True)
    pacs.start()
    node = node_sending_to(pacs, root, node_port)
    deployment = Deployment(pacs, node)
    try:
        node.start()
        for name, study in (("MR", brain_mr_study(root / "mr", MR_FIRST_SLICE, MR_SLICES)),
                            ("DX", hand_dx_study(root / "dx")), ("CT", ct_study())):
            deployment.studies[name] = study
            deployment.orthanc_ids[name] = push_to_node(pacs, study)
        yield deployment
    finally:
        node.stop()
        pacs.stop(graceful=False)


def node_settled(node: ServedNode, study_uid: str) -> bool:
    """The study's latest job is done and none of its results waits in the outbox (read from the node's database).

    The viewer objects reach the PACS before the complete SR (dicom_ai.report.process), so finding some results
    in Orthanc does not yet mean that all have been sent.
    """
    job, states = node.latest_job(study_uid), node.outbox_states(study_uid)
    return job is not None and job[0] == "done" and not states.get("pending") and not states.get("sending")


def failed_job_error(node: ServedNode, study_uid: str) -> str | None:
    """The error of the study's latest job when that job has failed for good (read from the node's database)."""
    job = node.latest_job(study_uid)
    return job[1] if job is not None and job[0] == "failed" else None


def wait_for_results(deployment: Deployment, name: str, expected: set[str]) -> list[Dataset]:
    pacs, study = deployment.pacs, deployment.studies[name]

    def arrived() -> list[Dataset]:
        error = failed_job_error(deployment.node, study.study_uid)
        if error is not None:
            raise AssertionError(f"the node's job for the {name} study failed: {error[:3000]}")
        if not node_settled(deployment.node, study.study_uid):
            return []
        found = results_of(pacs, deployment.orthanc_ids[name], study)
        return found if found and expected <= classes(found) else []

    return wait_for(arrived, RESULTS_TIMEOUT, f"{sorted(expected)} of the {name} study in Orthanc "
                                              f"(node log: {deployment.node.log()[-1500:]})", interval=0.5)


def referenced_uids(ds: Dataset) -> set[str]:
    """SOP Instance UIDs an object references: SEG ReferencedSeriesSequence, SR evidence, SC source images."""
    found: set[str] = set()
    for series in ds.get("ReferencedSeriesSequence", []):
        found |= {str(item.ReferencedSOPInstanceUID) for item in series.get("ReferencedInstanceSequence", [])}
    for evidence in ds.get("CurrentRequestedProcedureEvidenceSequence", []):
        for series in evidence.get("ReferencedSeriesSequence", []):
            found |= {str(item.ReferencedSOPInstanceUID) for item in series.get("ReferencedSOPSequence", [])}
    found |= {str(item.ReferencedSOPInstanceUID) for item in ds.get("SourceImageSequence", [])}
    return found


def check_same_study_and_references(results: list[Dataset], study: BuiltStudy) -> None:
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in study.files]
    source_uids = {str(ds.SOPInstanceUID) for ds in sources}
    result_uids = {str(ds.SOPInstanceUID) for ds in results}
    for ds in results:
        assert ds.StudyInstanceUID == study.study_uid and ds.PatientID == sources[0].PatientID
        assert ds.SeriesInstanceUID != study.series_uid  # results are new series in the study
        references = referenced_uids(ds)
        assert references, f"{ds.SOPClassUID} references nothing"
        assert references <= source_uids | result_uids, references - source_uids - result_uids
        assert references & source_uids, "a result must reference the images it was derived from"


def audit_trail(deployment: Deployment, study: BuiltStudy) -> dict[str, Any]:
    result = deployment.node.cli("audit", "--study", study.study_uid, "--json")
    assert result.returncode == 0, result.stderr
    trail: dict[str, Any] = json.loads(result.stdout)
    return trail


def check_every_hop_audited(deployment: Deployment, study: BuiltStudy, results: list[Dataset]) -> None:
    trail = audit_trail(deployment, study)
    kinds = [event["kind"] for event in trail["events"]]
    assert trail["associations"] and trail["associations"][0]["peer_ae"] == "ORTHANC"
    assert {i["sop_instance_uid"] for i in trail["instances"] if not i["produced_by_us"]} >= {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in study.files}
    assert any(job["state"] == "done" for job in trail["jobs"])
    for hop in ("study.created", "study.state", "report.built", "send.submitted", "send.queued", "send.stored"):
        assert hop in kinds, (hop, kinds)
    assert any(kind.startswith("pipeline.") for kind in kinds), kinds
    stored = {event["sop_instance_uid"] for event in trail["events"] if event["kind"] == "send.stored"}
    assert stored == {str(ds.SOPInstanceUID) for ds in results}


def test_brain_mr_gets_seg_sr_and_key_images_back(deployment: Deployment) -> None:
    study = deployment.studies["MR"]
    results = wait_for_results(deployment, "MR", {"SEG", "SR", "SC"})
    check_same_study_and_references(results, study)
    [seg] = [ds for ds in results if str(ds.SOPClassUID) == SEG]
    assert seg.SegmentationType == "BINARY" and seg.FrameOfReferenceUID
    check_every_hop_audited(deployment, study, results)


def test_hand_radiograph_gets_sr_and_key_image_back(deployment: Deployment) -> None:
    study = deployment.studies["DX"]
    results = wait_for_results(deployment, "DX", {"SR", "SC"})
    check_same_study_and_references(results, study)
    check_every_hop_audited(deployment, study, results)


def test_ct_gets_its_report_back(deployment: Deployment) -> None:
    study = deployment.studies["CT"]
    results = wait_for_results(deployment, "CT", {"SR"})
    check_same_study_and_references(results, study)
    check_every_hop_audited(deployment, study, results)


def test_our_own_outputs_sent_back_are_stored_but_never_analysed_again(deployment: Deployment) -> None:
    study = deployment.studies["MR"]
    results = wait_for_results(deployment, "MR", {"SEG", "SR", "SC"})
    jobs_before = len(audit_trail(deployment, study)["jobs"])
    result_series = {str(ds.SeriesInstanceUID) for ds in results}
    orthanc_series = [item["ID"] for item in deployment.pacs.get(f"/studies/{deployment.orthanc_ids['MR']}/series")
                      if item["MainDicomTags"]["SeriesInstanceUID"] in result_series]
    deployment.pacs.post("/modalities/DICOM_AI/store", {"Resources": orthanc_series, "Synchronous": True})
    ours = {str(ds.SOPInstanceUID) for ds in results}
    trail = wait_for(lambda: (t := audit_trail(deployment, study)) and ours <= {
        i["sop_instance_uid"] for i in t["instances"] if i["produced_by_us"]} and t, 30,
        "our outputs recorded as produced_by_us")
    time.sleep(3.0)  # longer than queue.stable_after_seconds + polling: a new job would have been queued by now
    trail = audit_trail(deployment, study)
    assert len(trail["jobs"]) == jobs_before
    assert trail["study"]["state"] == "done"


def seg_mask_for(seg: Dataset, sop_instance_uid: str) -> np.ndarray:
    """The SEG's (first segment's) mask over one source image; all zero when the SEG has no frame for it."""
    segmentation = hd.seg.Segmentation.from_dataset(seg)
    try:
        pixels = segmentation.get_pixels_by_source_instance(source_sop_instance_uids=[sop_instance_uid],
                                                            segment_numbers=[1])
    except (KeyError, ValueError):  # empty frames are omitted from the SEG
        return np.zeros((int(seg.Rows), int(seg.Columns)), dtype=bool)
    return np.asarray(pixels)[0, :, :, 0] > 0


def test_ohif_overlays_the_seg_from_orthanc_where_the_mask_is(deployment: Deployment, tmp_path: Path) -> None:
    """The radiologist's view: OHIF reads the MR study from the same Orthanc the node sent its results to."""
    from tests.report.test_ohif import (THUMBNAIL, assert_no_error_shown, grow, image_to_screen, mask_on_screen,
                                        reddish, screenshot, screenshot_until)
    from tests.support.ohif import CHROMIUM, OHIF_DIST, OhifBrowser, OhifServer

    if not (OHIF_DIST / "index.html").is_file() or not CHROMIUM.is_file():
        pytest.skip("needs the OHIF build in .ohif/ (deploy/install.sh --test) and /usr/bin/chromium")
    study = deployment.studies["MR"]
    [seg] = [ds for ds in wait_for_results(deployment, "MR", {"SEG", "SR", "SC"}) if str(ds.SOPClassUID) == SEG]
    sources = [pydicom.dcmread(path) for path in study.files]
    browser = OhifBrowser(tmp_path / "profile")
    with OhifServer(deployment.pacs.url) as server, browser as page:
        page.goto(server.viewer_url(study.study_uid))
        page.wait_for_selector(THUMBNAIL, timeout=60_000)
        banner = page.get_by_role("button", name="Confirm and hide")
        if banner.count():
            banner.click()
        before = screenshot(page, "e2e-ohif-mr-before-seg.png")
        page.locator(THUMBNAIL, has_text=str(seg.SeriesDescription)).dblclick()
        page.get_by_role("button", name="Yes").click()
        after = screenshot_until(page, "e2e-ohif-mr-seg.png", reddish)
        overlay_text = page.locator('[data-cy="viewport-overlay-bottom-right"]').inner_text()
        number = int(re.search(r"I:\s*(\d+)", overlay_text).group(1))  # type: ignore[union-attr]
        image = next(ds for ds in sources if int(ds.InstanceNumber) == number)
        expected = mask_on_screen(seg_mask_for(seg, str(image.SOPInstanceUID)), after.shape[:2],
                                  image_to_screen(page, image))
        canvas = page.locator("canvas.cornerstone-canvas").first.bounding_box()
        assert_no_error_shown(page, browser)
    # only the image viewport counts: the key image's thumbnail in the study panel is red by design
    viewport = np.zeros(after.shape[:2], dtype=bool)
    viewport[int(canvas["y"]):int(canvas["y"] + canvas["height"]), int(canvas["x"]):int(canvas["x"] + canvas["width"])] = True
    red = reddish(after) & viewport
    assert (reddish(before) & viewport).sum() < 20, "red on screen before the SEG was loaded"
    assert expected.sum() > 0, "the SEG has no mask on the image OHIF shows"
    assert red[expected].mean() > 0.5, f"only {red[expected].mean():.0%} of the mask is drawn in the segment colour"
    assert red[~grow(expected, 4)].sum() < 0.1 * red.sum(), "segment colour far from the mask"
