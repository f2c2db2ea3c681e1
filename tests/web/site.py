"""A node running in this process with its HTTP side on a free port, users of both roles, and helpers to send it
CT instances with dcmtk's storescu and to talk to its HTTP side."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from email.message import Message
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dicom_ai.config import Settings
from dicom_ai.node import Node
from dicom_ai.web.auth import hash_secret
from tests.support.tools import dcmtk_tool

PASSWORDS = {"op": "operator-secret", "viewer": "viewer-secret"}
TOKEN = "scraper-token-0123456789"


def web_settings(data_dir: Path, **sections: dict[str, Any]) -> Settings:
    """Settings of a quick node: loopback, free ports, `op` (operator) and `viewer` (read-only), one token."""
    tree: dict[str, Any] = {
        "node": {"bind": "127.0.0.1", "port": 0},
        "storage": {"data_dir": str(data_dir)},
        "queue": {"stable_after_seconds": 0.5, "poll_seconds": 0.1, "handler": "tests.store.handlers:ok"},
        "send": {"poll_seconds": 0.1},
        "http": {"port": 0, "users": {
            "op": {"password_hash": hash_secret(PASSWORDS["op"]), "role": "operator"},
            "viewer": {"password_hash": hash_secret(PASSWORDS["viewer"]), "role": "read-only"}},
            "tokens": {"scraper": {"token_hash": hash_secret(TOKEN), "role": "read-only"}}},
    }
    for section, values in sections.items():
        tree[section] = {**tree.get(section, {}), **values}
    return Settings.model_validate(tree)


def ct_instances(directory: Path, count: int) -> tuple[str, list[Path]]:
    """`count` small CT instances of one new study; returns its Study Instance UID and the files."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    study_uid, series_uid = generate_uid(), generate_uid()
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for number in range(1, count + 1):
        template.StudyInstanceUID, template.SeriesInstanceUID = study_uid, series_uid
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        template.InstanceNumber = number
        path = directory / f"{number:04d}.dcm"
        template.save_as(path, enforce_file_format=True)
        files.append(path)
    return study_uid, files


def storescu(port: int, files: list[Path], calling_ae: str = "MODALITY") -> None:
    tool = dcmtk_tool("storescu")
    assert tool is not None, "dcmtk storescu is not installed (deploy/install.sh)"
    subprocess.run([tool, "-aet", calling_ae, "-aec", "DICOM_AI", "127.0.0.1", str(port), *map(str, files)],
                   check=True, capture_output=True, timeout=60, env={**os.environ, "TCP_NODELAY": "1"})


@dataclass
class Client:
    """A browser-like HTTP client (cookies kept) for one base URL."""

    base: str
    cookies: CookieJar = field(default_factory=CookieJar)

    def request(self, method: str, path: str, data: bytes | None = None, headers: dict[str, str] | None = None,
                ) -> tuple[int, Message, bytes]:
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies), _NoRedirect())
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        try:
            with opener.open(request, timeout=60) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read()

    def get_json(self, path: str, **headers: str) -> tuple[int, Any]:
        status, _, body = self.request("GET", path, headers=headers)
        return status, json.loads(body)

    def post_form(self, path: str, fields: dict[str, str]) -> tuple[int, Message, bytes]:
        body = urllib.parse.urlencode(fields).encode()
        return self.request("POST", path, body, {"Content-Type": "application/x-www-form-urlencoded"})

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.cookies if c.name == name), None)

    def login(self, user: str) -> int:
        self.request("GET", "/login")
        status, _, _ = self.post_form("/login", {"username": user, "password": PASSWORDS[user],
                                                 "csrf_token": self.cookie("dicomai_csrf") or ""})
        return status

    def csrf(self) -> str:
        """The session's CSRF token, as the pages embed it in their forms."""
        _, _, body = self.request("GET", "/jobs")
        marker = b'name="csrf_token" value="'
        start = body.index(marker) + len(marker)
        return body[start:body.index(b'"', start)].decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def started(settings: Settings) -> Node:
    node = Node(settings, stop_timeout=5)
    node.start()
    return node

