"""The SQL audit (`cegraph sql`): one read statement over the warehouse, and nothing else.

Opening the catalog read-only refuses writes to it, but DuckDB can still write and read
files (`COPY ... TO`, `read_csv('/etc/passwd')`), install extensions, run several statements,
shadow a view with a temporary one, and change its own settings. So an audit session:
- accepts exactly one statement, classified by DuckDB's own parser as a SELECT (which
  includes `FROM`, `WITH`, `VALUES`, `DESCRIBE`, `SHOW`, `SUMMARIZE`);
- disables external access except the home's own history (DuckDB's `allowed_directories`);
- disables extension auto-install and auto-load;
- then locks its configuration, so no statement can undo any of this.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from storage.warehouse import Warehouse


class AuditRefused(ValueError):
    """A statement the audit does not run; the message is one line and says why."""


def lock_down(wh: Warehouse) -> None:
    """Restrict `wh`'s connection to reading the catalog and the home's history, for good."""
    allowed = (wh.history_root.resolve().as_posix().rstrip("/") + "/").replace("'", "''")
    for setting in (f"allowed_directories = ['{allowed}']", "enable_external_access = false",
                    "autoinstall_known_extensions = false",
                    "autoload_known_extensions = false", "lock_configuration = true"):
        wh.con.execute(f"SET {setting}")


def read_statement(sql: str) -> str:
    """`sql` if it is exactly one read statement, else `AuditRefused`."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise AuditRefused(str(exc).splitlines()[0]) from None
    if len(statements) != 1:
        raise AuditRefused(f"one statement per call, got {len(statements)}; run them one by "
                           "one")
    [statement] = statements
    if statement.type != duckdb.StatementType.SELECT:
        raise AuditRefused(f"only a read statement (SELECT, WITH, FROM, DESCRIBE, SHOW) may "
                           f"run; this is a {statement.type.name} statement")
    return sql


def audit_query(wh: Warehouse, sql: str) -> pa.Table:
    """Run one read statement on a locked-down warehouse (see the module docstring)."""
    read_statement(sql)
    lock_down(wh)
    try:
        return wh.query(sql)
    except duckdb.PermissionException:
        raise AuditRefused("the audit reads only the warehouse (its tables and the history "
                           "views); files and extensions are off limits") from None
