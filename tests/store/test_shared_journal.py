"""Listeners on several hosts sharing one spool: each journals into its own folder; a running listener's journal is
never replayed by another process, a dead one's is replayed (by a starting listener or a monitor round) and
removed."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from dicom_ai.store.database import Database
from dicom_ai.store.recorder import InstanceRecorder, replay_orphan_journals
from dicom_ai.store.records import ReceivedInstance
from tests.store.test_recorder import recovered_events, rows, spooled

HOLD_LOCK = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
             "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(120)")


def test_a_running_listeners_journal_is_left_alone_and_a_dead_ones_is_replayed(
        database: Database, tmp_path: Path, instance_factory: Callable[..., ReceivedInstance]) -> None:
    root = tmp_path / "spool"
    other_host = InstanceRecorder(database, root)  # its journal, with an answered instance not committed yet
    other_host.journal_root.mkdir(parents=True)
    other_host.journal_dir.mkdir()
    answered = spooled(instance_factory(), root)
    other_host.submit(None, answered)
    other_host._close_segment()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, f"{other_host.journal_dir}.lock"],
                              stdout=subprocess.PIPE, text=True)  # the other listener's process, alive
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        starting = InstanceRecorder(database, root)
        starting.start()
        assert replay_orphan_journals(database, root) == 0
        assert rows(database) == {} and list(other_host.journal_dir.glob("*.jsonl"))

        holder.send_signal(signal.SIGKILL)  # the other listener dies: the kernel drops its lock
        holder.wait(10)
        assert replay_orphan_journals(database, root) == 1
        assert set(rows(database)) == {answered.sop_instance_uid}
        assert [event.sop_instance_uid for event in recovered_events(database)] == [answered.sop_instance_uid]
        assert not other_host.journal_dir.exists() and not Path(f"{other_host.journal_dir}.lock").exists()
        assert replay_orphan_journals(database, root) == 0
        starting.stop()
    finally:
        holder.kill()
        holder.wait(10)
