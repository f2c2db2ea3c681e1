"""The C-STORE SCP handler: validate, write the bytes as received, record, answer (PS3.4 Annex B).

It runs on the association's thread, so it does the least: one header parse (the attributes it records), one indexed
duplicate lookup, one atomic spool write (file meta + the dataset bytes exactly as received, never re-encoded;
usually streamed into the spool while it arrived, see dicom_ai.receive.streaming). Success is answered only once the
file is durable under its final name and the instance is either journaled for the recorder, which commits its row
right after (dicom_ai.store.recorder; the default), or, with `storage.commit_before_answer`, its row is committed
(written while the file's fsyncs run, committed only after they succeeded).

C-STORE response statuses (0000,0900) this node answers:

| status | meaning | when |
|---|---|---|
| 0x0000 | Success | stored and recorded; or a duplicate ignored under `storage.duplicate_policy = "keep-first"` |
| 0x0111 | Failure: Duplicate SOP Instance (PS3.7 C.4) | duplicate under `duplicate_policy = "reject"` |
| 0xA700 | Refused: Out of Resources | spool full or below `retention.min_free_mib`; a write or the row failed |
| 0xA900 | Error: Data Set Does Not Match SOP Class | SOP Class UID (0008,0016) missing or not the negotiated one |
| 0xC000 | Error: Cannot Understand | the dataset cannot be parsed in the negotiated transfer syntax |
| 0xC010 | Error: Cannot Understand | Study/Series/SOP Instance UID missing or not a valid UID (dicom_ai.uids) |
| 0xC011 | Error: Cannot Understand | SOP Instance UID (0008,0018) is not the command's Affected SOP Instance UID |

Every refusal is audited with `Database.record_refused_instance`; nothing is written for a refused instance.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pynetdicom.events import Event
from sqlalchemy import bindparam, select

from dicom_ai.config import StorageSettings
from dicom_ai.observe import metrics
from dicom_ai.receive.file_meta import received_file_meta
from dicom_ai.receive.header import UnreadableDataset, read_header
from dicom_ai.receive.server import AssociationSession
from dicom_ai.receive.streaming import incoming_file
from dicom_ai.store.database import Database
from dicom_ai.store.health import is_transient, summary
from dicom_ai.store.models import Instance, utcnow
from dicom_ai.store.recorder import InstanceRecorder, JournalUnavailable
from dicom_ai.store.records import ReceivedInstance
from dicom_ai.store.spool import (
    IncomingFile,
    PlacedFile,
    Spool,
    SpoolError,
    SpoolFull,
    StoredFile,
    encode_file_meta,
)
from dicom_ai.uids import InvalidUID, is_valid_uid, require_uid

log = logging.getLogger(__name__)

_STORED_PATH = select(Instance.spool_path).where(Instance.sop_instance_uid == bindparam("uid"))

_ERROR_COMMENT_MAX = 64  # Error Comment (0000,0902) is LO

# What the handler reads from each received header: the UIDs it checks, what the instance row records
# (dicom_ai.store.records.ReceivedInstance), and Manufacturer for recognising our own outputs coming back.
HEADER_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "StudyDate", "Modality", "Manufacturer", "SeriesDescription", "PatientName",
    "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber", "InstanceNumber",
)


class StoreStatus(IntEnum):
    """See the module docstring for when each is answered."""

    SUCCESS = 0x0000
    DUPLICATE_REJECTED = 0x0111
    OUT_OF_RESOURCES = 0xA700
    SOP_CLASS_MISMATCH = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    INVALID_UID = 0xC010
    INSTANCE_UID_MISMATCH = 0xC011


class Refused(Exception):
    def __init__(self, status: StoreStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class InstanceIdentity:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str


OwnOutputCheck = Callable[[Dataset], bool]


class InstanceReceiver:
    """Handles EVT_C_STORE for every association of one listener."""

    def __init__(self, database: Database, spool: Spool, storage: StorageSettings,
                 is_own_output: OwnOutputCheck | None = None, recorder: InstanceRecorder | None = None) -> None:
        """`recorder`: commits rows after the answer (storage.commit_before_answer = false); None: before it."""
        self.database = database
        self.recorder = recorder
        self.spool = spool
        self.duplicate_policy = storage.duplicate_policy
        self.is_own_output = is_own_output

    def handle_store(self, event: Event) -> Dataset:
        session: AssociationSession | None = getattr(event.assoc, "session", None)
        association_id = session.association_id if session else None
        command_uid = str(event.request.AffectedSOPInstanceUID or "")
        started = time.perf_counter()
        try:
            status, modality = self._store(event, session)
        except Refused as refusal:
            metrics.instance_rejected(refusal.status.name.lower(), time.perf_counter() - started)
            if session:
                session.failed += 1
            audit_uid = command_uid if is_valid_uid(command_uid) else None
            log.warning("C-STORE %s refused with 0x%04X: %s", audit_uid or "(invalid UID)", refusal.status,
                        refusal.reason)
            try:
                self.database.record_refused_instance(association_id, audit_uid, int(refusal.status),
                                                      refusal.reason)
            except Exception as exc:  # a full disk: one line per refused instance, like the refusal itself
                if not is_transient(exc):
                    log.exception("cannot audit the refused instance %s", audit_uid)
                else:
                    log.error("cannot audit the refused instance %s: %s", audit_uid, summary(exc))
            return _response(refusal.status, refusal.reason)
        metrics.instance_received(session.calling_ae if session else "", modality, time.perf_counter() - started)
        if session:
            session.stored += 1
        return _response(status)

    def _store(self, event: Event, session: AssociationSession | None) -> tuple[StoreStatus, str]:
        incoming = incoming_file(event.request)
        try:
            return self._store_instance(event, session, incoming)
        finally:
            if incoming is not None:
                incoming.discard()  # a no-op once committed; removes it after a refusal or a duplicate

    def _store_instance(self, event: Event, session: AssociationSession | None,
                        incoming: IncomingFile | None) -> tuple[StoreStatus, str]:
        """The status and the instance's modality. `incoming`: the data set streamed into the spool (dicom_ai.receive.streaming); else it is in memory."""
        _, abstract_syntax, transfer_syntax = event.context
        dataset: bytes | IncomingFile
        if incoming is not None:
            try:
                self.spool.check_incoming(incoming)
            except SpoolError as exc:
                raise _spool_refusal(exc) from None
            dataset, source = incoming, incoming.dataset_reader()
        else:
            dataset = source = event.encoded_dataset(include_meta=False)
        try:
            header = read_header(source, str(transfer_syntax), HEADER_KEYWORDS)
        except UnreadableDataset as exc:
            raise Refused(StoreStatus.CANNOT_UNDERSTAND, str(exc)) from None
        identity = _identity(header, str(abstract_syntax), str(event.request.AffectedSOPClassUID or ""),
                             str(event.request.AffectedSOPInstanceUID or ""))

        try:
            previous = self._stored_path(identity.sop_instance_uid)
        except Exception as exc:
            log.exception("audit database unavailable")
            raise Refused(StoreStatus.OUT_OF_RESOURCES, f"audit database unavailable: {exc}") from None
        if previous is not None and self.duplicate_policy == "keep-first":
            self.database.record_event("instance.duplicate_ignored", study_uid=identity.study_uid,
                                       series_uid=identity.series_uid, sop_instance_uid=identity.sop_instance_uid,
                                       association_id=session.association_id if session else None,
                                       detail={"kept": str(previous), "policy": "keep-first"})
            return StoreStatus.SUCCESS, ""  # a duplicate is counted under modality "-"
        if previous is not None and self.duplicate_policy == "reject":
            raise Refused(StoreStatus.DUPLICATE_REJECTED,
                          "SOP Instance UID already received; storage.duplicate_policy = reject")

        calling_ae = session.calling_ae if session else ""
        file_meta = _file_meta(identity, str(transfer_syntax), calling_ae)
        stored: StoredFile | PlacedFile
        try:
            if isinstance(dataset, IncomingFile) and dataset.meta_bytes == encode_file_meta(file_meta):
                # (always so, as both come from the checked UIDs) the fsyncs run while the row is written
                stored = self.spool.place(dataset, identity.study_uid, identity.series_uid, identity.sop_instance_uid)
            else:
                body = dataset.read_dataset_bytes() if isinstance(dataset, IncomingFile) else dataset
                stored = self.spool.write(identity.study_uid, identity.series_uid, identity.sop_instance_uid,
                                          file_meta, body)
        except SpoolError as exc:
            raise _spool_refusal(exc) from None

        received = _received_instance(header, identity, str(transfer_syntax), stored.size_bytes, stored.path,
                                      calling_ae, self._own_output(header))
        association_id = session.association_id if session else None
        if not self._record_behind(association_id, stored, received):
            self._record_now(association_id, stored, received, previous)
        if previous is not None and previous != stored.path:
            self.spool.remove(previous)
        return StoreStatus.SUCCESS, received.modality

    def _record_behind(self, association_id: int | None, stored: StoredFile | PlacedFile,
                       received: ReceivedInstance) -> bool:
        """Journal the durable file and leave its row to the recorder (dicom_ai.store.recorder); False when the
        recorder is not taking instances and the row must be committed before the answer."""
        recorder = self.recorder
        if recorder is None or not recorder.accepting:
            return False
        if isinstance(stored, PlacedFile):
            try:
                stored.wait()
            except SpoolError as exc:  # the new name is removed already
                raise _spool_refusal(exc) from None
        try:
            recorder.submit(association_id, received)
        except JournalUnavailable as exc:
            log.warning("%s; recording %s before answering", exc, received.sop_instance_uid)
            return False
        return True

    def _record_now(self, association_id: int | None, stored: StoredFile | PlacedFile, received: ReceivedInstance,
                    previous: Path | None) -> None:
        try:
            # committed only once the file is durable (PlacedFile.wait raises if an fsync failed: nothing committed)
            self.database.record_instance(association_id, received,
                                          before_commit=stored.wait if isinstance(stored, PlacedFile) else None)
        except SpoolError as exc:  # the new name is removed already
            raise _spool_refusal(exc) from None
        except Exception as exc:
            log.exception("cannot record instance %s", received.sop_instance_uid)
            if isinstance(stored, PlacedFile):
                with suppress(SpoolError):
                    stored.wait()
            if previous != stored.path:
                self.spool.remove(stored.path)  # not recorded -> not received; the sender will retry
            raise Refused(StoreStatus.OUT_OF_RESOURCES, f"audit database refused the row: {exc}") from None

    def _stored_path(self, sop_instance_uid: str) -> Path | None:
        """Where an instance with this SOP Instance UID is already spooled, if it is: queued for the recorder, or
        one indexed lookup (this runs for every C-STORE; `Database.find_instance` does two joins)."""
        if self.recorder is not None:
            pending = self.recorder.pending_path(sop_instance_uid)
            if pending is not None:
                return pending
        with self.database.one_statement_reads.connect() as connection:
            path = connection.execute(_STORED_PATH, {"uid": sop_instance_uid}).scalar()
        return None if path is None else Path(path)

    def _own_output(self, header: Dataset) -> bool:
        if self.is_own_output is None:
            return False
        try:
            return bool(self.is_own_output(header))
        except Exception:
            log.exception("is_own_output failed; treating the instance as received from outside")
            return False


def _identity(header: Dataset, abstract_syntax: str, command_class: str, command_instance: str) -> InstanceIdentity:
    """The four UIDs that place an instance, checked against the negotiated context and the C-STORE command."""
    try:
        sop_class = str(header.get("SOPClassUID", "") or "").strip()
        raw_uids = {keyword: header.get(keyword) for keyword in
                    ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
    except Exception as exc:
        raise Refused(StoreStatus.CANNOT_UNDERSTAND, f"dataset cannot be parsed: {exc}") from None
    if not sop_class:
        raise Refused(StoreStatus.SOP_CLASS_MISMATCH, "SOP Class UID (0008,0016) is missing")
    if sop_class != abstract_syntax or sop_class != command_class:
        raise Refused(StoreStatus.SOP_CLASS_MISMATCH, f"SOP Class UID {sop_class[:64]!r} is not the negotiated "
                                                      f"abstract syntax {abstract_syntax}")
    try:
        uids = {keyword: require_uid(value, keyword) for keyword, value in raw_uids.items()}
    except InvalidUID as exc:
        raise Refused(StoreStatus.INVALID_UID, str(exc)) from None
    if uids["SOPInstanceUID"] != command_instance.strip():
        raise Refused(StoreStatus.INSTANCE_UID_MISMATCH,
                      f"SOP Instance UID {uids['SOPInstanceUID']} differs from the C-STORE Affected SOP Instance "
                      f"UID {command_instance[:64]!r}")
    return InstanceIdentity(uids["StudyInstanceUID"], uids["SeriesInstanceUID"], uids["SOPInstanceUID"], sop_class)


def _file_meta(identity: InstanceIdentity, transfer_syntax: str, calling_ae: str) -> FileMetaDataset:
    """File Meta Information (PS3.10 §7.1) for the dataset as received."""
    return received_file_meta(identity.sop_class_uid, identity.sop_instance_uid, transfer_syntax, calling_ae)


def _received_instance(header: Dataset, identity: InstanceIdentity, transfer_syntax: str, size_bytes: int,
                       path: Path, calling_ae: str, produced_by_us: bool) -> ReceivedInstance:
    return ReceivedInstance(
        study_uid=identity.study_uid, series_uid=identity.series_uid, sop_instance_uid=identity.sop_instance_uid,
        sop_class_uid=identity.sop_class_uid, transfer_syntax=transfer_syntax,
        modality=_text(header, "Modality"), patient_id=_text(header, "PatientID"),
        patient_name=_text(header, "PatientName"), study_date=_text(header, "StudyDate"),
        series_number=_integer(header, "SeriesNumber"), instance_number=_integer(header, "InstanceNumber"),
        series_description=_text(header, "SeriesDescription"), size_bytes=size_bytes, spool_path=str(path),
        calling_ae=calling_ae, produced_by_us=produced_by_us, received_at=utcnow(),
    )


def _text(header: Dataset, keyword: str) -> str:
    """A descriptive attribute; a malformed value must not cost the instance, so it becomes empty."""
    try:
        value = header.get(keyword)
    except Exception:
        return ""
    return "" if value is None else str(value).strip()


def _integer(header: Dataset, keyword: str) -> int | None:
    try:
        value = header.get(keyword)
        return None if value is None or value == "" else int(value)
    except Exception:
        return None


def _spool_refusal(error: SpoolError) -> Refused:
    if isinstance(error, SpoolFull):
        return Refused(StoreStatus.OUT_OF_RESOURCES, f"spool full: {error.strerror}")
    return Refused(StoreStatus.OUT_OF_RESOURCES, f"spool write failed: {error.strerror}")


def _response(status: StoreStatus, reason: str = "") -> Dataset:
    response = Dataset()
    response.Status = int(status)
    if reason:
        printable = "".join(c if " " <= c <= "~" and c != "\\" else "?" for c in reason)
        response.ErrorComment = printable[:_ERROR_COMMENT_MAX]
    return response

