"""The SQL Server CDC emulator, exercised through pg8000 in qmark paramstyle.

Reader and writer statements are in the T-SQL/PostgreSQL common subset (they are what a connector or
an application sends to SQL Server through pyodbc); only the administrative CALLs are PostgreSQL's.
"""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any

import pytest

from pacs_sync import dbapi
from pacs_sync.errors import ErrorCode, FatalError
from pacs_sync.sim.agent import CaptureAgent
from pacs_sync.stack import LocalStack
from tests.integration.conftest import EmulatedPacs

Q_MAX = "SELECT sys.fn_cdc_get_max_lsn()"
Q_MIN = "SELECT sys.fn_cdc_get_min_lsn(?)"
Q_MAX_TX = "SELECT MAX(start_lsn) FROM cdc.lsn_time_mapping WHERE tran_id <> ?"
ZERO_TRAN = b"\x00"
INSERT_PROPERTY = "INSERT INTO dbo.Property (PropertyID, ParcelNumber, City, Acreage) VALUES (?, ?, ?, ?)"
INSERT_OWNER = (
    "INSERT INTO dbo.PropertyOwner (PropertyOwnerID, PropertyID, OwnerName, OwnerType, OwnershipPercentage) "
    "VALUES (?, ?, ?, ?, ?)"
)


def scalar(conn: dbapi.Connection, sql: str, params: tuple[Any, ...] = ()) -> Any:
    cursor = conn.cursor()
    cursor.execute(sql, params)
    row = cursor.fetchone()
    conn.commit()
    return None if row is None else row[0]


def changes(
    conn: dbapi.Connection,
    ci: str = "dbo_Property",
    *,
    option: str = "all update old",
    columns: str = "propertyid, city",
    from_lsn: bytes | None = None,
    to_lsn: bytes | None = None,
) -> list[tuple[Any, ...]]:
    low = from_lsn if from_lsn is not None else scalar(conn, Q_MIN, (ci,))
    high = to_lsn if to_lsn is not None else scalar(conn, Q_MAX)
    cursor = conn.cursor()
    try:
        cursor.execute(
            f"SELECT __$start_lsn, __$seqval, __$operation, __$update_mask, {columns} "
            f"FROM cdc.fn_cdc_get_all_changes_{ci}(?, ?, N'{option}') "
            "ORDER BY __$start_lsn, __$seqval, __$operation",
            (low, high),
        )
        rows = [tuple(r) for r in cursor.fetchall()]
        conn.commit()
        return rows
    except dbapi.DatabaseError:
        conn.rollback()  # PostgreSQL aborts the transaction on error; harmless on SQL Server
        raise


def write(conn: dbapi.Connection, *statements: tuple[str, tuple[Any, ...]]) -> None:
    cursor = conn.cursor()
    for sql, params in statements:
        cursor.execute(sql, params)
    conn.commit()


def error_message(exc: BaseException) -> str:
    return str(exc.args[0]["M"]) if exc.args and isinstance(exc.args[0], dict) else str(exc)


# ---- visibility, LSNs, transactions ----


def test_changes_are_invisible_until_the_capture_job_runs(emulated_pacs: EmulatedPacs) -> None:
    writer, reader = emulated_pacs.writer(), emulated_pacs.reader()
    before = scalar(reader, Q_MAX)
    write(writer, (INSERT_PROPERTY, (1, "1-0001-000-0001-000", "Kennewick", 1.5)))
    assert scalar(reader, Q_MAX) == before
    emulated_pacs.admin.scan()
    rows = changes(reader)
    assert [(r[2], r[4], r[5]) for r in rows] == [(2, 1, "Kennewick")]


def test_lsns_are_10_bytes_and_a_transaction_shares_one_start_lsn(emulated_pacs: EmulatedPacs) -> None:
    writer, reader = emulated_pacs.writer(), emulated_pacs.reader()
    write(
        writer,
        (INSERT_PROPERTY, (1, "P-1", "Richland", 2)),
        (INSERT_PROPERTY, (2, "P-2", "Pasco", 3)),
        (INSERT_OWNER, (10, 1, "SMITH JOHN A", "Individual", 100)),
    )
    write(writer, (INSERT_PROPERTY, (3, "P-3", "Prosser", 1)))
    emulated_pacs.admin.scan()
    props = changes(reader)
    owners = changes(reader, "dbo_PropertyOwner", columns="propertyownerid, ownername")
    assert all(len(r[0]) == 10 and len(r[1]) == 10 for r in props + owners)
    first_tx = props[0][0]
    assert props[1][0] == first_tx == owners[0][0]  # multi-table transaction: one commit LSN
    assert props[0][1] < props[1][1] < owners[0][1] < first_tx  # seqval orders, and precedes the commit
    assert props[2][0] > first_tx
    mapping = scalar(reader, "SELECT COUNT(*) FROM cdc.lsn_time_mapping WHERE tran_id <> ?", (ZERO_TRAN,))
    assert mapping == 2


def test_rolled_back_work_never_appears(emulated_pacs: EmulatedPacs) -> None:
    writer, reader = emulated_pacs.writer(), emulated_pacs.reader()
    cursor = writer.cursor()
    cursor.execute(INSERT_PROPERTY, (7, "P-7", "Finley", 1))
    writer.rollback()
    write(writer, (INSERT_PROPERTY, (8, "P-8", "Finley", 1)))
    emulated_pacs.admin.scan()
    assert [r[4] for r in changes(reader)] == [8]


def test_update_gives_before_and_after_rows_with_the_update_mask(emulated_pacs: EmulatedPacs) -> None:
    writer, reader = emulated_pacs.writer(), emulated_pacs.reader()
    write(writer, (INSERT_PROPERTY, (1, "P-1", "Kennewick", 1)))
    write(
        writer, ("UPDATE dbo.Property SET City = ?, Acreage = ? WHERE PropertyID = ?", ("Richland", 2.5, 1))
    )
    emulated_pacs.admin.scan()
    rows = changes(reader)
    assert [(r[2], r[5]) for r in rows] == [(2, "Kennewick"), (3, "Kennewick"), (4, "Richland")]
    before, after = rows[1], rows[2]
    assert before[:2] == after[:2]  # same commit LSN and seqval
    # Columns: 1 propertyid 2 parcelnumber 3 address 4 city 5 state 6 zipcode 7 legal 8 acreage 9 yearbuilt
    assert after[3] == bytes([0x00, 0b1000_1000])
    assert rows[0][3] == bytes([0x01, 0xFF])  # inserts set every bit
    check = "SELECT sys.fn_cdc_has_column_changed(?, ?, ?)"
    assert scalar(reader, check, ("dbo_Property", "City", after[3])) is True
    assert scalar(reader, check, ("dbo_Property", "ZipCode", after[3])) is False
    assert [r[2] for r in changes(reader, option="all")] == [2, 4]


def test_primary_key_update_gives_delete_and_insert_sharing_one_seqval(emulated_pacs: EmulatedPacs) -> None:
    writer, reader = emulated_pacs.writer(), emulated_pacs.reader()
    write(writer, (INSERT_PROPERTY, (1, "P-1", "Kennewick", 1)))
    write(writer, ("UPDATE dbo.Property SET PropertyID = ? WHERE PropertyID = ?", (20, 1)))
    emulated_pacs.admin.scan()
    rows = changes(reader)[1:]
    assert [(r[2], r[4]) for r in rows] == [(1, 1), (2, 20)]
    assert rows[0][:2] == rows[1][:2]


@pytest.mark.parametrize(
    "case", ["from_below_min", "to_above_max", "from_after_to", "null_bound", "bad_option"]
)
def test_out_of_range_bounds_raise_sql_server_error_313(emulated_pacs: EmulatedPacs, case: str) -> None:
    writer, reader = emulated_pacs.writer(), emulated_pacs.reader()
    write(writer, (INSERT_PROPERTY, (1, "P-1", "Kennewick", 1)))
    write(writer, (INSERT_PROPERTY, (2, "P-2", "Kennewick", 1)))
    emulated_pacs.admin.scan()
    low, high = scalar(reader, Q_MIN, ("dbo_Property",)), scalar(reader, Q_MAX)
    decrement, increment = "SELECT sys.fn_cdc_decrement_lsn(?)", "SELECT sys.fn_cdc_increment_lsn(?)"
    bounds: dict[str, tuple[Any, Any, str]] = {
        "from_below_min": (scalar(reader, decrement, (low,)), high, "all"),
        "to_above_max": (low, scalar(reader, increment, (high,)), "all"),
        "from_after_to": (high, low, "all"),
        "null_bound": (None, high, "all"),
        "bad_option": (low, high, "everything"),
    }
    from_lsn, to_lsn, option = bounds[case]
    cursor = reader.cursor()
    with pytest.raises(dbapi.DatabaseError) as caught:
        cursor.execute(
            f"SELECT __$start_lsn FROM cdc.fn_cdc_get_all_changes_dbo_Property(?, ?, N'{option}')",
            (from_lsn, to_lsn),
        )
    reader.rollback()
    assert error_message(caught.value).startswith(
        "An insufficient number of arguments were supplied for the procedure or function "
        "cdc.fn_cdc_get_all_changes_"
    )
    assert caught.value.args[0]["C"] == "42000"
    assert changes(reader, from_lsn=low, to_lsn=high)  # the reader's connection is usable again


def test_concurrent_writers_committing_out_of_start_order(emulated_pacs: EmulatedPacs) -> None:
    first, second, reader = emulated_pacs.writer(), emulated_pacs.writer(), emulated_pacs.reader()
    first.cursor().execute(INSERT_PROPERTY, (1, "P-1", "Kennewick", 1))  # T1 writes first
    second.cursor().execute(INSERT_PROPERTY, (2, "P-2", "Pasco", 1))  # T2 writes second
    second.commit()  # ... and commits first
    first.commit()
    emulated_pacs.admin.scan()
    rows = changes(reader)
    assert [r[4] for r in rows] == [2, 1]  # commit order
    t2, t1 = rows
    assert t2[0] < t1[0]  # T2's commit LSN is lower
    assert t1[1] < t2[1]  # but T1's change happened first in the log


def test_many_concurrent_writers_get_commit_ordered_gapless_capture(emulated_pacs: EmulatedPacs) -> None:
    writers, per_writer = 6, 20
    committed: list[int] = []
    lock = threading.Lock()

    def work(w: int) -> None:
        conn = emulated_pacs.writer()
        try:
            for i in range(per_writer):
                pid = w * 1000 + i
                cursor = conn.cursor()
                cursor.execute(INSERT_PROPERTY, (pid, f"P-{pid}", "Kennewick", 1))
                cursor.execute(INSERT_OWNER, (pid, pid, "OWNER", "Individual", 100))
                with lock:  # the lock spans the commit, so `committed` is in commit order
                    conn.commit()
                    committed.append(pid)
        finally:
            conn.close()

    stop = threading.Event()
    agent = threading.Thread(target=CaptureAgent(lambda: _admin_conn(emulated_pacs)).run, args=(stop,))
    agent.start()
    threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    agent.join()
    emulated_pacs.admin.scan()
    reader = emulated_pacs.reader()
    props = changes(reader)
    owners = {r[4]: r[0] for r in changes(reader, "dbo_PropertyOwner", columns="propertyownerid, ownername")}
    assert [r[4] for r in props] == committed  # every transaction once, in commit order
    assert all(owners[r[4]] == r[0] for r in props)  # both rows of a transaction share its LSN
    assert len({r[0] for r in props}) == writers * per_writer


def _admin_conn(pacs: EmulatedPacs) -> dbapi.Connection:
    return dbapi.connect(**pacs.conn_kwargs, autocommit=True)


def test_capture_job_takes_at_most_maxtrans_whole_transactions(emulated_pacs: EmulatedPacs) -> None:
    writer, reader = emulated_pacs.writer(), emulated_pacs.reader()
    for i in range(5):
        write(
            writer,
            (INSERT_PROPERTY, (2 * i, f"P-{2 * i}", "X", 1)),
            (INSERT_PROPERTY, (2 * i + 1, "P", "X", 1)),
        )
    emulated_pacs.admin.scan(maxtrans=2, maxscans=1)
    assert len(changes(reader)) == 4
    emulated_pacs.admin.scan()
    assert len(changes(reader)) == 10


# ---- idle periods, retention, capture instances ----


def test_idle_scans_advance_lsn_time_mapping_with_dummy_rows(emulated_pacs: EmulatedPacs) -> None:
    writer, reader = emulated_pacs.writer(), emulated_pacs.reader()
    write(writer, (INSERT_PROPERTY, (1, "P-1", "Kennewick", 1)))
    emulated_pacs.admin.scan()
    last_tx = scalar(reader, Q_MAX_TX, (ZERO_TRAN,))
    emulated_pacs.admin.scan()
    emulated_pacs.admin.scan()
    assert scalar(reader, Q_MAX) > last_tx  # the high-water mark moved while idle
    assert scalar(reader, Q_MAX_TX, (ZERO_TRAN,)) == last_tx  # real transactions did not
    dummies = scalar(reader, "SELECT COUNT(*) FROM cdc.lsn_time_mapping WHERE tran_id = ?", (ZERO_TRAN,))
    assert dummies >= 2


def test_cleanup_honours_retention_and_moves_min_lsn(emulated_pacs: EmulatedPacs) -> None:
    admin, writer, reader = emulated_pacs.admin, emulated_pacs.writer(), emulated_pacs.reader()
    admin.configure_jobs(idle_heartbeat_s=3600)  # no dummy rows: only real transactions count here
    write(writer, (INSERT_PROPERTY, (1, "P-1", "Kennewick", 1)))
    admin.scan()
    saved_position = scalar(reader, Q_MAX)
    admin.cleanup()
    assert scalar(reader, Q_MIN, ("dbo_Property",)) < saved_position  # within retention: nothing moves
    admin.advance_clock(5 * 24 * 3600)  # five days later (retention: 3 days)
    write(writer, (INSERT_PROPERTY, (2, "P-2", "Pasco", 1)))
    admin.scan()
    admin.cleanup()
    new_min = scalar(reader, Q_MIN, ("dbo_Property",))
    assert new_min > saved_position  # a reader at saved_position has lost changes
    assert [r[4] for r in changes(reader)] == [2]
    with pytest.raises(dbapi.DatabaseError) as caught:
        changes(reader, from_lsn=saved_position)
    assert "An insufficient number of arguments" in error_message(caught.value)
    assert scalar(reader, "SELECT COUNT(*) FROM cdc.lsn_time_mapping WHERE start_lsn < ?", (new_min,)) == 0


def test_new_instance_has_null_min_lsn_until_the_capture_job_recognises_it(
    emulated_pacs: EmulatedPacs,
) -> None:
    admin, reader = emulated_pacs.admin, emulated_pacs.reader()
    assert scalar(reader, Q_MIN, ("dbo_NoSuchInstance",)) == bytes(10)
    admin.disable_table("Structure")
    admin.enable_table("Structure")
    assert scalar(reader, Q_MIN, ("dbo_Structure",)) is None
    admin.scan()
    assert len(scalar(reader, Q_MIN, ("dbo_Structure",))) == 10


def test_added_column_is_ignored_until_a_second_capture_instance(emulated_pacs: EmulatedPacs) -> None:
    admin, writer, reader = emulated_pacs.admin, emulated_pacs.writer(), emulated_pacs.reader()
    write(writer, (INSERT_PROPERTY, (1, "P-1", "Kennewick", 1)))
    write(writer, ("ALTER TABLE dbo.Property ADD ZoningCode varchar(10)", ()))
    write(writer, ("UPDATE dbo.Property SET ZoningCode = ? WHERE PropertyID = ?", ("R-1", 1)))
    admin.scan()
    admin.enable_table("Property", capture_instance="dbo_Property_v2")
    admin.scan()
    write(
        writer, ("UPDATE dbo.Property SET ZoningCode = ?, City = ? WHERE PropertyID = ?", ("C-2", "Pasco", 1))
    )
    admin.scan()
    old = changes(reader)
    assert [r[2] for r in old] == [2, 3, 4, 3, 4]  # the old instance keeps capturing, old shape
    assert old[2][3] == bytes([0x00, 0x00])  # a ZoningCode-only change touches no captured column
    new = changes(reader, "dbo_Property_v2", columns="propertyid, zoningcode")
    assert [(r[2], r[5]) for r in new] == [(3, "R-1"), (4, "C-2")]  # only changes after its start
    assert new[1][3] == bytes([0x02, 0x08])  # city (4) and zoningcode (10)
    start_v2 = scalar(reader, Q_MIN, ("dbo_Property_v2",))
    listed = reader.cursor()
    listed.execute(
        "SELECT capture_instance, start_lsn FROM cdc.change_tables WHERE start_lsn BETWEEN ? AND ?",
        (start_v2, scalar(reader, Q_MAX)),
    )
    assert [r[0] for r in listed.fetchall()] == ["dbo_Property_v2"]
    reader.commit()
    ddl = scalar(reader, "SELECT COUNT(*) FROM cdc.ddl_history WHERE ddl_command LIKE ?", ("%ZoningCode%",))
    assert ddl == 1
    with pytest.raises(FatalError, match="maximum of two capture instances"):
        admin.enable_table("Property", capture_instance="dbo_Property_v3")


# ---- permissions ----


def test_sync_login_reads_changes_but_cannot_write(emulated_pacs: EmulatedPacs) -> None:
    writer, reader = emulated_pacs.writer(), emulated_pacs.reader()
    write(writer, (INSERT_PROPERTY, (1, "P-1", "Kennewick", 1)))
    emulated_pacs.admin.scan()
    assert scalar(reader, "SELECT COUNT(*) FROM dbo.Property") == 1
    assert len(changes(reader)) == 1
    assert scalar(reader, "SELECT COUNT(*) FROM cdc.dbo_Property_CT") == 1  # direct mode reads too
    for sql, params in [
        (INSERT_PROPERTY, (2, "P-2", "X", 1)),
        ("UPDATE dbo.Property SET City = ? WHERE PropertyID = ?", ("X", 1)),
        ("DELETE FROM dbo.Property WHERE PropertyID = ?", (1,)),
        ("DELETE FROM cdc.lsn_time_mapping WHERE start_lsn < ?", (bytes(10),)),
    ]:
        with pytest.raises(dbapi.DatabaseError) as caught:
            reader.cursor().execute(sql, params)
        reader.rollback()
        assert caught.value.args[0]["C"] == "42501", sql


def test_missing_column_privilege_is_sql_server_error_229(
    emulated_pacs: EmulatedPacs, stack: LocalStack
) -> None:
    writer = emulated_pacs.writer()
    write(writer, (INSERT_PROPERTY, (1, "P-1", "Kennewick", 1)))
    emulated_pacs.admin.scan()
    reader = emulated_pacs.reader()
    # Column-level SELECT instead of table-level, without one captured column.
    write(
        writer,
        (f'REVOKE SELECT ON dbo.property FROM "{emulated_pacs.reader_user}"', ()),
        (f'GRANT SELECT (propertyid, parcelnumber) ON dbo.property TO "{emulated_pacs.reader_user}"', ()),
    )
    with pytest.raises(dbapi.DatabaseError) as caught:
        changes(reader, from_lsn=bytes(10), to_lsn=bytes(10))
    assert error_message(caught.value) == (
        "The SELECT permission was denied on the object 'fn_cdc_get_all_changes_dbo_Property', "
        f"database '{emulated_pacs.database}', schema 'cdc'."
    )
    assert scalar(reader, Q_MIN, ("dbo_Property",)) == bytes(10)  # unauthorised: zeros, no error


# ---- net changes, LSN and time functions, TRUNCATE ----


def test_net_changes_report_one_row_per_key(emulated_pacs: EmulatedPacs) -> None:
    writer, reader = emulated_pacs.writer(), emulated_pacs.reader()
    write(writer, (INSERT_PROPERTY, (1, "P-1", "Kennewick", 1)), (INSERT_PROPERTY, (2, "P-2", "Pasco", 1)))
    write(writer, (INSERT_PROPERTY, (3, "P-3", "Prosser", 1)))
    emulated_pacs.admin.scan()
    start = scalar(reader, Q_MAX)
    write(writer, ("UPDATE dbo.Property SET City = ? WHERE PropertyID = ?", ("Richland", 1)))
    write(writer, ("UPDATE dbo.Property SET Acreage = ? WHERE PropertyID = ?", (9, 1)))
    write(writer, ("DELETE FROM dbo.Property WHERE PropertyID = ?", (2,)))
    write(writer, (INSERT_PROPERTY, (4, "P-4", "Finley", 1)))
    write(writer, ("UPDATE dbo.Property SET City = ? WHERE PropertyID = ?", ("Plymouth", 4)))
    write(
        writer,
        (INSERT_PROPERTY, (5, "P-5", "Paterson", 1)),
        ("DELETE FROM dbo.Property WHERE PropertyID = ?", (5,)),
    )
    emulated_pacs.admin.scan()
    low = scalar(reader, "SELECT sys.fn_cdc_increment_lsn(?)", (start,))
    high = scalar(reader, Q_MAX)

    def net(option: str) -> dict[int, tuple[Any, ...]]:
        cursor = reader.cursor()
        cursor.execute(
            f"SELECT __$operation, __$update_mask, propertyid, city, acreage "
            f"FROM cdc.fn_cdc_get_net_changes_dbo_Property(?, ?, N'{option}') ORDER BY propertyid",
            (low, high),
        )
        rows = {r[2]: tuple(r) for r in cursor.fetchall()}
        reader.commit()
        return rows

    rows = net("all")
    assert set(rows) == {1, 2, 4}  # 3 unchanged in the window; 5 inserted and deleted: absent
    assert (rows[1][0], rows[1][3], float(rows[1][4])) == (4, "Richland", 9.0)
    assert rows[2][0] == 1
    assert (rows[4][0], rows[4][3]) == (2, "Plymouth")
    assert all(r[1] is None for r in rows.values())
    assert net("all with mask")[1][1] == bytes([0x00, 0b1000_1000])  # city and acreage, over both updates
    assert {k: r[0] for k, r in net("all with merge").items()} == {1: 5, 2: 1, 4: 5}


def test_lsn_arithmetic_and_time_mapping(emulated_pacs: EmulatedPacs) -> None:
    reader = emulated_pacs.reader()
    inc, dec = "SELECT sys.fn_cdc_increment_lsn(?)", "SELECT sys.fn_cdc_decrement_lsn(?)"
    lsn = bytes.fromhex("0000002a0000ffffffff")
    assert scalar(reader, inc, (lsn,)) == bytes.fromhex("0000002a000100000000")
    assert scalar(reader, dec, (bytes.fromhex("0000002a000100000000"),)) == lsn
    writer = emulated_pacs.writer()
    write(writer, (INSERT_PROPERTY, (1, "P-1", "Kennewick", 1)))
    emulated_pacs.admin.scan()
    commit_lsn = scalar(reader, Q_MAX_TX, (ZERO_TRAN,))
    commit_time = scalar(reader, "SELECT sys.fn_cdc_map_lsn_to_time(?)", (commit_lsn,))
    to_lsn = "SELECT sys.fn_cdc_map_time_to_lsn(?, ?)"
    assert scalar(reader, to_lsn, ("largest less than or equal", commit_time)) == commit_lsn
    assert scalar(reader, to_lsn, ("smallest greater than or equal", commit_time)) == commit_lsn
    assert scalar(reader, to_lsn, ("largest less than", commit_time)) != commit_lsn


def test_truncate_is_refused_like_msg_4711(emulated_pacs: EmulatedPacs) -> None:
    writer = emulated_pacs.writer()
    with pytest.raises(dbapi.DatabaseError) as caught:
        writer.cursor().execute("TRUNCATE TABLE dbo.Structure")
    writer.rollback()
    assert "enabled for Change Data Capture" in error_message(caught.value)


# ---- resuming inside a transaction (Debezium's paging predicate, in the common subset) ----


def test_keyset_paging_resumes_inside_a_transaction(emulated_pacs: EmulatedPacs) -> None:
    writer, reader = emulated_pacs.writer(), emulated_pacs.reader()
    write(writer, *[(INSERT_PROPERTY, (i, f"P-{i}", "Kennewick", 1)) for i in range(1, 4)])
    write(writer, ("UPDATE dbo.Property SET City = ?", ("Pasco",)))
    emulated_pacs.admin.scan()
    low, high = scalar(reader, Q_MIN, ("dbo_Property",)), scalar(reader, Q_MAX)
    page_sql = (
        "SELECT __$start_lsn, __$seqval, __$operation, propertyid "
        "FROM cdc.fn_cdc_get_all_changes_dbo_Property(?, ?, N'all update old') "
        "WHERE ((__$start_lsn = ? AND __$seqval = ? AND __$operation > ?) "
        "OR (__$start_lsn = ? AND __$seqval > ?) OR (__$start_lsn > ?)) AND __$start_lsn <= ? "
        "ORDER BY __$start_lsn, __$seqval, __$operation OFFSET 0 ROWS FETCH NEXT ? ROWS ONLY"
    )
    seen: list[tuple[Any, ...]] = []
    position = (bytes(10), bytes(10), 0)
    while True:
        lsn, seq, op = position
        cursor = reader.cursor()
        cursor.execute(page_sql, (low, high, lsn, seq, op, lsn, seq, lsn, high, 4))
        page = [tuple(r) for r in cursor.fetchall()]
        reader.commit()
        if not page:
            break
        seen.extend(page)
        position = page[-1][:3]
    assert seen == [(r[0], r[1], r[2], r[4]) for r in changes(reader, columns="propertyid")]
    assert [r[2] for r in seen] == [2, 2, 2, 3, 4, 3, 4, 3, 4]


# ---- the background agent, and DML applied by hand with psql ----


def test_capture_agent_makes_changes_visible_by_itself(emulated_pacs: EmulatedPacs) -> None:
    emulated_pacs.admin.configure_jobs(capture_interval_s=0.2)
    stop = threading.Event()
    agent = threading.Thread(target=CaptureAgent(lambda: _admin_conn(emulated_pacs)).run, args=(stop,))
    agent.start()
    try:
        write(emulated_pacs.writer(), (INSERT_PROPERTY, (1, "P-1", "Kennewick", 1)))
        reader = emulated_pacs.reader()
        deadline = time.monotonic() + 10

        def captured() -> list[tuple[Any, ...]]:
            # Before the agent's first scan there is no max LSN, and asking for changes up to NULL is
            # SQL Server's error 313, as it should be: wait for the scan instead.
            if scalar(reader, Q_MAX) is None:
                return []
            return changes(reader)

        while not captured() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [r[4] for r in changes(reader)] == [1]
    finally:
        stop.set()
        agent.join()


PSQL_SESSION = """
INSERT INTO dbo.Property (PropertyID, ParcelNumber, City) VALUES (100, 'P-100', 'Kennewick');
UPDATE dbo.Property SET City = 'West Richland' WHERE PropertyID = 100;
BEGIN;
INSERT INTO dbo.Property (PropertyID, ParcelNumber, City) VALUES (101, 'P-101', 'Benton City');
ROLLBACK;
BEGIN;
INSERT INTO dbo.Property (PropertyID, ParcelNumber, City) VALUES (102, 'P-102', 'Prosser');
INSERT INTO dbo.PropertyOwner (PropertyOwnerID, PropertyID, OwnerName) VALUES (500, 102, 'DOE JANE');
COMMIT;
UPDATE dbo.Property SET PropertyID = 103 WHERE PropertyID = 100;
DELETE FROM dbo.Property WHERE PropertyID = 103;
"""


def test_dml_applied_by_hand_with_psql_shows_up_after_a_scan(
    emulated_pacs: EmulatedPacs, stack: LocalStack
) -> None:
    kwargs = emulated_pacs.conn_kwargs
    result = subprocess.run(
        [
            "psql",
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-h",
            kwargs["host"],
            "-p",
            str(kwargs["port"]),
            "-U",
            kwargs["user"],
            "-d",
            kwargs["database"],
            "-f",
            "-",
        ],
        input=PSQL_SESSION,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PGPASSWORD": kwargs["password"], "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    subprocess.run(
        [
            "psql",
            "-q",
            "-h",
            kwargs["host"],
            "-p",
            str(kwargs["port"]),
            "-U",
            kwargs["user"],
            "-d",
            kwargs["database"],
            "-c",
            "CALL sys.sp_cdc_scan()",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"PGPASSWORD": kwargs["password"]},
    )
    reader = emulated_pacs.reader()
    rows = changes(reader)
    assert [(r[2], r[4], r[5]) for r in rows] == [
        (2, 100, "Kennewick"),
        (3, 100, "Kennewick"),
        (4, 100, "West Richland"),
        (2, 102, "Prosser"),
        (1, 100, "West Richland"),  # the key change: delete + insert sharing one seqval
        (2, 103, "West Richland"),
        (1, 103, "West Richland"),
    ]
    owners = changes(reader, "dbo_PropertyOwner", columns="propertyownerid, ownername")
    assert owners[0][0] == rows[3][0]  # the multi-table transaction shares its commit LSN
    assert len({r[0] for r in rows}) == 5


def test_translated_error_for_a_missing_capture_instance(emulated_pacs: EmulatedPacs) -> None:
    with pytest.raises(FatalError) as caught:
        emulated_pacs.admin.disable_table("NoSuchTable")
    assert caught.value.code is ErrorCode.SCHEMA_MISMATCH
    assert "does not exist" in str(caught.value)


def test_sql_files_alone_load_the_emulator_with_psql(stack: LocalStack, unique_name: str) -> None:
    from importlib import resources

    sql_dir = resources.files("pacs_sync.sim").joinpath("sql")
    kwargs = {"host": "127.0.0.1", "port": str(stack.settings.stack_postgres_port), "user": "postgres"}
    env = {"PGPASSWORD": stack.postgres.superuser_password(), "PATH": "/usr/bin:/bin"}
    base = [
        "psql",
        "-v",
        "ON_ERROR_STOP=1",
        "-q",
        "-h",
        kwargs["host"],
        "-p",
        kwargs["port"],
        "-U",
        kwargs["user"],
    ]
    subprocess.run(
        [*base, "-c", f'CREATE DATABASE "{unique_name}"'], env=env, check=True, capture_output=True
    )
    try:
        for name in ("cdc_emulator.sql", "pacs_schema.sql", "pacs_enable_cdc.sql"):
            done = subprocess.run(
                [*base, "-d", unique_name, "-f", str(sql_dir.joinpath(name))],
                env=env,
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, done.stderr
        session = (
            "INSERT INTO dbo.Property (PropertyID, ParcelNumber) VALUES (1, 'P-1');\n"
            "CALL sys.sp_cdc_scan();\n"
            "SELECT __$operation, propertyid FROM cdc.fn_cdc_get_all_changes_dbo_Property("
            "sys.fn_cdc_get_min_lsn('dbo_Property'), sys.fn_cdc_get_max_lsn(), N'all');\n"
        )
        out = subprocess.run(
            [*base, "-d", unique_name, "-tA", "-f", "-"],
            input=session,
            env=env,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == "2|1"
    finally:
        subprocess.run(
            [*base, "-c", f'DROP DATABASE IF EXISTS "{unique_name}" WITH (FORCE)'], env=env, check=False
        )
