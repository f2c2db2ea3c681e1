"""The node's job handler (dicom_ai.job): the pipeline handler's warm-up, its failures, the models' status, the
`queue.handler` hook, and the analysis ahead with the real pipeline on a brain MR study."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicom_ai.config import ConfigError, load_settings
from dicom_ai.job import AheadControl, AnalyseStudy, StudyJob, build_study_handler, load_handler, models_status
from dicom_ai.models.manifest import ModelSpec, read_manifest, upsert_model_spec
from dicom_ai.pipeline.routing import load_routing
from dicom_ai.store.database import Database
from dicom_ai.store.queue import JobQueue
from dicom_ai.store.records import JobState, ReceivedInstance
from dicom_ai.worker import Worker
from tests.support.queueing import STUDY, database, events, fast_queue, job_state, queued_study, record_study

__all__ = ["database"]  # the fixture


def test_default_handler_fails_visibly_when_the_study_cannot_be_read(database: Database, tmp_path: Path) -> None:
    """The served node's own handler (the pipeline) never marks a job done without having analysed it."""
    settings = load_settings(None, environ={})
    queue = fast_queue(database)
    job_id = queued_study(database, queue)  # its instances' spool files do not exist
    assert Worker(queue, build_study_handler(settings, database), threads=0).run_once()
    state, attempts, error = job_state(database, job_id)
    assert (state, attempts) == (JobState.FAILED, 1)
    assert "could be read from the spool" in error


def test_the_pipeline_handler_warms_up_its_routed_models_and_audits_them(database: Database, tmp_path: Path) -> None:
    settings = load_settings(None, environ={})
    handler = build_study_handler(settings, database)
    assert isinstance(handler, AnalyseStudy)
    try:
        handler.warm_up()
        assert handler.report_process is not None and handler.report_process.running
    finally:
        handler.close()
    assert not handler.report_process.running
    [ready] = events(database, "models.ready")
    shipped = {row["name"] for row in models_status(settings)["models"] if row["state"] == "available"}
    routed = handler.routing.model_names()
    assert {m["name"] for m in ready["models"]} == shipped & routed
    assert all(len(str(m["sha256"])) == 64 and m["version"] for m in ready["models"])
    assert set(ready["unavailable"]) == routed - shipped  # e.g. the brain/knee node, shipped without weights
    off = build_study_handler(load_settings(None, environ={"DICOM_AI_PIPELINE__WARM_UP": "false"}), database)
    off.warm_up()  # type: ignore[attr-defined]
    assert len(events(database, "models.ready")) == 1


def test_models_status_lists_every_node_of_the_routing_tree_with_its_models_state(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    upsert_model_spec(models_dir, ModelSpec("modality", "classify", "resnet18", ("CT", "MR"), 64, 1, 0.5, 0.25,
                                            "modality/weights.safetensors", "0" * 64, "1"))
    shutil.copyfile(Path("models/routing.toml"), models_dir / "routing.toml")
    status = models_status(load_settings(None, environ={"DICOM_AI_PIPELINE__MODELS_DIR": str(models_dir)}))
    routed = load_routing(models_dir / "routing.toml").model_names()
    assert status["available"] is False
    assert {row["name"] for row in status["models"]} == routed  # one count: what the tree uses
    states = {row["name"]: row["state"] for row in status["models"]}
    assert states.pop("modality") == "missing-weights" and set(states.values()) == {"invalid"}
    assert f"0 of the {len(routed)} model(s) the routing tree uses are usable" in status["detail"]
    assert "modality (missing-weights" in status["detail"] and "mri_region (invalid: not in" in status["detail"]
    tree = {(row["node"], row["role"], row["model"]) for row in status["tree"]}
    assert ("modality", "classifier", "modality") in tree and ("mri_region=brain", "segmenter", "lgg") in tree
    disabled = models_status(load_settings(None, environ={"DICOM_AI_PIPELINE__ENABLED": "false"}))
    assert disabled["available"] is False and "pipeline.enabled" in disabled["detail"]


def test_a_model_below_its_minimum_is_reported_disabled_unless_the_config_enables_it(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    shutil.copytree(Path("models"), models_dir)
    spec = read_manifest(models_dir)["fracatlas"]
    upsert_model_spec(models_dir, dataclasses.replace(spec, metrics={**spec.metrics, "mAP50": 0.05},
                                                      minimum={"mAP50": 0.35}))
    environ = {"DICOM_AI_PIPELINE__MODELS_DIR": str(models_dir)}
    status = models_status(load_settings(None, environ=environ))
    [row] = [r for r in status["models"] if r["name"] == "fracatlas"]
    assert row["state"] == "below-minimum" and "mAP50 0.050 < 0.35" in row["detail"]
    assert "fracatlas (below-minimum" in status["detail"]
    config = tmp_path / "config.toml"
    config.write_text(f'[pipeline]\nmodels_dir = "{models_dir}"\nenable_models_below_minimum = ["fracatlas"]\n')
    enabled = models_status(load_settings(config, environ={}))
    [row] = [r for r in enabled["models"] if r["name"] == "fracatlas"]
    assert row["state"] == "available" and "enabled by the config below its minimum" in row["detail"]


def test_handler_hook_loads_a_dotted_path_and_names_the_key_on_error() -> None:
    handler = load_handler("tests.store.handlers:always_fails")
    assert callable(handler)
    with pytest.raises(ConfigError, match="queue.handler"):
        load_handler("tests.store.handlers:no_such_handler")
    with pytest.raises(ConfigError, match="queue.handler"):
        load_handler("no_such_module_xyz:handler")


def record_files(database: Database, files: list[Path], calling_ae: str = "MRI") -> None:
    """Record DICOM files as received instances whose spool files they are (as the listener would)."""
    import pydicom

    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        database.record_instance(None, ReceivedInstance(
            study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID, sop_instance_uid=ds.SOPInstanceUID,
            sop_class_uid=ds.SOPClassUID, transfer_syntax=ds.file_meta.TransferSyntaxUID, modality=ds.Modality,
            patient_id=ds.PatientID, patient_name=str(ds.PatientName), study_date="", series_number=1,
            instance_number=int(ds.get("InstanceNumber") or 1), series_description="",
            size_bytes=path.stat().st_size, spool_path=str(path), calling_ae=calling_ae))


def without_clocks(value: object) -> object:
    """Findings as JSON without what differs between two runs on the same input (timestamps, timings)."""
    if isinstance(value, dict):
        return {k: without_clocks(v) for k, v in value.items() if k not in ("started_at", "finished_at", "timings")}
    if isinstance(value, list):
        return [without_clocks(v) for v in value]
    return value


def test_the_pipeline_handler_uses_its_analysis_ahead_only_while_the_instances_are_unchanged(
        database: Database, tmp_path: Path) -> None:
    import pydicom

    from tests.e2e.studies import brain_mr_study

    study = brain_mr_study(tmp_path / "mr", 20, 3)
    record_files(database, study.files)
    settings = load_settings(None, {("storage", "data_dir"): str(tmp_path / "data"),
                                    ("pipeline", "report_process"): False}, environ={})
    handler = build_study_handler(settings, database)
    assert isinstance(handler, AnalyseStudy)
    queue = JobQueue(database, settings.queue)
    assert queue.study_to_analyse_ahead(3600.0, claimant="test:1") is None  # not quiet for an hour
    receiving = queue.study_to_analyse_ahead(0.0, claimant="test:1")
    assert receiving is not None and receiving.study_uid == study.study_uid and len(receiving.instances) == 3
    assert queue.study_to_analyse_ahead(0.0, claimant="test:2") is None  # analysed ahead in this state already
    queue.complete_study(study.study_uid)
    claim = queue.claim("test")
    assert claim is not None
    job = StudyJob.from_claim(claim, database)

    go_on = AheadControl(keep_going=lambda: True, study_due=lambda: False)
    handler.analyse_ahead(receiving, go_on)
    handler(StudyJob(job_id=claim.job_id, study_uid=STUDY, attempt=1, max_attempts=1, calling_ae="MRI",
                     instances=(), _database=database))  # another study's job leaves the analysis ahead alone
    handler(job)  # uses the analysis ahead
    handler(job)  # nothing ahead: analyses itself
    handler.analyse_ahead(receiving, go_on)
    os.utime(study.files[1], ns=(time.time_ns(), study.files[1].stat().st_mtime_ns + 10**9))  # the file replaced
    handler(job)
    handler.analyse_ahead(receiving, AheadControl(keep_going=lambda: False, study_due=lambda: False))  # gave way
    handler(job)
    answers = iter([True])  # yes before the series, then no: a job of another study became due
    handler.analyse_ahead(receiving, AheadControl(keep_going=lambda: next(answers, False), study_due=lambda: False))
    handler(job)
    handler.analyse_ahead(receiving, AheadControl(keep_going=lambda: True, study_due=lambda: True))  # own job due
    handler(job)

    started = [(e["analysed_ahead"], e["reports_built_ahead"]) for e in events(database, "pipeline.started")]
    assert started == [(False, False), (True, True), (False, False), (False, False), (False, False), (True, False),
                       (True, False)]
    findings = [without_clocks(f) for f in events(database, "pipeline.findings")][1:]
    assert len(findings) == 6 and all(f == findings[0] for f in findings)
    reports = [e["objects"] for e in events(database, "report.built")][1:]
    assert len(reports) == 6 and reports[0] and all(r == reports[0] for r in reports)  # ahead = by the job
    series_found = findings[0]["series"]  # type: ignore[index]
    assert any(series["detections"] or series["segmentations"] for series in series_found)


def _analyse_to_outbox(database: Database, tmp_path: Path, files: list[Path]) -> tuple[str, list[Dataset]]:
    """Record `files` as one study, run its job with the real pipeline handler; (job state, objects queued)."""
    import pydicom

    record_files(database, files)
    settings = load_settings(None, {("storage", "data_dir"): str(tmp_path / "data"),
                                    ("pipeline", "report_process"): False,
                                    ("nodes", "PACS"): {"ae_title": "PACS", "host": "127.0.0.1", "port": 104},
                                    ("send", "to_sender"): False, ("send", "extra_destinations"): ["PACS"]},
                             environ={})
    queue = JobQueue(database, settings.queue)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    job_id = queue.complete_study(study_uid).job_id
    assert job_id is not None
    assert Worker(queue, build_study_handler(settings, database), threads=0).run_once()
    state, _, error = job_state(database, job_id)
    assert state == JobState.DONE, error
    return state, [pydicom.dcmread(path) for path in sorted((settings.storage.data_dir / "outbox").glob("*.dcm"))]


def _not_analysed(sr: Dataset) -> list[str]:
    """The TEXT values of the SR's "Instance not analysed" items (anywhere in its content tree)."""
    found = []
    for item in sr.ContentSequence:
        if item.get("ConceptNameCodeSequence") and item.ConceptNameCodeSequence[0].CodeValue == "NOTANAL":
            found.append(str(item.TextValue))
        if "ContentSequence" in item:
            found += _not_analysed(item)
    return found


SHARED_DICOM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"
SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.34"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def test_a_study_whose_only_image_cannot_be_decoded_is_done_with_a_report_saying_why(
        database: Database, tmp_path: Path) -> None:
    """12-bit JPEG Extended (WG04): no installed decoder reads it. Nothing to show, so no key image; the SR lists
    the instance and why, and the job is done instead of failing its attempts on re-decoding the pixels."""
    source = tmp_path / "spool" / "MR4_JPLY.dcm"
    source.parent.mkdir()
    shutil.copy(SHARED_DICOM / "wg04" / "JPLY" / "MR4_JPLY.dcm", source)
    _, outputs = _analyse_to_outbox(database, tmp_path, [source])
    assert [ds.SOPClassUID for ds in outputs] == [SR_STORAGE]
    [why] = _not_analysed(outputs[0])
    uid = outputs[0].CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0] \
        .ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    assert why.startswith(f"{uid}: pixels: cannot decode pixel data in JPEG Extended")
    [series] = events(database, "pipeline.series")
    assert [e["sop_instance_uid"] for e in series["errors"]] == [uid]  # type: ignore[index]


def test_a_mixed_study_gets_results_for_the_images_that_decode(database: Database, tmp_path: Path) -> None:
    """Three CT slices, the middle one truncated (a sender answered 0x0000 for it): the key image shows a slice
    that decodes, and the SR names the truncated one."""
    import pydicom

    folder = SHARED_DICOM / "tcia_ct_study" / "Lung_Dx-A0001" / "2.000000-5mm-40805"
    files = []
    for name in ("1-10.dcm", "1-11.dcm", "1-12.dcm"):
        files.append(tmp_path / name)
        shutil.copy(folder / name, files[-1])
    truncated = files[1].read_bytes()
    files[1].write_bytes(truncated[:len(truncated) - 5000])
    bad_uid = str(pydicom.dcmread(files[1], stop_before_pixels=True).SOPInstanceUID)
    _, outputs = _analyse_to_outbox(database, tmp_path, files)
    [sr] = [ds for ds in outputs if ds.SOPClassUID == SR_STORAGE and "complete" in ds.SeriesDescription]
    [why] = _not_analysed(sr)
    assert why.startswith(f"{bad_uid}: pixels:") and "less than expected" in why
    [key] = [ds for ds in outputs if ds.SOPClassUID == SECONDARY_CAPTURE]
    assert key.SourceImageSequence[0].ReferencedSOPInstanceUID != bad_uid
    [series] = events(database, "pipeline.series")
    assert series["route"][0]["label"] == "CT"  # type: ignore[index]


def _run_the_node_on(tmp_path: Path, studies: list[list[Path]], batch_jobs: int
                     ) -> tuple[Database, dict[str, int], dict[str, list[Dataset]]]:
    """Record STUDY (its spool files do not exist) and each study (files as their own spool files), queue their jobs
    in that order and run a worker with `queue.batch_jobs` until the queue is empty: (database, job id per study,
    objects queued in the outbox per study)."""
    import pydicom

    tmp_path.mkdir()
    database = Database(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    settings = load_settings(None, {("storage", "data_dir"): str(tmp_path / "data"),
                                    ("pipeline", "report_process"): False, ("queue", "batch_jobs"): batch_jobs,
                                    ("queue", "max_attempts"): 1,
                                    ("nodes", "PACS"): {"ae_title": "PACS", "host": "127.0.0.1", "port": 104},
                                    ("send", "to_sender"): False, ("send", "extra_destinations"): ["PACS"]},
                             environ={})
    queue = JobQueue(database, settings.queue)
    jobs = {}
    record_study(database)
    for files in studies:
        record_files(database, files)
    for study_uid in [STUDY, *(str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
                               for files in studies)]:
        job_id = queue.complete_study(study_uid).job_id
        assert job_id is not None
        jobs[study_uid] = job_id
    worker = Worker(queue, build_study_handler(settings, database), threads=0)
    runs = 0
    while worker.run_once():
        runs += 1
    assert runs == (len(jobs) + batch_jobs - 1) // batch_jobs  # batches of batch_jobs
    outbox: dict[str, list[Dataset]] = {}
    for path in sorted((settings.storage.data_dir / "outbox").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        outbox.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    return database, jobs, outbox


def _findings_of(database: Database, job_id: int) -> dict[str, object]:
    from sqlalchemy import select

    from dicom_ai.store.models import Event

    with database.session() as session:
        detail = session.scalars(select(Event.detail).where(Event.kind == "pipeline.findings",
                                                            Event.job_id == job_id)).one()
    return json.loads(detail)


def test_jobs_analysed_together_queue_the_results_each_gets_alone_and_fail_on_their_own(
        database: Database, tmp_path: Path) -> None:
    """`queue.batch_jobs` = 3 against 1 on the same studies: the same findings and the same DICOM objects (SR
    content items, SEG frames, key images), floats within the pipeline's tolerance; a study whose spool files are gone
    fails alone."""
    from tests.e2e.studies import brain_mr_study, hand_dx_study
    from tests.pipeline.test_run_studies import assert_close

    studies = [list(brain_mr_study(tmp_path / "lgg", 20, 3).files),
               list(brain_mr_study(tmp_path / "lgg2", 14, 2, "TCGA_CS_4941_19960909").files),
               list(hand_dx_study(tmp_path / "hand").files)]
    alone_db, alone_jobs, alone_out = _run_the_node_on(tmp_path / "alone", studies, batch_jobs=1)
    together_db, together_jobs, together_out = _run_the_node_on(tmp_path / "together", studies, batch_jobs=3)
    try:
        assert alone_jobs.keys() == together_jobs.keys()
        for study_uid, job_id in together_jobs.items():
            state, _, error = job_state(together_db, job_id)
            if study_uid == STUDY:
                assert state == JobState.FAILED and "could be read from the spool" in error
                continue
            assert state == JobState.DONE, error
            assert_close(_findings_of(together_db, job_id), _findings_of(alone_db, alone_jobs[study_uid]), study_uid)
            made_together, made_alone = together_out[study_uid], alone_out[study_uid]
            assert [ds.SOPInstanceUID for ds in made_together] == [ds.SOPInstanceUID for ds in made_alone]
            for ds_together, ds_alone in zip(made_together, made_alone):
                assert_close(ds_together.to_json_dict(), ds_alone.to_json_dict(), str(ds_alone.SOPInstanceUID),
                             ignore=CREATED_AT)
        assert together_out.keys() == alone_out.keys() == together_jobs.keys() - {STUDY}
        assert any(ds.Modality == "SEG" for objects in together_out.values() for ds in objects)
        started = [e["studies_analysed_together"] for e in events(together_db, "pipeline.started")]
        assert started == [3, 3, 3, 1]  # the study without readable files was in the first batch, and failed alone
    finally:
        alone_db.close()
        together_db.close()


# When each object was made (instance creation, series, content, secondary capture, contributing equipment), and the
# SEG's Dimension Organization UID, which highdicom makes up anew for every object.
CREATED_AT = frozenset({"00080012", "00080013", "00080021", "00080031", "00080023", "00080033", "0040A032",
                        "00181012", "00181014", "0018A002", "00209164"})
