from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from producer import statements as sql
from producer.mapping import default_mappings

# ---- the "common subset" linter: SQL Server (pyodbc, qmark) and the PostgreSQL emulator (pg8000) ----

_FORBIDDEN: list[tuple[str, re.Pattern[str]]] = [
    ("square-bracket identifier", re.compile(r"[\[\]]")),
    ("TOP", re.compile(r"\bTOP\b", re.IGNORECASE)),
    ("binary literal", re.compile(r"\b0x[0-9a-f]*", re.IGNORECASE)),
    ("block comment", re.compile(r"/\*|\*/")),
    ("line comment", re.compile(r"--")),
    ("T-SQL-only function", re.compile(r"\b(ISNULL|CONVERT|DATEADD|DATEPART)\s*\(", re.IGNORECASE)),
    ("format/pyformat placeholder", re.compile(r"%s|%\(")),
    ("numeric placeholder", re.compile(r"\$\d|:\d")),
    ("named placeholder", re.compile(r"(?<![:\w]):[A-Za-z_]\w*|@\w+")),
    ("quoted identifier", re.compile(r'["`]')),
    ("statement separator", re.compile(r";")),
]


def _without_string_literals(statement: str) -> str:
    return re.sub(r"N?'(?:[^']|'')*'", "''", statement)


def subset_violations(statement: str) -> list[str]:
    code = _without_string_literals(statement)
    problems = [name for name, pattern in _FORBIDDEN if pattern.search(code)]
    if statement != statement.strip() or "\n" in statement or "\t" in statement:
        problems.append("stray whitespace")
    if statement.count("'") % 2:
        problems.append("unbalanced quote")
    if code.count("(") != code.count(")"):
        problems.append("unbalanced parentheses")
    return problems


@pytest.mark.parametrize(
    ("statement", "problem"),
    [
        ("SELECT TOP 1 x FROM t", "TOP"),
        ("SELECT top(?) x FROM t", "TOP"),
        ("SELECT [x] FROM t", "square-bracket identifier"),
        ("SELECT x FROM t WHERE y = 0x0000", "binary literal"),
        ("SELECT x /* hint */ FROM t", "block comment"),
        ("SELECT x FROM t -- trailing", "line comment"),
        ("SELECT ISNULL(x, 0) FROM t", "T-SQL-only function"),
        ("SELECT CONVERT(int, x) FROM t", "T-SQL-only function"),
        ("SELECT DATEADD(day, 1, x) FROM t", "T-SQL-only function"),
        ("SELECT datepart(year, x) FROM t", "T-SQL-only function"),
        ("SELECT x FROM t WHERE y = %s", "format/pyformat placeholder"),
        ("SELECT x FROM t WHERE y = %(y)s", "format/pyformat placeholder"),
        ("SELECT x FROM t WHERE y = $1", "numeric placeholder"),
        ("SELECT x FROM t WHERE y = :1", "numeric placeholder"),
        ("SELECT x FROM t WHERE y = :y", "named placeholder"),
        ("SELECT x FROM t WHERE y = @y", "named placeholder"),
        ('SELECT "x" FROM t', "quoted identifier"),
        ("SELECT x FROM t; DROP TABLE t", "statement separator"),
        ("SELECT f(x FROM t", "unbalanced parentheses"),
    ],
)
def test_linter_catches(statement: str, problem: str) -> None:
    assert problem in subset_violations(statement)


def test_linter_accepts_cdc_names_and_literals() -> None:
    assert subset_violations("SELECT __$start_lsn, __$seqval FROM cdc.t WHERE a = ? AND b <> ?") == []
    assert subset_violations("SELECT x FROM f(?, ?, N'all update old') AS y") == []
    assert subset_violations("SELECT COUNT(*) FROM dbo.Property") == []


# ---- checked_identifier ----


@pytest.mark.parametrize(
    "name", ["__$start_lsn", "__$seqval", "PropertyID", "dbo_Property", "_x", "a1", "x$y", "Zip5"]
)
def test_checked_identifier_accepts(name: str) -> None:
    assert sql.checked_identifier(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a;b",
        "$x",
        "x y",
        " x",
        "x ",
        '"x"',
        "'x'",
        "x'",
        "`x`",
        "[x]",
        "x]",
        "1abc",
        "a.b",
        "a-b",
        "a--b",
        "a/*b",
        "a)",
        "ä",
        "x\ty",
        "\nx",
    ],
)
def test_checked_identifier_rejects(name: str) -> None:
    with pytest.raises(ValueError, match="not a plain SQL identifier"):
        sql.checked_identifier(name)


def test_checked_identifier_rejects_a_trailing_newline() -> None:
    with pytest.raises(ValueError, match="not a plain SQL identifier"):
        sql.checked_identifier("PropertyID\n")


# ---- builders ----

CHANGES_SQL = (
    "SELECT __$start_lsn, __$seqval, __$operation, __$update_mask, PropertyID, ParcelNumber, Zip5, "
    "sys.fn_cdc_map_lsn_to_time(__$start_lsn) AS commit_time "
    "FROM cdc.fn_cdc_get_all_changes_dbo_Property(?, ?, N'all update old') "
    "WHERE ((__$start_lsn = ? AND __$seqval = ? AND __$operation > ?) "
    "OR (__$start_lsn = ? AND __$seqval > ?) OR (__$start_lsn > ?)) AND __$start_lsn <= ? "
    "ORDER BY __$start_lsn, __$seqval, __$operation OFFSET 0 ROWS FETCH NEXT ? ROWS ONLY"
)


def test_build_changes_query_exact_text() -> None:
    statement = sql.build_changes_query("dbo_Property", ["PropertyID", "ParcelNumber", "Zip5"])
    assert statement == CHANGES_SQL
    assert statement.count("?") == 10


def test_build_changes_query_single_column() -> None:
    statement = sql.build_changes_query("dbo_Structure_v2", ("StructureID",))
    assert statement.startswith(
        "SELECT __$start_lsn, __$seqval, __$operation, __$update_mask, StructureID, "
        "sys.fn_cdc_map_lsn_to_time(__$start_lsn) AS commit_time "
        "FROM cdc.fn_cdc_get_all_changes_dbo_Structure_v2(?, ?, N'all update old') WHERE "
    )
    assert statement.count("?") == 10


def test_build_snapshot_query_first_chunk() -> None:
    statement = sql.build_snapshot_query("dbo", "Property", ["PropertyID", "Zip5"], "PropertyID", first=True)
    assert statement == (
        "SELECT PropertyID, Zip5 FROM dbo.Property ORDER BY PropertyID OFFSET 0 ROWS FETCH NEXT ? ROWS ONLY"
    )
    assert statement.count("?") == 1


def test_build_snapshot_query_later_chunk() -> None:
    statement = sql.build_snapshot_query(
        "pacs", "PropertyOwner", ["OwnerKey", "PropertyID"], "OwnerKey", first=False
    )
    assert statement == (
        "SELECT OwnerKey, PropertyID FROM pacs.PropertyOwner WHERE OwnerKey > ? "
        "ORDER BY OwnerKey OFFSET 0 ROWS FETCH NEXT ? ROWS ONLY"
    )
    assert statement.count("?") == 2


def test_build_count_query() -> None:
    assert sql.build_count_query("dbo", "PropertyValue") == "SELECT COUNT(*) FROM dbo.PropertyValue"
    assert sql.build_count_query("dbo", "PropertyValue").count("?") == 0


@pytest.mark.parametrize(
    "build",
    [
        lambda bad: sql.build_changes_query(bad, ["PropertyID"]),
        lambda bad: sql.build_changes_query("dbo_Property", ["PropertyID", bad]),
        lambda bad: sql.build_snapshot_query(bad, "Property", ["PropertyID"], "PropertyID", first=True),
        lambda bad: sql.build_snapshot_query("dbo", bad, ["PropertyID"], "PropertyID", first=False),
        lambda bad: sql.build_snapshot_query("dbo", "Property", [bad], "PropertyID", first=True),
        lambda bad: sql.build_snapshot_query("dbo", "Property", ["PropertyID"], bad, first=False),
        lambda bad: sql.build_count_query(bad, "Property"),
        lambda bad: sql.build_count_query("dbo", bad),
    ],
)
@pytest.mark.parametrize("bad", ["x; DROP TABLE t", "[x]", "x y", "", "$x", "x'--"])
def test_builders_refuse_unsafe_identifiers(build: Callable[[str], str], bad: str) -> None:
    with pytest.raises(ValueError, match="not a plain SQL identifier"):
        build(bad)


def _built_statements() -> dict[str, str]:
    built: dict[str, str] = {}
    for table, mapping in default_mappings().items():
        columns = mapping.with_extra(["Extra$Col"]).all_columns
        built[f"changes {table}"] = sql.build_changes_query(f"dbo_{table}", columns)
        for first in (True, False):
            built[f"snapshot {table} first={first}"] = sql.build_snapshot_query(
                "dbo", table, mapping.columns, mapping.key_column, first=first
            )
        built[f"count {table}"] = sql.build_count_query("dbo", table)
    return built


@pytest.mark.parametrize(("name", "statement"), sorted(_built_statements().items()))
def test_built_statements_stay_in_the_common_subset(name: str, statement: str) -> None:
    assert subset_violations(statement) == [], name
    assert "TOP" not in statement.upper().split()
    assert "[" not in statement
    assert "0x" not in statement.lower()
    assert "/*" not in statement


def test_built_statement_marker_counts() -> None:
    for name, statement in _built_statements().items():
        expected = 10 if name.startswith("changes") else 0 if name.startswith("count") else None
        if expected is None:
            expected = 1 if name.endswith("first=True") else 2
        assert statement.count("?") == expected, name


# ---- the static statements ----

EXPECTED_MARKERS = {
    "GET_MAX_LSN": 0,
    "GET_MIN_LSN": 1,
    "INCREMENT_LSN": 1,
    "MAP_LSN_TO_TIME": 1,
    "GET_MAX_TRANSACTION_LSN": 1,
    "GET_NTH_TRANSACTION_LSN_AFTER": 3,
    "GET_DATABASE_CDC_ENABLED": 1,
    "GET_CHANGE_TABLES": 0,
    "GET_CAPTURED_COLUMNS": 0,
    "GET_SOURCE_COLUMNS": 1,
}


def test_all_static_statements_lists_every_module_constant() -> None:
    statements = sql.all_static_statements()
    assert set(statements) == set(EXPECTED_MARKERS)
    constants = {
        name: value
        for name, value in vars(sql).items()
        if name.isupper() and isinstance(value, str) and value.lstrip().upper().startswith("SELECT")
    }
    assert constants == statements


@pytest.mark.parametrize(("name", "statement"), sorted(sql.all_static_statements().items()))
def test_static_statement_stays_in_the_common_subset(name: str, statement: str) -> None:
    assert subset_violations(statement) == [], name
    assert statement.startswith("SELECT ")
    assert statement.count("?") == EXPECTED_MARKERS[name]


def test_idle_tran_id_is_bound_not_inlined() -> None:
    assert sql.IDLE_TRAN_ID == b"\x00"
    assert "tran_id <> ?" in sql.GET_MAX_TRANSACTION_LSN
    assert "tran_id <> ?" in sql.GET_NTH_TRANSACTION_LSN_AFTER
