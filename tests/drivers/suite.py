#!/usr/bin/env python3
"""Client drivers as their users run them, against a Quarry node and against a
real PostgreSQL (tests/support/pg_server.py) in the same run: every case must
pass on both, so the suite pins PostgreSQL's behaviour rather than Quarry's.

    python3 tests/drivers/suite.py QUARRY_PG_PORT [CASE ...]

Each case gets a connection factory for one server and works in tables whose
names start with its own prefix. Prints one line per case and server; exits
non-zero on the first failure.
"""
import os
import sys
import traceback

import psycopg

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
from pg_server import Server  # noqa: E402

CASES = {}


def case(function):
    CASES[function.__name__] = function
    return function


def fails(conn, sql, error, why):
    """Runs `sql` on `conn`, which must fail with `error` (a psycopg error
    class); `why` says what succeeding would mean."""
    try:
        conn.execute(sql)
    except error:
        return
    raise AssertionError(why)


@case
def psycopg_nested_transactions(connect):
    """psycopg's nested `conn.transaction()` blocks are savepoints
    (SAVEPOINT "_pg3_1" ... ROLLBACK TO / RELEASE): a failure inside one is
    undone and the outer transaction goes on, in the status psycopg expects."""
    with connect() as conn:
        conn.execute("CREATE TABLE nested (id INT NOT NULL)")
        with conn.transaction():
            conn.execute("INSERT INTO nested VALUES (1)")
            try:
                with conn.transaction():
                    conn.execute("INSERT INTO nested VALUES (2)")
                    conn.execute("SELECT * FROM nested_missing")
            except psycopg.errors.UndefinedTable:
                pass
            status = conn.info.transaction_status
            assert status == psycopg.pq.TransactionStatus.INTRANS, status
            with conn.transaction():
                conn.execute("INSERT INTO nested VALUES (3)")
            conn.execute("INSERT INTO nested VALUES (4)")
        rows = conn.execute("SELECT id FROM nested ORDER BY id").fetchall()
        assert rows == [(1,), (3,), (4,)], rows
        # A savepoint block left by an exception of the application's own
        # (no failed statement) is rolled back too.
        try:
            with conn.transaction():
                conn.execute("INSERT INTO nested VALUES (5)")
                with conn.transaction():
                    conn.execute("DELETE FROM nested")
                    raise KeyError("application error")
        except KeyError:
            pass
        rows = conn.execute("SELECT count(*) FROM nested").fetchone()
        assert rows == (3,), rows


@case
def psycopg_savepoint_errors(connect):
    """Savepoint statements outside a transaction block, and an unknown name
    inside one, fail with PostgreSQL's SQLSTATEs; the block is then failed
    until ROLLBACK TO a savepoint that exists."""
    with connect() as conn:
        for statement in ["SAVEPOINT a", "RELEASE SAVEPOINT a", "ROLLBACK TO SAVEPOINT a"]:
            fails(conn, statement, psycopg.errors.NoActiveSqlTransaction,
                  f"{statement} outside a block succeeded")
        conn.execute("BEGIN")
        conn.execute("SAVEPOINT a")
        fails(conn, "RELEASE SAVEPOINT b", psycopg.errors.InvalidSavepointSpecification,
              "RELEASE of an unknown savepoint succeeded")
        status = conn.info.transaction_status
        assert status == psycopg.pq.TransactionStatus.INERROR, status
        conn.execute("ROLLBACK TO SAVEPOINT a")
        status = conn.info.transaction_status
        assert status == psycopg.pq.TransactionStatus.INTRANS, status
        assert conn.execute("SELECT 1").fetchone() == (1,)
        conn.execute("COMMIT")
        status = conn.info.transaction_status
        assert status == psycopg.pq.TransactionStatus.IDLE, status


@case
def psycopg_copy_to_rows(connect):
    """COPY ... TO STDOUT sends one CopyData message per row (and one for a
    CSV header), which psycopg's `Copy.rows()` and message iteration rely on."""
    query = "SELECT * FROM (VALUES (1, 'a b'), (2, NULL), (3, 'c')) AS v(id, name) ORDER BY id"
    with connect() as conn:
        cur = conn.cursor()
        with cur.copy(f"COPY ({query}) TO STDOUT") as copy:
            rows = list(copy.rows())
        assert rows == [("1", "a b"), ("2", None), ("3", "c")], rows
        with cur.copy(f"COPY ({query}) TO STDOUT (FORMAT csv, HEADER)") as copy:
            messages = [bytes(data) for data in copy]
        assert messages == [b"id,name\n", b"1,a b\n", b"2,\n", b"3,c\n"], messages


@case
def psycopg_named_cursor(connect):
    """psycopg's named (server-side) cursors: DECLARE, Describe of the cursor's
    portal, FETCH FORWARD itersize at a time, CLOSE; WITH HOLD outlives the
    transaction; a cursor without it needs a transaction block (25P01)."""
    with connect() as conn:
        conn.execute("CREATE TABLE curs (id INT NOT NULL)")
        values = ", ".join(f"({i})" for i in range(1, 2501))
        conn.execute(f"INSERT INTO curs VALUES {values}")
        with conn.transaction():
            with conn.cursor(name="paged") as cur:
                cur.itersize = 1000
                cur.execute("SELECT id FROM curs WHERE id > %s ORDER BY id", (500,))
                assert [d.name for d in cur.description] == ["id"], cur.description
                first = cur.fetchone()
                assert first == (501,), first
                some = cur.fetchmany(10)
                assert some == [(i,) for i in range(502, 512)], some
                rest = cur.fetchall()
                assert len(rest) == 2500 - 511 and rest[-1] == (2500,), len(rest)
        with conn.cursor(name="held", withhold=True) as cur:
            cur.execute("SELECT id FROM curs ORDER BY id")
            assert cur.fetchmany(3) == [(1,), (2,), (3,)]
            assert cur.fetchone() == (4,)
        try:
            with conn.cursor(name="outside") as cur:
                cur.execute("SELECT id FROM curs")
            raise AssertionError("a cursor without hold outside a block was declared")
        except psycopg.errors.NoActiveSqlTransaction:
            pass


@case
def sql_cursors(connect):
    """DECLARE / FETCH / CLOSE as SQL statements, and their errors."""
    with connect() as conn:
        conn.execute("CREATE TABLE sqlcurs (id INT NOT NULL)")
        conn.execute("INSERT INTO sqlcurs VALUES (1), (2), (3), (4), (5)")
        conn.execute("BEGIN")
        conn.execute("DECLARE c NO SCROLL CURSOR FOR SELECT id FROM sqlcurs ORDER BY id")
        assert conn.execute("FETCH 2 FROM c").fetchall() == [(1,), (2,)]
        assert conn.execute("FETCH NEXT FROM c").fetchall() == [(3,)]
        assert conn.execute("FETCH FORWARD ALL FROM c").fetchall() == [(4,), (5,)]
        assert conn.execute("FETCH c").fetchall() == []
        fails(conn, "DECLARE c CURSOR FOR SELECT 1", psycopg.errors.DuplicateCursor,
              "a second cursor c was declared")
        conn.execute("ROLLBACK")
        conn.execute("BEGIN")
        conn.execute("DECLARE d NO SCROLL CURSOR FOR SELECT id FROM sqlcurs ORDER BY id")
        fails(conn, "FETCH BACKWARD 1 FROM d", psycopg.errors.ObjectNotInPrerequisiteState,
              "a NO SCROLL cursor went backward")
        conn.execute("ROLLBACK")
        conn.execute("BEGIN")
        conn.execute("DECLARE d NO SCROLL CURSOR FOR SELECT id FROM sqlcurs ORDER BY id")
        fails(conn, "FETCH 1.5 FROM d", psycopg.errors.SyntaxError,
              "a FETCH count that is not a whole number")
        conn.execute("ROLLBACK")
        conn.execute("BEGIN")
        conn.execute("DECLARE e CURSOR FOR SELECT id FROM sqlcurs")
        conn.execute("CLOSE e")
        fails(conn, "FETCH 1 FROM e", psycopg.errors.InvalidCursorName,
              "a closed cursor fetched")
        conn.execute("ROLLBACK")
        # A BINARY cursor's rows come in binary format over the simple query
        # protocol; over the extended one, Bind's result format decides.
        conn.execute("BEGIN")
        conn.execute("DECLARE b BINARY CURSOR FOR SELECT id, 'x' || id::text AS t "
                     "FROM sqlcurs ORDER BY id")
        fetched = conn.pgconn.exec_(b"FETCH 2 FROM b")
        assert fetched.status == psycopg.pq.ExecStatus.TUPLES_OK, fetched.error_message
        assert [fetched.fformat(0), fetched.fformat(1)] == [1, 1]
        assert [fetched.get_value(r, c) for r in range(2) for c in range(2)] == \
            [b"\x00\x00\x00\x01", b"x1", b"\x00\x00\x00\x02", b"x2"]
        assert conn.execute("FETCH 1 FROM b").fetchall() == [(3, "x3")]
        conn.execute("ROLLBACK")
        # The end of the block closes a cursor without WITH HOLD.
        conn.execute("BEGIN")
        conn.execute("DECLARE f CURSOR FOR SELECT id FROM sqlcurs")
        conn.execute("COMMIT")
        fails(conn, "FETCH 1 FROM f", psycopg.errors.InvalidCursorName,
              "a cursor outlived its block")


@case
def scroll_cursors(connect):
    """SCROLL cursors in every direction, MOVE and its counts, and the
    positions before the first and after the last row."""
    with connect() as conn:
        conn.execute("CREATE TABLE scrollcurs (id INT NOT NULL)")
        conn.execute("INSERT INTO scrollcurs SELECT * FROM generate_series(1, 10)")
        conn.execute("BEGIN")
        conn.execute("DECLARE s SCROLL CURSOR FOR SELECT id FROM scrollcurs ORDER BY id")

        def fetch(direction):
            return [r[0] for r in conn.execute(f"FETCH {direction} FROM s").fetchall()]

        def move(direction):
            return conn.execute(f"MOVE {direction} IN s").statusmessage

        assert fetch("3") == [1, 2, 3]
        assert fetch("PRIOR") == [2]
        assert fetch("BACKWARD 5") == [1]
        assert fetch("NEXT") == [1]
        assert fetch("RELATIVE 0") == [1]
        assert fetch("ABSOLUTE 7") == [7]
        assert fetch("RELATIVE -2") == [5]
        assert fetch("BACKWARD 2") == [4, 3]
        assert fetch("FORWARD 0") == [3]
        assert fetch("LAST") == [10]
        assert fetch("NEXT") == []
        assert fetch("PRIOR") == [10]
        assert fetch("ABSOLUTE -3") == [8]
        assert fetch("FIRST") == [1]
        assert fetch("ABSOLUTE 11") == []
        assert fetch("BACKWARD ALL") == [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]
        assert fetch("-2") == []
        assert fetch("ABSOLUTE 0") == []
        assert fetch("ALL") == list(range(1, 11))
        assert fetch("ABSOLUTE -20") == []
        assert fetch("NEXT") == [1]
        assert move("FORWARD 4") == "MOVE 4"
        assert fetch("NEXT") == [6]
        assert move("ALL") == "MOVE 4"
        assert move("NEXT") == "MOVE 0"
        assert move("BACKWARD 3") == "MOVE 3"
        assert fetch("NEXT") == [9]
        assert move("ABSOLUTE 2") == "MOVE 1"
        assert move("RELATIVE 50") == "MOVE 0"
        assert fetch("PRIOR") == [10]
        conn.execute("COMMIT")
        # A NO SCROLL cursor may MOVE and FETCH forward only, not even to
        # read its current row again.
        conn.execute("BEGIN")
        conn.execute("DECLARE n NO SCROLL CURSOR FOR SELECT id FROM scrollcurs ORDER BY id")
        assert conn.execute("MOVE 3 IN n").statusmessage == "MOVE 3"
        assert conn.execute("FETCH ABSOLUTE 5 FROM n").fetchall() == [(5,)]
        assert conn.execute("MOVE n").statusmessage == "MOVE 1"
        assert conn.execute("FETCH n").fetchall() == [(7,)]
        fails(conn, "FETCH ABSOLUTE 2 FROM n", psycopg.errors.ObjectNotInPrerequisiteState,
              "a NO SCROLL cursor went back to an earlier row")
        conn.execute("ROLLBACK")
        conn.execute("BEGIN")
        conn.execute("DECLARE n NO SCROLL CURSOR FOR SELECT id FROM scrollcurs ORDER BY id")
        fails(conn, "MOVE BACKWARD 1 IN n", psycopg.errors.ObjectNotInPrerequisiteState,
              "a NO SCROLL cursor moved backward")
        conn.execute("ROLLBACK")
        conn.execute("BEGIN")
        conn.execute("DECLARE n NO SCROLL CURSOR FOR SELECT id FROM scrollcurs ORDER BY id")
        conn.execute("FETCH 2 FROM n")
        fails(conn, "FETCH RELATIVE 0 FROM n", psycopg.errors.ObjectNotInPrerequisiteState,
              "a NO SCROLL cursor read its current row again")
        conn.execute("ROLLBACK")
        fails(conn, "MOVE NEXT IN nowhere", psycopg.errors.InvalidCursorName,
              "an undeclared cursor moved")


@case
def information_schema_constraints(connect):
    """The information_schema views ORMs read keys from (Sequelize and
    TypeORM join table_constraints, key_column_usage and
    constraint_column_usage), for a composite UNIQUE and a foreign key
    that references it in another column order."""
    import re

    with connect() as conn:
        conn.execute("CREATE TABLE isc_parent (id INT PRIMARY KEY, code TEXT NOT NULL, "
                     "UNIQUE (code, id))")
        conn.execute("CREATE TABLE isc_child (id INT, pid INT, pcode TEXT, "
                     "FOREIGN KEY (pcode, pid) REFERENCES isc_parent (code, id))")

        def rows(sql):
            return sorted(tuple(r) for r in conn.execute(sql).fetchall())

        keys = rows("SELECT constraint_name, table_name, constraint_type, is_deferrable, "
                    "initially_deferred FROM information_schema.table_constraints "
                    "WHERE table_name LIKE 'isc_%' AND constraint_type <> 'CHECK'")
        assert keys == [
            ("isc_child_pcode_pid_fkey", "isc_child", "FOREIGN KEY", "NO", "NO"),
            ("isc_parent_code_id_key", "isc_parent", "UNIQUE", "NO", "NO"),
            ("isc_parent_pkey", "isc_parent", "PRIMARY KEY", "NO", "NO"),
        ], keys
        # A column's NOT NULL is a CHECK named <schema>_<table>_<column>_not_null.
        checks = rows("SELECT tc.constraint_name, cc.check_clause "
                      "FROM information_schema.table_constraints tc "
                      "JOIN information_schema.check_constraints cc "
                      "ON cc.constraint_name = tc.constraint_name "
                      "WHERE tc.table_name = 'isc_parent' AND tc.constraint_type = 'CHECK'")
        assert sorted(c for _, c in checks) == ["code IS NOT NULL", "id IS NOT NULL"], checks
        assert all(re.fullmatch(r"\d+_\d+_\d+_not_null", n) for n, _ in checks), checks
        usage = rows("SELECT constraint_name, column_name, ordinal_position, "
                     "position_in_unique_constraint FROM information_schema.key_column_usage "
                     "WHERE table_name LIKE 'isc_%'")
        assert usage == [
            ("isc_child_pcode_pid_fkey", "pcode", 1, 1),
            ("isc_child_pcode_pid_fkey", "pid", 2, 2),
            ("isc_parent_code_id_key", "code", 1, None),
            ("isc_parent_code_id_key", "id", 2, None),
            ("isc_parent_pkey", "id", 1, None),
        ], usage
        referential = rows("SELECT constraint_name, unique_constraint_name, match_option, "
                           "update_rule, delete_rule "
                           "FROM information_schema.referential_constraints "
                           "WHERE constraint_name LIKE 'isc_%'")
        assert referential == [("isc_child_pcode_pid_fkey", "isc_parent_code_id_key", "NONE",
                                 "NO ACTION", "NO ACTION")], referential
        # Sequelize's foreign key query.
        references = rows(
            "SELECT DISTINCT tc.constraint_name, tc.table_name, kcu.column_name, "
            "ccu.table_name AS referenced_table_name, ccu.column_name AS referenced_column_name "
            "FROM information_schema.table_constraints AS tc "
            "JOIN information_schema.key_column_usage AS kcu "
            "ON tc.constraint_name = kcu.constraint_name "
            "JOIN information_schema.constraint_column_usage AS ccu "
            "ON ccu.constraint_name = tc.constraint_name "
            "WHERE tc.constraint_type = 'FOREIGN KEY' AND tc.table_name = 'isc_child'")
        assert references == sorted(
            ("isc_child_pcode_pid_fkey", "isc_child", column, "isc_parent", referenced)
            for column in ("pcode", "pid") for referenced in ("code", "id")), references


@case
def bi_tool_introspection(connect):
    """The catalog queries Grafana's PostgreSQL data source, Metabase and
    DBeaver send when they connect, list schemas, tables and columns, and
    chart a table (their query texts)."""
    with connect() as conn:
        conn.execute("CREATE TABLE bi_metrics (ts TIMESTAMPTZ NOT NULL, v FLOAT8, host TEXT, "
                     "price NUMERIC(10, 2))")
        conn.execute("INSERT INTO bi_metrics VALUES ('2026-01-01 00:00:10+00', 1.5, 'a', 1), "
                     "('2026-01-01 00:00:50+00', 2.5, 'a', 2), "
                     "('2026-01-01 00:01:10+00', 4.0, 'b', 3)")

        def rows(sql):
            return [tuple(r) for r in conn.execute(sql).fetchall()]

        # Grafana: version and TimescaleDB checks, the column list of the
        # query editor, a $__timeGroup(ts, 1m) panel query as it expands.
        assert rows("SELECT current_setting('server_version_num')::int/100 as version")[0][0] \
            >= 1500
        assert rows("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'") == []
        columns = rows("SELECT quote_ident(column_name) AS \"column\", data_type AS \"type\" "
                       "FROM information_schema.columns WHERE quote_ident(table_schema) = 'public' "
                       "AND quote_ident(table_name) = 'bi_metrics' ORDER BY ordinal_position")
        assert columns == [("ts", "timestamp with time zone"), ("v", "double precision"),
                           ("host", "text"), ("price", "numeric")], columns
        details = rows("SELECT column_name, is_nullable, udt_name, numeric_precision, "
                       "numeric_scale, datetime_precision FROM information_schema.columns "
                       "WHERE table_name = 'bi_metrics' ORDER BY ordinal_position")
        assert details == [("ts", "NO", "timestamptz", None, None, 6),
                           ("v", "YES", "float8", 53, None, None),
                           ("host", "YES", "text", None, None, None),
                           ("price", "YES", "numeric", 10, 2, None)], details
        panel = rows("SELECT floor(extract(epoch from ts)/60)*60 AS \"time\", avg(v) AS \"v\" "
                     "FROM bi_metrics WHERE ts BETWEEN '2026-01-01T00:00:00Z' AND "
                     "'2026-01-01T01:00:00Z' GROUP BY 1 ORDER BY 1")
        assert [(float(t), v) for t, v in panel] == [(1767225600.0, 2.0), (1767225660.0, 4.0)], \
            panel
        # Metabase: schemas and tables it may read, and the search path.
        schemas = [r[0] for r in rows(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('information_schema') "
            "AND nspname NOT LIKE 'pg_%' AND has_schema_privilege(nspname, 'USAGE')")]
        assert "public" in schemas, schemas
        tables = [r[0] for r in rows(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "
            "AND has_table_privilege(c.oid, 'SELECT') AND pg_has_role(c.relowner, 'USAGE')")]
        assert "bi_metrics" in tables, tables
        assert rows("SELECT current_setting('search_path')")[0][0]
        assert rows("SELECT current_setting('no_such.setting', true)") == [(None,)]
        # DBeaver: session facts, settings, the database, tables with their
        # descriptions, and columns with defaults.
        assert rows("SELECT current_schema(), session_user")[0][0] == "public"
        assert rows("SELECT setting FROM pg_catalog.pg_settings "
                    "WHERE name = 'standard_conforming_strings'") == [("on",)]
        assert len(rows(f"SELECT db.oid, db.datname FROM pg_catalog.pg_database db "
                        f"WHERE datname = '{conn.info.dbname}'")) == 1
        described = rows(
            "SELECT c.relname, d.description, CASE WHEN c.relkind = 'p' THEN true ELSE false END "
            "FROM pg_catalog.pg_class c "
            "LEFT OUTER JOIN pg_catalog.pg_inherits i ON i.inhrelid = c.oid "
            "LEFT OUTER JOIN pg_catalog.pg_description d ON d.objoid = c.oid "
            "AND d.objsubid = 0 AND d.classoid = 'pg_class'::regclass "
            "WHERE c.relname = 'bi_metrics' AND c.relkind NOT IN ('i', 'I', 'c')")
        assert described == [("bi_metrics", None, False)], described
        attributes = rows(
            "SELECT a.attname, pg_catalog.pg_get_expr(ad.adbin, ad.adrelid, true), "
            "dsc.description FROM pg_catalog.pg_attribute a "
            "INNER JOIN pg_catalog.pg_class c ON a.attrelid = c.oid "
            "LEFT OUTER JOIN pg_catalog.pg_attrdef ad ON a.attrelid = ad.adrelid "
            "AND a.attnum = ad.adnum "
            "LEFT OUTER JOIN pg_catalog.pg_description dsc ON c.oid = dsc.objoid "
            "AND a.attnum = dsc.objsubid "
            "WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relname = 'bi_metrics' "
            "ORDER BY a.attnum")
        assert attributes == [("ts", None, None), ("v", None, None), ("host", None, None),
                              ("price", None, None)], attributes
        # pg_dump's and drivers' way of setting the search path.
        assert rows("SELECT pg_catalog.set_config('search_path', 'public', false)") == \
            [("public",)]


@case
def psycopg_type_info(connect):
    """psycopg's TypeInfo.fetch (what SQLAlchemy's psycopg dialect runs when
    it connects) looks types up with to_regtype: a known type's oid, none
    for a type the server lacks."""
    from psycopg.types import TypeInfo

    with connect() as conn:
        info = TypeInfo.fetch(conn, "int4")
        assert info is not None and info.oid == 23, info
        assert TypeInfo.fetch(conn, "hstore") is None
        row = conn.execute(
            "SELECT to_regtype('text') IS NOT NULL, to_regtype('no_such_type') IS NULL"
        ).fetchone()
        assert row == (True, True), row


@case
def sqlalchemy_reflects_columns(connect):
    """SQLAlchemy 2 over psycopg: it connects (its dialect's first queries),
    lists tables and reflects a table's columns."""
    import sqlalchemy as sa

    with connect() as conn:
        conn.execute("CREATE TABLE sa_items (id INT NOT NULL, name TEXT, price NUMERIC(10, 2))")
        conn.execute("INSERT INTO sa_items VALUES (1, 'one', 1.50)")
        info = conn.info
        url = sa.engine.URL.create(
            "postgresql+psycopg", username=info.user, host=info.host, port=info.port,
            database=info.dbname)
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        assert "sa_items" in inspector.get_table_names(), inspector.get_table_names()
        columns = {c["name"]: c for c in inspector.get_columns("sa_items")}
        assert list(columns) == ["id", "name", "price"], columns
        assert isinstance(columns["id"]["type"], sa.Integer), columns["id"]
        assert columns["id"]["nullable"] is False and columns["name"]["nullable"] is True
        assert isinstance(columns["price"]["type"], sa.Numeric), columns["price"]
        # Keys, indexes and comments: none declared, so each reflects empty.
        assert inspector.get_pk_constraint("sa_items")["constrained_columns"] == []
        assert inspector.get_indexes("sa_items") == []
        assert inspector.get_unique_constraints("sa_items") == []
        assert inspector.get_foreign_keys("sa_items") == []
        assert inspector.get_table_comment("sa_items")["text"] is None
        # A Table reflected whole (what applications and pandas do).
        table = sa.Table("sa_items", sa.MetaData(), autoload_with=engine)
        assert [c.name for c in table.columns] == ["id", "name", "price"], table.columns
        # Declared keys and comments, reflected as PostgreSQL reports them.
        with connect() as conn:
            conn.execute("CREATE TABLE sa_parent (id BIGINT PRIMARY KEY, code TEXT NOT NULL, "
                         "CONSTRAINT sa_parent_code UNIQUE (code))")
            conn.execute("CREATE TABLE sa_child (id INT NOT NULL PRIMARY KEY, "
                         "parent_id BIGINT REFERENCES sa_parent (id))")
            conn.execute("COMMENT ON TABLE sa_parent IS 'the parents'")
            conn.execute("COMMENT ON COLUMN sa_parent.code IS 'a code'")
        inspector = sa.inspect(engine)
        pk = inspector.get_pk_constraint("sa_parent")
        assert pk["constrained_columns"] == ["id"] and pk["name"] == "sa_parent_pkey", pk
        unique = inspector.get_unique_constraints("sa_parent")
        assert [(u["name"], u["column_names"]) for u in unique] == [("sa_parent_code", ["code"])]
        fks = inspector.get_foreign_keys("sa_child")
        assert [(f["name"], f["constrained_columns"], f["referred_table"], f["referred_columns"])
                for f in fks] == [("sa_child_parent_id_fkey", ["parent_id"], "sa_parent", ["id"])], fks
        assert inspector.get_table_comment("sa_parent")["text"] == "the parents"
        columns = {c["name"]: c for c in inspector.get_columns("sa_parent")}
        assert columns["code"]["comment"] == "a code", columns["code"]
        with engine.connect() as c:
            rows = c.execute(sa.text("SELECT id, name FROM sa_items")).fetchall()
        assert [tuple(r) for r in rows] == [(1, "one")], rows
    finally:
        engine.dispose()


def conninfo_of(connect):
    """The connection string of the server `connect` reaches."""
    with connect() as conn:
        info = conn.info
        return (f"host={info.host} port={info.port} user={info.user} "
                f"dbname={info.dbname}")


def sqlalchemy_url(connect, driver="psycopg"):
    """The SQLAlchemy URL of the server `connect` reaches."""
    import sqlalchemy as sa

    with connect() as conn:
        info = conn.info
        return sa.engine.URL.create(
            f"postgresql+{driver}", username=info.user, host=info.host, port=info.port,
            database=info.dbname)


@case
def sqlalchemy_core_and_pandas(connect):
    """SQLAlchemy Core as applications use it: `metadata.create_all` (its
    existence checks and CREATE TABLEs in one transaction block), inserts of
    many rows, a select with bound parameters, a rolled-back `engine.begin()`,
    `drop_all`; then pandas over the same engine: `DataFrame.to_sql` (creating,
    appending, replacing the table, each in a transaction) and `read_sql`."""
    import datetime
    import decimal

    import pandas as pd
    import sqlalchemy as sa

    engine = sa.create_engine(sqlalchemy_url(connect))
    try:
        metadata = sa.MetaData()
        customers = sa.Table(
            "sac_customers", metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("name", sa.String(50), nullable=False),
            comment="who buys")
        orders = sa.Table(
            "sac_orders", metadata,
            sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("customer_id", sa.Integer, sa.ForeignKey("sac_customers.id")),
            sa.Column("amount", sa.Numeric(10, 2)),
            sa.Column("placed", sa.DateTime))
        metadata.create_all(engine)
        metadata.create_all(engine)  # again: every table exists, nothing to do
        with engine.begin() as conn:
            conn.execute(customers.insert(), [{"id": 1, "name": "ada"}, {"id": 2, "name": "bo"}])
            conn.execute(orders.insert(), [
                {"id": 10, "customer_id": 1, "amount": decimal.Decimal("9.99"),
                 "placed": datetime.datetime(2026, 1, 2, 3, 4, 5)},
                {"id": 11, "customer_id": 2, "amount": None, "placed": None},
            ])
        try:
            with engine.begin() as conn:
                conn.execute(customers.insert(), {"id": 3, "name": "cy"})
                conn.execute(sa.text("SELECT * FROM sac_missing"))
        except sa.exc.ProgrammingError:
            pass
        query = (sa.select(customers.c.name, orders.c.amount)
                 .join(orders, orders.c.customer_id == customers.c.id)
                 .where(orders.c.id >= sa.bindparam("low"))
                 .order_by(orders.c.id))
        with engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(query, {"low": 10})]
            count = conn.execute(sa.select(sa.func.count()).select_from(customers)).scalar()
        assert rows == [("ada", decimal.Decimal("9.99")), ("bo", None)], rows
        assert count == 2, "the rolled-back block left no row"
        reflected = sa.MetaData()
        reflected.reflect(engine, only=["sac_customers", "sac_orders"])
        fks = reflected.tables["sac_orders"].foreign_keys
        assert [fk.target_fullname for fk in fks] == ["sac_customers.id"], fks
        assert reflected.tables["sac_customers"].comment == "who buys"
        metadata.drop_all(engine)
        assert not sa.inspect(engine).has_table("sac_orders")

        frame = pd.DataFrame({
            "id": [1, 2, 3],
            "score": [0.5, None, 2.25],
            "label": ["a", None, "c"],
            "flag": [True, False, True],
            "at": pd.to_datetime(["2026-01-01 00:00:00", "2026-06-30 12:30:00", None]),
        })
        frame.to_sql("sac_frame", engine, index=False)
        frame.to_sql("sac_frame", engine, index=False, if_exists="append")
        back = pd.read_sql("SELECT * FROM sac_frame ORDER BY id, label", engine)
        assert list(back.columns) == list(frame.columns), back.dtypes
        assert len(back) == 6 and back["id"].tolist() == [1, 1, 2, 2, 3, 3], back
        assert back["score"].isna().tolist() == [False, False, True, True, False, False]
        assert back["flag"].tolist() == [True, True, False, False, True, True], back["flag"]
        assert back["at"].iloc[2] == pd.Timestamp("2026-06-30 12:30:00"), back["at"]
        frame.head(1).to_sql("sac_frame", engine, index=False, if_exists="replace")
        back = pd.read_sql_table("sac_frame", engine)
        assert back["id"].tolist() == [1], back
    finally:
        engine.dispose()


@case
def psycopg2_dbapi(connect):
    """psycopg2 (libpq; parameters interpolated client-side): its default
    transaction blocks around DDL and DML, `execute_values`, `copy_expert`
    both ways, a named (server-side) cursor fetched in pages, and errors as
    its exception classes."""
    import io

    import psycopg2
    import psycopg2.errors
    import psycopg2.extras

    with connect() as conn:
        info = conn.info
        where = dict(host=info.host, port=info.port, user=info.user, dbname=info.dbname)
    conn = psycopg2.connect(**where)

    def create_and_fill(cur):
        cur.execute("CREATE TABLE p2 (id INT NOT NULL, name TEXT)")
        cur.execute("INSERT INTO p2 VALUES (%s, %s)", (1, "o'brien"))
        psycopg2.extras.execute_values(
            cur, "INSERT INTO p2 VALUES %s", [(i, f"n{i}") for i in range(2, 101)])

    try:
        with conn.cursor() as cur:
            create_and_fill(cur)
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'p2'")
            assert cur.fetchone() == (0,), "ROLLBACK took the table away"
            create_and_fill(cur)
        conn.commit()
        with conn.cursor() as cur:
            cur.copy_expert("COPY p2 FROM STDIN (FORMAT csv)", io.StringIO("101,\n102,x\n"))
            out = io.StringIO()
            cur.copy_expert("COPY (SELECT * FROM p2 WHERE id > 100 ORDER BY id) TO STDOUT", out)
            assert out.getvalue() == "101\t\\N\n102\tx\n", out.getvalue()
        conn.commit()
        with conn.cursor("p2_pages") as named:
            named.itersize = 7
            named.execute("SELECT id, name FROM p2 ORDER BY id")
            seen = [row for row in named]
        assert len(seen) == 102 and seen[0] == (1, "o'brien") and seen[-1] == (102, "x"), seen[:3]
        conn.commit()
        with conn.cursor() as cur:
            try:
                cur.execute("SELECT * FROM p2_missing")
                raise AssertionError("a missing table was found")
            except psycopg2.errors.UndefinedTable:
                pass
            try:
                cur.execute("SELECT 1")
                raise AssertionError("a failed block went on")
            except psycopg2.errors.InFailedSqlTransaction:
                pass
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("SELECT count(*), sum(id) FROM p2")
            assert cur.fetchone() == (102, sum(range(1, 103))), "all rows once"
    finally:
        conn.close()


@case
def psycopg_pipeline(connect):
    """psycopg's pipeline mode: many extended-protocol statements sent
    before any result is read, one Sync per batch. In a transaction block an
    error fails its statement, skips the rest and rolls the block back.
    Statements psycopg prepares by name (after `prepare_threshold` runs)
    go with DEALLOCATE, as psycopg sends it when it drops them."""
    with connect() as conn:
        conn.execute("CREATE TABLE pipe (id INT NOT NULL, name TEXT)")
        with conn.pipeline():
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO pipe VALUES (%s, %s)",
                                [(i, f"n{i}") for i in range(50)])
                cursors = [conn.execute("SELECT count(*) FROM pipe WHERE id < %s", (n,))
                           for n in (10, 20, 30)]
        assert [c.fetchone()[0] for c in cursors] == [10, 20, 30]
        try:
            with conn.pipeline(), conn.transaction():
                conn.execute("INSERT INTO pipe VALUES (%s, %s)", (100, "undone"))
                conn.execute("SELECT * FROM pipe_missing")
                conn.execute("INSERT INTO pipe VALUES (%s, %s)", (101, "skipped"))
        except psycopg.errors.UndefinedTable:
            pass
        ids = [r[0] for r in conn.execute("SELECT id FROM pipe WHERE id >= 100 ORDER BY id")]
        assert ids == [], ids
    with psycopg.connect(conninfo_of(connect), prepare_threshold=0, autocommit=True) as conn:
        conn.prepared_max = 2
        for n in range(4):  # each new query pushes the oldest out: DEALLOCATE
            row = conn.execute(f"SELECT count(*) + {n} FROM pipe WHERE id < %s", (5,)).fetchone()
            assert row == (5 + n,), row
        fails(conn, "DEALLOCATE never_prepared", psycopg.errors.InvalidSqlStatementName,
              "DEALLOCATE of an unknown statement succeeded")
        conn.execute("DEALLOCATE ALL")
        row = conn.execute("SELECT count(*) FROM pipe WHERE id < %s", (5,)).fetchone()
        assert row == (5,), row


@case
def psycopg_binary_copy(connect):
    """COPY FROM STDIN and TO STDOUT in binary format (psycopg's binary copy;
    asyncpg's copy_records_to_table sends the same), every column type."""
    import datetime
    import decimal

    types = ["int8", "text", "numeric", "date", "timestamp", "bool", "bytea", "float8", "int4"]
    rows = [
        (1, "one\ttab", decimal.Decimal("1.50"), datetime.date(2026, 1, 2),
         datetime.datetime(2026, 1, 2, 3, 4, 5, 600000), True, b"\x00\xff", 0.5, -7),
        (2, None, None, None, None, None, None, None, None),
    ]
    with connect() as conn:
        conn.execute(
            "CREATE TABLE bcopy (id BIGINT NOT NULL, name TEXT, price NUMERIC(10, 2), day DATE, "
            "at TIMESTAMP, ok BOOLEAN, raw BYTEA, score DOUBLE PRECISION, small INT)")
        cur = conn.cursor()
        with cur.copy("COPY bcopy FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(types)
            for row in rows:
                copy.write_row(row)
        back = conn.execute("SELECT * FROM bcopy ORDER BY id").fetchall()
        assert back == rows, back
        with cur.copy("COPY (SELECT * FROM bcopy ORDER BY id) TO STDOUT (FORMAT BINARY)") as copy:
            copy.set_types(types)
            out = list(copy.rows())
        assert out == rows, out
        # A field of the wrong width is refused, and nothing is written
        # (PostgreSQL: 08P01 "insufficient data left in message"; Quarry:
        # 22P03 invalid_binary_representation).
        try:
            with cur.copy("COPY bcopy (id) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int4"])
                copy.write_row((3,))
            raise AssertionError("an int4 field was taken for an int8 column")
        except psycopg.errors.Error as e:
            assert e.sqlstate in ("08P01", "22P03"), e.sqlstate
        count = conn.execute("SELECT count(*) FROM bcopy").fetchone()
        assert count == (2,), count


@case
def asyncpg_queries_copy_and_cursors(connect):
    """asyncpg: prepared statements with binary results, executemany,
    copy_records_to_table (binary COPY) and a cursor that prefetches a row at
    a time (Execute with a row limit)."""
    import asyncio
    import datetime
    import decimal

    import asyncpg

    with connect() as conn:
        conn.execute("CREATE TABLE ap (id BIGINT NOT NULL, name TEXT, price NUMERIC(10, 2), day DATE)")
        where = dict(host=conn.info.host, port=conn.info.port, user=conn.info.user,
                     database=conn.info.dbname)

    async def main():
        c = await asyncpg.connect(**where)
        try:
            assert await c.fetchval("SELECT 1") == 1
            await c.executemany(
                "INSERT INTO ap VALUES ($1, $2, $3, $4)",
                [(1, "a", decimal.Decimal("1.50"), datetime.date(2026, 1, 1)),
                 (2, None, None, None)])
            copied = await c.copy_records_to_table(
                "ap", records=[(3, "c", decimal.Decimal("2.25"), datetime.date(2026, 1, 3))])
            assert copied == "COPY 1", copied
            rows = [tuple(r) for r in await c.fetch("SELECT * FROM ap ORDER BY id")]
            assert rows == [
                (1, "a", decimal.Decimal("1.50"), datetime.date(2026, 1, 1)),
                (2, None, None, None),
                (3, "c", decimal.Decimal("2.25"), datetime.date(2026, 1, 3)),
            ], rows
            async with c.transaction():
                ids = [r["id"] async for r in c.cursor("SELECT id FROM ap ORDER BY id",
                                                       prefetch=1)]
            assert ids == [1, 2, 3], ids
            statement = await c.prepare("SELECT name FROM ap WHERE id = $1")
            assert await statement.fetchval(3) == "c"
        finally:
            await c.close()

    asyncio.run(main())


@case
def composite_types_are_described_by_their_oids(connect):
    """A column of a named composite type (CREATE TYPE ... AS), and one of an
    array of it, are described by the type's and its array type's pg_type
    oids; psycopg, which has no loader registered for them, returns their
    text, in record_out's and array_out's forms."""
    with connect() as conn:
        conn.execute("CREATE TYPE postal AS (street text, zip int)")
        conn.execute("CREATE TABLE letters (id int, sent_to postal, copies postal[])")
        conn.execute("INSERT INTO letters VALUES "
                     "(1, ROW('Main St', 12345), ARRAY[ROW('Old Rd', NULL)::postal])")
        oids = dict(conn.execute(
            "SELECT typname, oid::bigint FROM pg_type WHERE typname IN ('postal', '_postal')"
        ).fetchall())
        cursor = conn.execute("SELECT sent_to, copies FROM letters")
        described = [column.type_code for column in cursor.description]
        assert described == [oids["postal"], oids["_postal"]], (described, oids)
        row = cursor.fetchone()
        assert row == ('("Main St",12345)', '{"(\\"Old Rd\\",)"}'), row
        conn.execute("DROP TABLE letters")
        conn.execute("DROP TYPE postal")


@case
def arrays_and_json_round_trip(connect):
    """Arrays and jsonb as Python lists and dicts, both ways: psycopg with
    text and binary results and list / Jsonb parameters, asyncpg with its
    binary protocol (text[], bigint[], float8[] and bool[] as lists, after
    its type lookup; json as text, binary jsonb parameters)."""
    import asyncio
    import json

    import asyncpg
    from psycopg.types.json import Jsonb

    doc = {"k": [1, {"n": None}], "s": "x"}
    with connect() as conn:
        conn.execute("CREATE TABLE aj (id BIGINT, tags TEXT[], scores BIGINT[], doc JSONB)")
        conn.execute("INSERT INTO aj VALUES (%s, %s, %s::bigint[], %s)",
                     (1, ["a", "b c", None, 'q"uote'], [1, 2], Jsonb(doc)))
        conn.execute("INSERT INTO aj VALUES (2, '{}', NULL, '[]')")
        for binary in (False, True):
            rows = conn.cursor(binary=binary).execute(
                "SELECT id, tags, scores, doc FROM aj ORDER BY id").fetchall()
            assert rows == [(1, ["a", "b c", None, 'q"uote'], [1, 2], doc),
                            (2, [], None, [])], (binary, rows)
        assert conn.execute("SELECT doc ->> 's', scores[2], doc -> 'k' -> 1 FROM aj WHERE id = %s",
                            (1,)).fetchone() == ("x", 2, {"n": None})
        assert conn.execute("SELECT id FROM aj WHERE scores @> %s::bigint[]",
                            ([2],)).fetchall() == [(1,)]
        assert conn.execute("SELECT id FROM aj WHERE %s = ANY(tags)", ("b c",)).fetchall() == [(1,)]
        where = dict(host=conn.info.host, port=conn.info.port, user=conn.info.user,
                     database=conn.info.dbname)

    # asyncpg decodes text[] and json itself; arrays of other element types
    # it first looks up with its recursive pg_type query (an oid[] parameter).
    async def main():
        c = await asyncpg.connect(**where)
        try:
            row = await c.fetchrow("SELECT tags, doc FROM aj WHERE id = 1")
            assert row["tags"] == ["a", "b c", None, 'q"uote'], row
            assert json.loads(row["doc"]) == doc, row
            await c.execute("INSERT INTO aj (id, tags, doc) VALUES ($1, $2, $3)",
                            3, ["z", None], json.dumps({"a": [1, 2]}))
            row = await c.fetchrow("SELECT tags, doc -> 'a' ->> 1 AS a FROM aj WHERE id = 3")
            assert tuple(row) == (["z", None], "2"), row
            row = await c.fetchrow("SELECT scores, ARRAY[1.5, NULL]::float8[] AS f, "
                                   "ARRAY[true, false] AS b FROM aj WHERE id = 1")
            assert tuple(row) == ([1, 2], [1.5, None], [True, False]), row
            await c.execute("INSERT INTO aj (id, scores) VALUES ($1, $2)", 4, [7, None, -3])
            assert await c.fetchval("SELECT scores FROM aj WHERE id = $1", 4) == [7, None, -3]
            assert await c.fetchval("SELECT count(*) FROM aj WHERE $1 = ANY(scores)", 7) == 1
        finally:
            await c.close()

    asyncio.run(main())


@case
def node_postgres(connect):
    """node-postgres (npm `pg`, with `pg-cursor`): tests/drivers/node/pg_case.js
    against the same server (`npm ci` in tests/drivers/node installs it)."""
    import subprocess

    with connect() as conn:
        info = conn.info
        env = dict(os.environ, PGHOST=info.host, PGPORT=str(info.port), PGUSER=info.user,
                   PGDATABASE=info.dbname)
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")
    done = subprocess.run(["node", os.path.join(here, "pg_case.js")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "node-postgres: ok" in done.stdout, \
        done.stdout + done.stderr


@case
def pg8000_native_and_dbapi(connect):
    """pg8000 (pure Python; typed parameters in the extended protocol): named
    parameters, NUMERIC and DATE round trips, a list parameter with ANY,
    DB-API executemany in a transaction."""
    import datetime
    import decimal

    import pg8000.dbapi
    import pg8000.native

    with connect() as conn:
        conn.execute("CREATE TABLE p8 (id BIGINT NOT NULL, name TEXT, price NUMERIC(10, 2), day DATE)")
        info = conn.info
        where = dict(user=info.user, database=info.dbname)
        if info.host.startswith("/"):
            where["unix_sock"] = f"{info.host}/.s.PGSQL.{info.port}"
        else:
            where.update(host=info.host, port=info.port)
    native = pg8000.native.Connection(**where)
    try:
        native.run("INSERT INTO p8 VALUES (:id, :name, :price, :day)", id=1, name="a",
                   price=decimal.Decimal("1.50"), day=datetime.date(2026, 1, 1))
        rows = native.run("SELECT * FROM p8 WHERE id = :id", id=1)
        assert rows == [[1, "a", decimal.Decimal("1.50"), datetime.date(2026, 1, 1)]], rows
    finally:
        native.close()
    dbapi = pg8000.dbapi.connect(**where)
    try:
        cursor = dbapi.cursor()
        cursor.executemany("INSERT INTO p8 VALUES (%s, %s, %s, %s)",
                           [(2, "b", decimal.Decimal("2.50"), None), (3, None, None, None)])
        dbapi.commit()
        cursor.execute("SELECT name FROM p8 WHERE name = ANY(%s) ORDER BY name", (["a", "b"],))
        names = [row[0] for row in cursor.fetchall()]
        assert names == ["a", "b"], names
        cursor.execute("SELECT count(*) FROM p8")
        assert cursor.fetchone()[0] == 3
    finally:
        dbapi.close()


@case
def jdbc(connect):
    """PostgreSQL's JDBC driver (Debian's libpostgresql-jdbc-java):
    tests/drivers/jdbc/JdbcCase.java against the same server over TCP."""
    import subprocess

    with connect() as conn:
        info = conn.info
        host = "127.0.0.1" if info.host.startswith("/") else info.host
        url = f"jdbc:postgresql://{host}:{info.port}/{info.dbname}"
        user = info.user
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jdbc")
    done = subprocess.run(
        ["java", "-cp", "/usr/share/java/postgresql.jar",
         os.path.join(here, "JdbcCase.java"), url, user],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "jdbc: ok" in done.stdout, done.stdout + done.stderr


@case
def copy_csv_force_options(connect):
    """COPY's CSV options FORCE_QUOTE (TO, a list or *), FORCE_NOT_NULL and
    FORCE_NULL (FROM), ENCODING both ways, and their errors."""
    with connect() as conn:
        conn.execute("CREATE TABLE fq (id INT NOT NULL, a TEXT, b TEXT)")
        cur = conn.cursor()
        with cur.copy("COPY fq FROM STDIN (FORMAT csv, FORCE_NOT_NULL (a), FORCE_NULL (b))") as copy:
            copy.write('1,,""\n2,x,y\n')
        rows = conn.execute("SELECT id, a, b FROM fq ORDER BY id").fetchall()
        # a: the unquoted empty string is '' (not NULL); b: quoted "" is NULL.
        assert rows == [(1, "", None), (2, "x", "y")], rows
        with cur.copy("COPY fq TO STDOUT (FORMAT csv, FORCE_QUOTE (id, b))") as copy:
            out = b"".join(bytes(data) for data in copy)
        # An empty string is quoted anyway, to tell it from NULL.
        assert out == b'"1","",\n"2",x,"y"\n', out
        fails(conn, "COPY fq TO STDOUT (FORMAT csv, FORCE_NOT_NULL (a))",
              psycopg.errors.FeatureNotSupported, "FORCE_NOT_NULL with COPY TO")
        fails(conn, "COPY fq FROM STDIN (FORMAT csv, FORCE_QUOTE (a))",
              psycopg.errors.FeatureNotSupported, "FORCE_QUOTE with COPY FROM")
        fails(conn, "COPY fq FROM STDIN (FORMAT csv, FORCE_NOT_NULL (nope))",
              psycopg.errors.UndefinedColumn, "FORCE_NOT_NULL of a missing column")
        fails(conn, "COPY fq (id, a) FROM STDIN (FORMAT csv, FORCE_NOT_NULL (b))",
              psycopg.errors.InvalidColumnReference, "FORCE_NOT_NULL of a column not copied")
        fails(conn, "COPY fq TO STDOUT (FORCE_QUOTE (a))",
              psycopg.errors.FeatureNotSupported, "FORCE_QUOTE outside CSV mode")

        def copy_out(sql):
            with cur.copy(sql) as copy:
                return b"".join(bytes(data) for data in copy)

        # FORCE_QUOTE * quotes every non-NULL value, in both spellings.
        for sql in ("COPY fq TO STDOUT (FORMAT csv, FORCE_QUOTE *)",
                    "COPY fq TO STDOUT CSV FORCE QUOTE *"):
            assert copy_out(sql) == b'"1","",\n"2","x","y"\n', sql
        # ENCODING: the data is converted from and to the named encoding.
        conn.execute("CREATE TABLE fenc (id INT NOT NULL, word TEXT)")
        for encoding, word in (("LATIN1", "café"), ("WIN1251", "щука"), ("SJIS", "日本")):
            with cur.copy(f"COPY fenc FROM STDIN (FORMAT csv, ENCODING '{encoding}')") as copy:
                copy.write(f"1,{word}\n".encode({"LATIN1": "latin-1", "WIN1251": "cp1251",
                                                  "SJIS": "shift_jis"}[encoding]))
            assert conn.execute("SELECT word FROM fenc").fetchall() == [(word,)], encoding
            out = copy_out(f"COPY fenc (word) TO STDOUT (ENCODING '{encoding}')")
            assert out == f"{word}\n".encode({"LATIN1": "latin-1", "WIN1251": "cp1251",
                                               "SJIS": "shift_jis"}[encoding]), (encoding, out)
            conn.execute("DELETE FROM fenc")
        conn.execute("INSERT INTO fenc VALUES (1, 'цена €')")
        for sql, error in (("COPY fenc TO STDOUT (ENCODING 'LATIN1')",
                            psycopg.errors.UntranslatableCharacter),
                           ("COPY fenc TO STDOUT (ENCODING 'no_such_encoding')",
                            psycopg.errors.InvalidParameterValue)):
            try:
                copy_out(sql)
                raise AssertionError(f"{sql} succeeded")
            except error:
                pass
        with conn.transaction():
            try:
                with cur.copy("COPY fenc FROM STDIN (ENCODING 'SJIS')") as copy:
                    copy.write(b"2\t\x82\n")
                raise AssertionError("a malformed SJIS byte sequence was accepted")
            except psycopg.errors.CharacterNotInRepertoire:
                pass
            raise psycopg.Rollback()


@case
def psql_meta_commands(connect):
    """psql's describing meta-commands (`\\d+`, `\\dt+`, `\\dv`, `\\dn+`, `\\df+`),
    which read pg_class, pg_attribute, pg_attrdef and pg_namespace by
    oid across several queries."""
    import subprocess

    with connect() as conn:
        conn.execute("CREATE TABLE pm_items (id BIGINT NOT NULL, name TEXT DEFAULT 'none', "
                     "price NUMERIC(10, 2), qty INT DEFAULT 7)")
        conn.execute("INSERT INTO pm_items VALUES (1, 'one', 1.50, 2)")
        conn.execute("CREATE VIEW pm_names AS SELECT id, name FROM pm_items")
        info = conn.info
        host, port, user, dbname = info.host, info.port, info.user, info.dbname

    def psql(command):
        done = subprocess.run(
            ["psql", "-X", "-h", host, "-p", str(port), "-U", user, "-d", dbname, "-c", command],
            capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and not done.stderr, f"{command}: {done.stdout}{done.stderr}"
        return done.stdout

    described = psql("\\d+ pm_items")
    assert 'Table "public.pm_items"' in described, described
    lines = {line.split("|")[0].strip(): [c.strip() for c in line.split("|")]
             for line in described.splitlines() if "|" in line}
    assert lines["id"][1:4] == ["bigint", "", "not null"], lines["id"]
    assert lines["name"][1] == "text", lines["name"]
    assert lines["price"][1] == "numeric(10,2)", lines["price"]
    assert lines["qty"][1] == "integer", lines["qty"]
    # The Default column (psql's correlated lookup in pg_attrdef).
    assert [lines[c][4] for c in ("id", "name", "price", "qty")] == \
        ["", "'none'::text", "", "7"], described
    assert "Access method" in described or "Storage" in described, described
    sized = psql("\\dt+ pm_items")
    row = next(line for line in sized.splitlines() if "pm_items" in line)
    assert row.split("|")[2].strip() == "table", row
    assert "bytes" in row or "kB" in row, sized
    view = psql("\\d pm_names")
    assert 'View "public.pm_names"' in view and "name" in view, view
    assert "pm_names" in psql("\\dv"), "\\dv lists the view"
    schemas = psql("\\dn+")
    assert "public" in schemas, schemas
    # Keys and comments as psql shows them.
    with connect() as conn:
        conn.execute("CREATE TABLE pm_parent (id BIGINT PRIMARY KEY, code TEXT NOT NULL UNIQUE)")
        conn.execute("CREATE TABLE pm_child (id INT NOT NULL, parent BIGINT "
                     "REFERENCES pm_parent (id), CONSTRAINT pm_child_key PRIMARY KEY (id))")
        conn.execute("COMMENT ON TABLE pm_parent IS 'parents'")
    parent = psql("\\d pm_parent")
    assert '"pm_parent_pkey" PRIMARY KEY, btree (id)' in parent, parent
    assert '"pm_parent_code_key" UNIQUE CONSTRAINT, btree (code)' in parent, parent
    assert 'CONSTRAINT "pm_child_parent_fkey" FOREIGN KEY (parent) REFERENCES pm_parent(id)' \
        in parent, parent
    child = psql("\\d pm_child")
    assert '"pm_child_key" PRIMARY KEY, btree (id)' in child, child
    assert '"pm_child_parent_fkey" FOREIGN KEY (parent) REFERENCES pm_parent(id)' in child, child
    assert "parents" in psql("\\dt+ pm_parent"), "\\dt+ shows the comment"
    # Functions: pg_proc's signatures as pg_get_function_result/arguments
    # print them.
    functions = psql("\\df abs")
    signatures = sorted(tuple(c.strip() for c in line.split("|")[2:5])
                        for line in functions.splitlines() if "| abs " in line)
    assert signatures == sorted((t, t, "func") for t in (
        "bigint", "double precision", "integer", "numeric", "real", "smallint")), functions
    detailed = psql("\\df+ aclexplode")
    assert "SETOF record" in detailed and "acl aclitem[], OUT grantor oid" in detailed, detailed
    assert "insert_after boolean DEFAULT false" in psql("\\df jsonb_insert")


def run(name, connect):
    try:
        CASES[name](connect)
    except Exception:  # noqa: BLE001 - any failure fails the case, with its trace
        traceback.print_exc()
        return False
    return True


def main():
    port = sys.argv[1]
    names = sys.argv[2:] or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        sys.exit(f"unknown cases {unknown}; known: {list(CASES)}")
    server = Server(tcp=True)
    failed = []
    try:
        for index, name in enumerate(names):
            dbname = f"drivers_{index}"
            with server.connect("postgres") as admin:
                admin.execute(f"CREATE DATABASE {dbname}")
            targets = {
                "PostgreSQL": lambda db=dbname: psycopg.connect(
                    host=server.dir, port=server.port, user="postgres", dbname=db,
                    autocommit=True),
                "Quarry": lambda: psycopg.connect(
                    host="127.0.0.1", port=port, user="drivers", dbname="quarry",
                    autocommit=True),
            }
            for target, connect in targets.items():
                ok = run(name, connect)
                print(f"{name} on {target}: {'ok' if ok else 'FAILED'}", flush=True)
                if not ok:
                    failed.append(f"{name} on {target}")
    finally:
        server.stop()
    if failed:
        sys.exit(f"failed: {failed}")
    print(f"drivers: {len(names)} cases pass on PostgreSQL and Quarry")


main()
