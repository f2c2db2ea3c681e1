"""Fixtures for the receive tests: a real listener on a free port over a real audit database and spool."""

from __future__ import annotations

import os
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, read_file_meta_info, read_preamble
from pynetdicom import AE, _config
from pynetdicom.presentation import build_context
from sqlalchemy import select

from dicom_ai.config import Settings, load_settings
from dicom_ai.receive import Listener
from dicom_ai.store.database import Database
from dicom_ai.store.models import Association, Event, Instance
from dicom_ai.store.recorder import JOURNAL_DIR
from dicom_ai.store.spool import Spool
from tests.support.tools import dcmtk_tool

REPO_ROOT = Path(__file__).resolve().parents[2]
# CI checks the shared data out next to the repository (../shared/data); DICOM_AI_SHARED_DATA overrides.
SHARED_DATA = Path(os.environ.get("DICOM_AI_SHARED_DATA", REPO_ROOT / ".." / "shared" / "data")).resolve()
SHARED_DICOM = SHARED_DATA / "dicom"
NODELAY_ENV = {**os.environ, "TCP_NODELAY": "1"}


def shared_dicom(*parts: str) -> Path:
    """A file or folder of ../shared/data/dicom; skips the test with the reason when the data is absent."""
    path = SHARED_DICOM.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data {path} is absent (check out shared/data next to the repository or set "
                    f"DICOM_AI_SHARED_DATA)")
    return path


def require_tool(name: str) -> str:
    found = dcmtk_tool(name)
    if found is None:
        pytest.skip(f"{name} is not installed (apt-get install dcmtk)")
    return found


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a Part 10 file after its File Meta Information: the dataset exactly as encoded."""
    raw = path.read_bytes()
    stream = BytesIO(raw)
    read_preamble(stream, False)
    _read_file_meta_info(stream)
    return raw[stream.tell():]


@dataclass
class RunningNode:
    """A started listener and what it writes to."""

    settings: Settings
    database: Database
    spool: Spool
    listener: Listener
    port: int

    @property
    def data_dir(self) -> Path:
        return self.settings.storage.data_dir

    def instances(self) -> list[Instance]:
        with self.database.session() as session:
            return list(session.scalars(select(Instance).order_by(Instance.id)))

    def associations(self) -> list[Association]:
        with self.database.session() as session:
            return list(session.scalars(select(Association).order_by(Association.id)))

    def events(self, kind: str) -> list[Event]:
        with self.database.session() as session:
            return list(session.scalars(select(Event).where(Event.kind == kind).order_by(Event.id)))

    def spooled_files(self) -> list[Path]:
        """The files under the spool, without the listener's journal (`.journal/`: its folder's lock file)."""
        return sorted(p for p in self.spool.root.rglob("*")
                      if p.is_file() and JOURNAL_DIR not in p.relative_to(self.spool.root).parts)


NodeFactory = Callable[..., RunningNode]


@pytest.fixture()
def start_node(tmp_path: Path) -> Iterator[NodeFactory]:
    """Start listeners with settings overrides, e.g. `start_node(access={"mode": "allow-list"}, nodes={...})`;
    every one is stopped and its database closed at the end of the test."""
    started: list[RunningNode] = []

    def start(data_dir: Path | None = None, **sections: Any) -> RunningNode:
        tree: dict[str, Any] = {"node": {"bind": "127.0.0.1", "port": 0, "acse_timeout": 5,
                                         "network_timeout": 10, "dimse_timeout": 10},
                                "retention": {"min_free_mib": 0}}  # tests' temporary folders may be on a small disk
        for section, values in sections.items():
            tree.setdefault(section, {})
            if isinstance(values, dict):
                tree[section] = {**tree[section], **values}
        data = data_dir or tmp_path / f"node{len(started)}"
        tree.setdefault("storage", {})["data_dir"] = str(data)
        overrides = {(section, key): value for section, values in tree.items() for key, value in values.items()}
        settings = load_settings(None, overrides, environ={})
        database = Database(settings.storage.resolved_database_url)
        spool = Spool(settings.storage.spool_dir, min_free_bytes=settings.retention.min_free_bytes)
        listener = Listener(settings, database, spool)
        _, port = listener.start()
        node = RunningNode(settings, database, spool, listener, port)
        started.append(node)
        return node

    try:
        yield start
    finally:
        for node in started:
            node.listener.stop(timeout=2)
            node.database.close()


def run_tool(*command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), env=NODELAY_ENV, capture_output=True, text=True, timeout=timeout)


def store_with_pynetdicom(port: int, items: list[Path | Dataset], *, calling_ae: str = "TESTSCU",
                          called_ae: str = "DICOM_AI", tls_context: ssl.SSLContext | None = None) -> list[int | None]:
    """C-STORE files (sent as their raw bytes, so the dataset arrives exactly as in the file) or datasets, each on
    a context of its own SOP class and transfer syntax; returns the status of each (None: no response)."""
    keys = []
    for item in items:
        if isinstance(item, Path):
            meta = read_file_meta_info(item)
            keys.append((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
        else:
            keys.append((str(item.SOPClassUID), str(item.file_meta.TransferSyntaxUID)))
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    contexts = [build_context(sop_class, [syntax]) for sop_class, syntax in sorted(set(keys))]
    association = ae.associate("127.0.0.1", port, contexts=contexts, ae_title=called_ae,
                               tls_args=(tls_context, None) if tls_context is not None else None)
    assert association.is_established, "association was not accepted"
    statuses: list[int | None] = []
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send files byte for byte, never decoded and re-encoded
    try:
        for item in items:
            response = association.send_c_store(item)
            statuses.append(int(response.Status) if "Status" in response else None)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        association.release()
    return statuses
