"""The overview chart's arrivals: instances and new studies per time bucket, counted by the database."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from dicom_ai.store.database import Database
from dicom_ai.store.models import Instance, Study, utcnow
from dicom_ai.store.overview import arrivals
from tests.support.queueing import OTHER_STUDY, STUDY, record_study


def test_instances_and_studies_land_in_their_buckets(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    record_study(database, STUDY, count=3)
    record_study(database, OTHER_STUDY, count=2)
    now = utcnow()
    with database.session() as session:  # the first study 45 minutes ago, the other one now
        session.execute(update(Instance).where(Instance.sop_instance_uid.like(f"{STUDY}.%"))
                        .values(received_at=now - timedelta(minutes=45)))
        session.execute(update(Study).where(Study.study_uid == STUDY)
                        .values(first_received_at=now - timedelta(minutes=45)))
    instances, studies = arrivals(database, now - timedelta(hours=1), 6)
    assert instances == [0, 3, 0, 0, 0, 2] and studies == [0, 1, 0, 0, 0, 1]
    assert arrivals(database, now - timedelta(minutes=5), 5) == ([0, 0, 0, 0, 2], [0, 0, 0, 0, 1])
    database.close()
