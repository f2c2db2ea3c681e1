"""A real Orthanc as the PACS in tests: own temp dir, free ports, started as a child process, stoppable and
restartable on the same storage (to test delivery to a PACS that goes away and comes back).

Shared by the send, end-to-end and report/OHIF tests (written by the send stage; extend it compatibly). Orthanc 1.10
settings that matter here: `DicomAlwaysAllowStore` (False = only `DicomModalities` may store), `DicomModalities`
(where `POST /modalities/<name>/store` sends), the DICOMweb plugin (for OHIF) with `dicomweb=True`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

ORTHANC = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class OrthancNode:
    """One Orthanc in `directory`. `modalities` maps a name to (AE title, host, port) of nodes it may send to."""

    def __init__(self, directory: Path, *, ae_title: str = "ORTHANC",
                 modalities: dict[str, tuple[str, str, int]] | None = None, allow_any_store: bool = True,
                 dicomweb: bool = False) -> None:
        self.directory = directory
        self.ae_title = ae_title
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.process: subprocess.Popen[bytes] | None = None
        storage = directory / "storage"
        config: dict[str, Any] = {
            "Name": "dicom-ai-test", "DicomAet": ae_title, "DicomPort": self.dicom_port, "HttpPort": self.http_port,
            "StorageDirectory": str(storage), "IndexDirectory": str(storage), "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomAlwaysAllowStore": allow_any_store,
            "DicomModalities": {name: list(node) for name, node in (modalities or {}).items()},
            "Plugins": [str(DICOMWEB_PLUGIN)] if dicomweb else [],
            "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/"},
        }
        directory.mkdir(parents=True, exist_ok=True)
        self.config_path = directory / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=1))
        self.log_path = directory / "orthanc.log"

    def start(self, timeout: float = 20.0) -> None:
        # Debian's Orthanc leaves Nagle on unless told; without it each C-STORE waits on a delayed ACK.
        env = {**os.environ, "TCP_NODELAY": "1"}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([ORTHANC, str(self.config_path)], stdout=log, stderr=subprocess.STDOUT,
                                            env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/system", timeout=1).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer on {self.url} within {timeout} s")

    def stop(self, *, graceful: bool = True) -> None:
        """SIGTERM and wait (~3.4 s for Orthanc 1.10), or SIGKILL at once (teardown of a throw-away instance)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    # -- REST ----------------------------------------------------------------------------------------------

    def get(self, path: str) -> Any:
        response = requests.get(f"{self.url}{path}", timeout=30)
        response.raise_for_status()
        return response.json()

    def get_bytes(self, path: str) -> bytes:
        response = requests.get(f"{self.url}{path}", timeout=30)
        response.raise_for_status()
        return response.content

    def post(self, path: str, body: Any) -> Any:
        response = requests.post(f"{self.url}{path}", data=body if isinstance(body, bytes) else json.dumps(body),
                                 timeout=120)
        response.raise_for_status()
        return response.json()

    def upload(self, data: bytes) -> dict[str, Any]:
        result: dict[str, Any] = self.post("/instances", data)
        return result

    def sop_instance_uids(self) -> list[str]:
        """SOP Instance UIDs of every stored instance (one entry per stored instance, so duplicates would show)."""
        uids = []
        for instance_id in self.get("/instances"):
            uids.append(self.get(f"/instances/{instance_id}")["MainDicomTags"]["SOPInstanceUID"])
        return uids
