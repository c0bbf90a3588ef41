"""`cegraph sql` bounds a statement's time, memory and temporary files (issue 21)."""

import time

import pytest
from typer.testing import CliRunner

from cegraph.cli.main import app
from cegraph.storage import Warehouse
from cegraph.storage.audit import AuditLimits, AuditRefused, audit_query


@pytest.fixture
def home(tmp_path):
    Warehouse(tmp_path).close()  # an empty, migrated catalog
    return str(tmp_path)


def test_a_runaway_query_stops_at_its_time_limit(home):
    started = time.monotonic()
    out = CliRunner().invoke(app, ["sql", "SELECT sum(hash(i)) FROM range(1000000000000) t(i)",
                                   "--home", home, "--timeout", "1"])
    assert time.monotonic() - started < 15
    assert out.exit_code == 2 and "ran past its time limit (1 s)" in out.output, out.output
    assert len(out.output.strip().splitlines()) == 1 and "Traceback" not in out.output
    ok = CliRunner().invoke(app, ["sql", "SELECT 1 AS a", "--home", home, "-f", "csv"])
    assert ok.exit_code == 0 and ok.output.splitlines() == ["a", "1"]


def test_a_query_needing_too_much_memory_is_refused(home):
    with Warehouse(home, read_only=True) as wh, pytest.raises(AuditRefused, match="memory"):
        audit_query(wh, "SELECT count(DISTINCT i) FROM range(20000000) t(i)",
                    AuditLimits(memory="64MB", temp="16MB"))
