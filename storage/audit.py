"""The SQL audit (`cegraph sql`): one read statement over the warehouse, and nothing else.

Opening the catalog read-only refuses writes to it, but DuckDB can still write and read
files (`COPY ... TO`, `read_csv('/etc/passwd')`), install extensions, run several statements,
shadow a view with a temporary one, and change its own settings. So an audit session:
- accepts exactly one statement, classified by DuckDB's own parser as a SELECT (which
  includes `FROM`, `WITH`, `VALUES`, `DESCRIBE`, `SHOW`, `SUMMARIZE`);
- disables external access except the home's own history (DuckDB's `allowed_directories`);
- disables extension auto-install and auto-load;
- bounds the statement's memory and temporary files (`AuditLimits`), and interrupts it at
  its time limit;
- then locks its configuration, so no statement can undo any of this.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from cegraph.storage.warehouse import Warehouse


class AuditRefused(ValueError):
    """A statement the audit does not run; the message is one line and says why."""


@dataclass(frozen=True)
class AuditLimits:
    """What one audit statement may use: an audit reads a warehouse, it does not mine it."""
    timeout_s: float = 300.0
    memory: str = "2GB"
    #: DuckDB spills beyond `memory` to temporary files, up to this much
    temp: str = "4GB"


def lock_down(wh: Warehouse, limits: AuditLimits = AuditLimits()) -> None:
    """Restrict `wh`'s connection to reading the catalog and the home's history, for good."""
    allowed = (wh.history_root.resolve().as_posix().rstrip("/") + "/").replace("'", "''")
    for setting in (f"memory_limit = '{limits.memory}'",
                    f"max_temp_directory_size = '{limits.temp}'",
                    f"allowed_directories = ['{allowed}']", "enable_external_access = false",
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


def audit_query(wh: Warehouse, sql: str, limits: AuditLimits = AuditLimits()) -> pa.Table:
    """Run one read statement on a locked-down warehouse (see the module docstring)."""
    read_statement(sql)
    lock_down(wh, limits)
    # DuckDB has no statement timeout: a timer interrupts the connection
    timer = threading.Timer(limits.timeout_s, wh.con.interrupt)
    timer.daemon = True
    timer.start()
    try:
        return wh.query(sql)
    except duckdb.PermissionException:
        raise AuditRefused("the audit reads only the warehouse (its tables and the history "
                           "views); files and extensions are off limits") from None
    except duckdb.InterruptException:
        raise AuditRefused(f"the statement ran past its time limit ({limits.timeout_s:g} s); "
                           "narrow it, or raise --timeout") from None
    except duckdb.OutOfMemoryException:
        raise AuditRefused(f"the statement needs more than its memory limit ({limits.memory}, "
                           f"and {limits.temp} of temporary files); narrow it") from None
    finally:
        timer.cancel()
