"""What the radiologist sees: OHIF 3.13 (prebuilt npm package) in headless Debian chromium, reading a real Orthanc
(DICOMweb) that holds the brain MR study, our SEG and our boxes SR. The SEG overlay must appear in the segment's
colour where the mask is, the boxes must be drawn where the detections are, and the page must show no error.
Screenshots go to test-artifacts/ (kept by CI)."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from tests.report.conftest import ReportCase
from tests.support.ohif import CHROMIUM, OHIF_DIST, REPO_ROOT, OhifBrowser, OhifServer
from tests.support.orthanc import OrthancNode

pytestmark = pytest.mark.integration

ARTIFACTS = REPO_ROOT / "test-artifacts"
THUMBNAIL = '[data-cy="series-description-label"]'
ERROR_TEXT = re.compile(r"something went wrong|an error occurred|failed to load|error loading", re.IGNORECASE)


@dataclass
class Viewing:
    case: ReportCase
    pacs: OrthancNode
    server: OhifServer


def dicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def viewing(report_cases: dict[str, ReportCase], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Viewing]:
    if not (OHIF_DIST / "index.html").is_file() or not CHROMIUM.is_file():
        pytest.skip("needs the OHIF build in .ohif/ (deploy/install.sh --test) and /usr/bin/chromium")
    case = report_cases["MR"]
    pacs = OrthancNode(tmp_path_factory.mktemp("ohif-orthanc"), dicomweb=True)
    pacs.start()
    try:
        for path in case.files:
            pacs.upload(path.read_bytes())
        for ds in case.outputs:
            if ds.SOPClassUID.name == "Segmentation Storage" or ds.SeriesDescription == "AI boxes (SR)":
                pacs.upload(dicom_bytes(ds))
        with OhifServer(pacs.url) as server:
            yield Viewing(case, pacs, server)
    finally:
        pacs.stop(graceful=False)


def open_study(page: object, viewing: Viewing) -> None:
    page.goto(viewing.server.viewer_url(str(viewing.case.sources[0].StudyInstanceUID)))  # type: ignore[attr-defined]
    page.wait_for_selector(THUMBNAIL, timeout=60_000)  # type: ignore[attr-defined]
    banner = page.get_by_role("button", name="Confirm and hide")  # type: ignore[attr-defined]
    if banner.count():
        banner.click()
    # the MR must be on screen before a derived series is opened: loading an SR before its images are in the
    # viewport sometimes leaves its annotations undrawn
    page.locator('[data-cy="viewport-overlay-bottom-right"]', has_text="I:").wait_for(  # type: ignore[attr-defined]
        timeout=60_000)
    screenshot_until(page, "ohif-mr-opened.png", lambda rgb: rgb[..., 0] > 100)


def screenshot(page: object, name: str) -> np.ndarray:
    ARTIFACTS.mkdir(exist_ok=True)
    png = page.screenshot(path=str(ARTIFACTS / name))  # type: ignore[attr-defined]
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def screenshot_until(page: object, name: str, colour: Callable[[np.ndarray], np.ndarray],
                     timeout: float = 30.0) -> np.ndarray:
    """Screenshots until pixels of `colour` show and the screen has settled (two equal shots half a second
    apart: rendering and slice jumps are asynchronous), or until `timeout`; the last one."""
    deadline = time.monotonic() + timeout
    previous = None
    while True:
        shot = screenshot(page, name)
        settled = previous is not None and np.array_equal(previous, shot)
        if (colour(shot).sum() > 50 and settled) or time.monotonic() > deadline:
            return shot
        previous = shot
        # cornerstone draws annotations on its next render; in headless chromium that can wait for an input event
        box = page.locator("canvas.cornerstone-canvas").first.bounding_box()  # type: ignore[attr-defined]
        if box is not None:
            page.mouse.move(box["x"] + 5 + (time.monotonic() % 2), box["y"] + box["height"] - 5)  # type: ignore[attr-defined]
        time.sleep(0.5)


def displayed_instance(page: object, case: ReportCase) -> Dataset:
    """The source image on screen, from the viewport's "I:<InstanceNumber>" overlay."""
    text = page.locator('[data-cy="viewport-overlay-bottom-right"]').inner_text()  # type: ignore[attr-defined]
    number = int(re.search(r"I:\s*(\d+)", text).group(1))  # type: ignore[union-attr]
    return next(ds for ds in case.sources if int(ds.InstanceNumber) == number)


def image_to_screen(page: object, image: Dataset) -> tuple[float, float, float]:
    """(scale, x offset, y offset) of image pixel coordinates in the screenshot: OHIF fits the image to the
    viewport canvas and centres it."""
    box = page.locator("canvas.cornerstone-canvas").first.bounding_box()  # type: ignore[attr-defined]
    scale = min(box["width"] / int(image.Columns), box["height"] / int(image.Rows))
    return (scale, box["x"] + (box["width"] - scale * int(image.Columns)) / 2,
            box["y"] + (box["height"] - scale * int(image.Rows)) / 2)


def mask_on_screen(mask: np.ndarray, shape: tuple[int, int], transform: tuple[float, float, float]) -> np.ndarray:
    scale, x0, y0 = transform
    rows, columns = np.mgrid[0:shape[0], 0:shape[1]]
    image_rows = np.floor((rows + 0.5 - y0) / scale).astype(int)
    image_columns = np.floor((columns + 0.5 - x0) / scale).astype(int)
    inside = (image_rows >= 0) & (image_rows < mask.shape[0]) & (image_columns >= 0) & (image_columns < mask.shape[1])
    on_screen = np.zeros(shape, dtype=bool)
    on_screen[inside] = mask[image_rows[inside], image_columns[inside]]
    return on_screen


def grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    grown = mask.copy()
    for _ in range(pixels):
        grown[1:] |= grown[:-1].copy()
        grown[:-1] |= grown[1:].copy()
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
    return grown


def reddish(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] > 150) & (rgb[..., 0] - rgb[..., 1] > 80) & (rgb[..., 0] - rgb[..., 2] > 80)


def greenish(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 1] > 150) & (rgb[..., 1] - rgb[..., 0] > 80) & (rgb[..., 1] - rgb[..., 2] > 80)


def box_coloured(rgb: np.ndarray) -> np.ndarray:
    """OHIF draws an SR's boxes green, and the selected one yellow (as after stepping to it with the arrows)."""
    yellowish = ((rgb[..., 0] > 150) & (rgb[..., 1] > 150) & (rgb[..., 0] - rgb[..., 2] > 80)
                 & (rgb[..., 1] - rgb[..., 2] > 80))
    return greenish(rgb) | yellowish


def assert_no_error_shown(page: object, browser: OhifBrowser) -> None:
    assert not browser.page_errors, browser.page_errors
    body = page.locator("body").inner_text()  # type: ignore[attr-defined]
    assert not ERROR_TEXT.search(body), ERROR_TEXT.search(body)


def test_seg_overlay_appears_where_the_mask_is(viewing: Viewing, tmp_path: Path) -> None:
    case = viewing.case
    [segmentation] = case.findings.series[0].segmentations
    browser = OhifBrowser(tmp_path / "profile")
    with browser as page:
        open_study(page, viewing)
        before = screenshot(page, "ohif-mr-before-seg.png")
        page.locator(THUMBNAIL, has_text="AI segmentation").dblclick()
        page.get_by_role("button", name="Yes").click()
        after = screenshot_until(page, "ohif-mr-seg.png", reddish)
        image = displayed_instance(page, case)
        [frame] = [f for f in segmentation.frames if f.sop_instance_uid == image.SOPInstanceUID]
        expected = mask_on_screen(frame.mask, after.shape[:2], image_to_screen(page, image))
        assert_no_error_shown(page, browser)
    red = reddish(after)
    assert reddish(before).sum() < 20, "red on screen before the SEG was loaded"
    assert frame.pixel_count > 0 and expected.sum() > 0
    assert red[expected].mean() > 0.5, f"only {red[expected].mean():.0%} of the mask is drawn in the segment colour"
    assert red[~grow(expected, 4)].sum() < 0.1 * red.sum(), "segment colour far from the mask"


def box_edges_missing(drawn: np.ndarray, box: tuple[float, float, float, float],
                      transform: tuple[float, float, float], margin: int = 4) -> list[str]:
    """The edges of `box` (image pixels) with nothing `drawn` along at least 30 % of their length on screen."""
    scale, x_offset, y_offset = transform
    x0, y0, x1, y1 = box
    left, right = x_offset + scale * x0, x_offset + scale * x1
    top, bottom = y_offset + scale * y0, y_offset + scale * y1
    edges = {"left": drawn[int(top):int(bottom), int(left) - margin:int(left) + margin],
             "right": drawn[int(top):int(bottom), int(right) - margin:int(right) + margin],
             "top": drawn[int(top) - margin:int(top) + margin, int(left):int(right)],
             "bottom": drawn[int(bottom) - margin:int(bottom) + margin, int(left):int(right)]}
    return [name for name, edge in edges.items()
            if not edge.size or edge.any(axis=0 if name in ("top", "bottom") else 1).mean() <= 0.3]


def test_box_sr_draws_the_detection_boxes(viewing: Viewing, tmp_path: Path) -> None:
    case = viewing.case
    detections = case.findings.series[0].detections
    missing: list[str] = []
    # OHIF 3.13 sometimes hydrates an SR without drawing it (a race in its SR viewport, worse on a loaded
    # machine): a radiologist reopens the series; the test reopens the viewer once, the check stays the same.
    for attempt in range(2):
        browser = OhifBrowser(tmp_path / f"profile{attempt}")
        with browser as page:
            open_study(page, viewing)
            page.locator(THUMBNAIL, has_text="AI boxes").dblclick()
            shot = screenshot_until(page, "ohif-mr-boxes-sr.png", box_coloured, timeout=8)
            if box_coloured(shot).sum() <= 50:
                # stepping to the next measurement draws an SR that was hydrated but not drawn
                page.locator('[data-cy="viewport-action-arrows-right"]').click()
                shot = screenshot_until(page, "ohif-mr-boxes-sr.png", box_coloured)
            image = displayed_instance(page, case)
            transform = image_to_screen(page, image)
            assert_no_error_shown(page, browser)
        [detection] = [d for d in detections if d.sop_instance_uid == image.SOPInstanceUID]
        missing = box_edges_missing(box_coloured(shot), detection.box, transform)
        if not missing:
            return
    pytest.fail(f"no box edge drawn at {', '.join(missing)} (test-artifacts/ohif-mr-boxes-sr.png)")
