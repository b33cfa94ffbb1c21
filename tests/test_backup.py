"""Backup on real Redis, real node workers and real COSprint processes."""

from __future__ import annotations

from cosprint import tables
from cosprint.snapshot import import_snapshot, list_snapshots
from workers.steps import is_verified
from workflows.backup import start_backup


def test_backup_leaves_a_verified_snapshot_on_every_bcs_equal_to_the_master(make_cluster, tmp_path):
    c = make_cluster(servers=1, bcs=2, clients=2, objects=2000)
    run_id, _ = start_backup(c.engine, "test", "proof")
    run = c.wait(run_id)
    assert run["state"] == "succeeded", run["error"]
    with tables.connect(c.domain.tables_url("srv1")) as conn:
        master_digest = tables.rows_digest(conn)
    for bcs in ("bcs1", "bcs2"):
        snaps = list_snapshots(c.domain.backup_area(bcs))
        assert len(snaps) == 1 and is_verified(snaps[0])
        restored = f"sqlite:///{tmp_path / (bcs + '.db')}"
        import_snapshot(snaps[0], restored, domain="demo")
        with tables.connect(restored) as conn:
            assert tables.rows_digest(conn) == master_digest
    steps = c.ledger.steps(run_id)
    assert all(s.state == "succeeded" for s in steps)
    assert {s.node for s in steps if s.name == "verify_snapshot"} == {"bcs1", "bcs2"}
    assert all(s.started_at and s.finished_at and s.outcome for s in steps)
    export = next(s for s in steps if s.name == "export_tables")
    assert export.node == "srv1" and export.outcome.startswith("exported 2000 rows of srv1")
    assert {r["bcs"] for r in c.ledger.catalog()} == {"bcs1", "bcs2"}
