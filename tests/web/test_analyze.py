""""Analyse an image": an uploaded DICOM file or PNG/JPEG runs through the node's own pipeline and nothing is
stored; oversized, non-image and broken uploads get clear 4xx answers."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dicom_ai.observe.health import Readiness
from dicom_ai.store.database import open_database
from dicom_ai.web import WebContext, create_app
from tests.e2e.studies import DATA_ROOT, DX_IMAGE, hand_dx_study
from tests.web.site import web_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The HTTP side alone, in open mode (a lab), over a fresh database; the real models."""
    root = tmp_path_factory.mktemp("analyze")
    settings = web_settings(root / "data", http={"auth": "open", "upload_max_mb": 2},
                            queue={"handler": ""}, pipeline={"device": "cpu"})
    settings.storage.data_dir.mkdir(parents=True)
    database = open_database(settings.storage)
    readiness = Readiness(database, settings.storage.data_dir, 0, lambda: True, lambda: True)
    with TestClient(create_app(WebContext(settings, database, readiness))) as test_client:
        yield test_client
    database.close()


def _jpeg_as_png() -> bytes:
    out = io.BytesIO()
    Image.open(DATA_ROOT / DX_IMAGE).convert("L").save(out, format="PNG")
    return out.getvalue()


def test_a_png_is_routed_by_its_pixels_with_overlays_and_timing(client: TestClient) -> None:
    response = client.post("/api/analyze", files={"file": ("hand.png", _jpeg_as_png(), "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["kind"] == "png" and body["stored"] is False and body["sent"] is False and body["seconds"] > 0
    (series,) = body["findings"]["series"]
    first = series["route"][0]
    assert first["node"] == "modality" and first["label"] == "XR" and first["decided_by"] == "classifier"
    assert body["overlays"] and body["overlays"][0].startswith("data:image/png;base64,")


def test_a_dicom_upload_shows_header_and_pixel_evidence_on_the_page(client: TestClient, tmp_path: Path) -> None:
    study = hand_dx_study(tmp_path)
    page = client.get("/analyze")
    csrf = client.cookies.get("dicomai_csrf")
    assert page.status_code == 200 and csrf
    response = client.post("/analyze", data={"csrf_token": csrf},
                           files={"file": ("dx.dcm", study.files[0].read_bytes(), "application/dicom")})
    assert response.status_code == 200, response.text
    assert "header" in response.text and "classifier" in response.text and 'class="overlay"' in response.text
    assert 'id="analysis-seconds"' in response.text
    assert not any((client.app.state.context.settings.storage.data_dir / "spool").glob("**/*.dcm"))  # type: ignore[attr-defined]


def test_the_upload_form_needs_its_csrf_token(client: TestClient) -> None:
    response = client.post("/analyze", files={"file": ("hand.png", _jpeg_as_png(), "image/png")})
    assert response.status_code == 403 and "CSRF" in response.text


@pytest.mark.parametrize(("name", "data", "status", "words"), [
    ("notes.txt", b"just some text, not an image", 415, "not a DICOM Part 10 file, PNG or JPEG"),
    ("broken.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, 422, "unreadable PNG"),
    ("empty.png", b"", 422, "empty"),
    ("big.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (2 * 2**20 + 10), 413, "larger than http.upload_max_mb"),
    ("huge.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (3 * 2**20), 413, "larger than http.upload_max_mb"),
])
def test_bad_uploads_get_a_clear_4xx(client: TestClient, name: str, data: bytes, status: int, words: str) -> None:
    response = client.post("/api/analyze", files={"file": (name, data, "application/octet-stream")})
    assert response.status_code == status and words in response.json()["error"], response.text
