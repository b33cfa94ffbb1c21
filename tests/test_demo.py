"""init_demo: a loadable domain whose nodes all hold the same, consistent tables."""

from __future__ import annotations

import re
import stat
import time
from pathlib import Path

import pytest
from cosfail.cosprint import designation, tables
from cosfail.cosprint.designation import Designation
from cosfail.cosprint.domain import Domain, load_domain
from cosfail.cosprint.errors import CosfailError
from cosfail.launcher.demo_domain import DemoError, generate_rows, init_demo, split_budget
from sqlalchemy import text

# Each query returns the rows that break one reference: a missing parent or a parent
# hosted elsewhere.
INTEGRITY = {
    "queue -> printer": """
        SELECT q.id FROM queues q LEFT JOIN printers p ON p.id = q.printer_id
        WHERE p.id IS NULL OR p.host != q.host""",
    "default -> queue": """
        SELECT d.id FROM defaults d LEFT JOIN queues q ON q.id = d.queue_id
        WHERE q.id IS NULL OR q.host != d.host""",
    "default -> format": """
        SELECT d.id FROM defaults d LEFT JOIN formats f ON f.id = d.format_id
        WHERE f.id IS NULL OR f.host != d.host""",
    "lock -> default": """
        SELECT l.id FROM default_locks l LEFT JOIN defaults d ON d.id = l.default_id
        WHERE d.id IS NULL OR d.host != l.host""",
    "capability -> printer": """
        SELECT c.id FROM resource_capabilities c LEFT JOIN printers p ON p.id = c.printer_id
        WHERE p.id IS NULL OR p.host != c.host""",
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Domain:
    path = init_demo(
        tmp_path_factory.mktemp("demo") / "dom", servers=3, bcs=2, clients=2, objects=3000
    )
    return load_domain(path)


def test_demo_domain_loads_with_named_nodes_and_srv1_as_master(demo: Domain):
    assert demo.path.name == "domain.toml" and demo.path.is_absolute()
    assert demo.names("server") == ["srv1", "srv2", "srv3"]
    assert demo.names("bcs") == ["bcs1", "bcs2"]
    assert demo.names("client") == ["cl1", "cl2"]
    assert demo.initial_master == "srv1"
    assert demo.control.name == "demo"
    # a broker of its own (`local up` starts it), never a shared Redis's db 0
    assert re.fullmatch(r"redis://127\.0\.0\.1:(\d+)/0", demo.control.broker)
    assert not demo.control.broker.endswith(":6379/0")
    assert demo.spec.ledger.url == "sqlite:///ledger.db"
    assert demo.control.token_file == "secrets/api.token"
    assert demo.control.flower_auth_file == "secrets/flower.auth"
    assert all(demo.node(n).home == f"nodes/{n}" for n in demo.names())


def test_coverage_one_has_every_bcs_cover_every_server(demo: Domain):
    for s in demo.names("server"):
        assert demo.covering_bcs(s) == ["bcs1", "bcs2"]


def test_every_node_api_and_flower_get_distinct_ports(demo: Domain):
    ports = [demo.node(n).port for n in demo.names()]
    ports += [int(demo.control.api.rsplit(":", 1)[1]), int(demo.control.flower.rsplit(":", 1)[1])]
    assert len(set(ports)) == len(ports) == 7 + 2
    assert demo.control.api.startswith("127.0.0.1:")
    assert demo.control.flower.startswith("127.0.0.1:")


def test_every_home_has_its_directories_and_only_bcss_a_backup_area(demo: Domain):
    for n in demo.names():
        home = demo.home(n)
        assert all((home / d).is_dir() for d in ("etc", "var", "spool")), n
        assert (home / "backup").is_dir() == (demo.node(n).role == "bcs"), n
        assert (home / "tables.db").is_file(), n
    assert demo.backup_area("bcs1").is_dir()


def test_every_node_holds_identical_tables_pointing_at_srv1_epoch_1(demo: Domain):
    digests = {}
    for n in demo.names():
        with tables.connect(demo.tables_url(n)) as conn:
            digests[n] = tables.rows_digest(conn)
            assert tables.read_pointer(conn) == ("srv1", 1), n
    assert len(set(digests.values())) == 1, digests


def test_every_node_designation_and_last_running_record_say_srv1_at_1(demo: Domain):
    for n in demo.names():
        home = demo.home(n)
        assert designation.read(home / designation.DESIGNATION) == Designation("srv1", 1), n
        assert designation.read(home / designation.LAST_RUNNING) == Designation("srv1", 1), n


def test_tables_hold_the_requested_number_of_objects(demo: Domain):
    with tables.connect(demo.tables_url("srv1")) as conn:
        assert sum(tables.row_counts(conn).values()) == 3000


def test_every_row_references_an_existing_parent_on_the_same_host(demo: Domain):
    with tables.connect(demo.tables_url("cl2")) as conn:
        for name, query in INTEGRITY.items():
            assert conn.execute(text(query)).fetchall() == [], name


def test_every_server_hosts_rows_of_every_table_and_nothing_else_does(demo: Domain):
    with tables.connect(demo.tables_url("srv1")) as conn:
        for t in tables.OBJECT_TABLES:
            hosts = dict(conn.execute(text(
                f"SELECT host, COUNT(*) FROM {t.name} GROUP BY host"
            )).fetchall())
            assert set(hosts) == {"srv1", "srv2", "srv3"}, t.name
        hosted = tables.hosted_counts(conn)
    assert set(hosted) == {"srv1", "srv2", "srv3"}
    assert max(hosted.values()) - min(hosted.values()) <= 1  # spread evenly


def test_rows_look_like_a_print_estate(demo: Domain):
    with tables.connect(demo.tables_url("srv1")) as conn:
        printer = conn.execute(text("SELECT name, host, device, location FROM printers "
                                    "WHERE host = 'srv2' ORDER BY id LIMIT 1")).one()
        papers = {p for (p,) in conn.execute(text("SELECT paper FROM formats"))}
        dupes = conn.execute(text(
            "SELECT printer_id, capability FROM resource_capabilities "
            "GROUP BY printer_id, capability HAVING COUNT(*) > 1")).fetchall()
    assert printer.name == "prn-srv2-0001"
    assert printer.device.split("://")[0] in {"socket", "lpd", "ipp"}
    assert printer.location.startswith("Building ") and ", floor " in printer.location
    assert {"A4", "Letter"} <= papers
    assert dupes == []


def test_secrets_are_owner_only_and_hold_random_values(demo: Domain):
    sdir = demo.base / "secrets"
    assert stat.S_IMODE(sdir.stat().st_mode) == 0o700
    token_file = demo.resolve(demo.control.token_file)
    auth_file = demo.resolve(demo.control.flower_auth_file)
    for f in (token_file, auth_file):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    token = token_file.read_text()
    assert len(token) >= 32 and token.strip() == token
    user, _, password = auth_file.read_text().partition(":")
    assert user and len(password) >= 16


def test_secrets_differ_between_two_demos(tmp_path: Path):
    a = load_domain(init_demo(tmp_path / "a", objects=60))
    b = load_domain(init_demo(tmp_path / "b", objects=60))
    assert (a.resolve(a.control.token_file).read_text()
            != b.resolve(b.control.token_file).read_text())


def test_coverage_each_spreads_servers_round_robin_over_bcss(tmp_path: Path):
    d = load_domain(init_demo(tmp_path / "d", servers=4, bcs=2, clients=0, objects=100,
                              coverage="each"))
    assert [d.covering_bcs(s) for s in d.names("server")] == [
        ["bcs1"], ["bcs2"], ["bcs1"], ["bcs2"]
    ]
    assert d.covered_servers("bcs1") == ["srv1", "srv3"]
    assert d.names("client") == []


def test_coverage_each_with_as_many_bcss_as_servers_gives_each_its_own(tmp_path: Path):
    d = load_domain(init_demo(tmp_path / "d", servers=3, bcs=3, objects=100, coverage="each"))
    covering = [d.covering_bcs(s) for s in d.names("server")]
    assert covering == [["bcs1"], ["bcs2"], ["bcs3"]]


def test_coverage_each_leaves_a_spare_bcs_covering_nothing(tmp_path: Path):
    d = load_domain(init_demo(tmp_path / "d", servers=1, bcs=2, objects=100, coverage="each"))
    assert d.covering_bcs("srv1") == ["bcs1"]
    assert d.covered_servers("bcs2") == []


def test_base_port_numbers_nodes_then_api_then_flower(tmp_path: Path):
    d = load_domain(init_demo(tmp_path / "d", servers=2, bcs=1, clients=1, objects=100,
                              base_port=17000))
    assert [d.node(n).port for n in d.names()] == [17000, 17001, 17002, 17003]
    assert d.control.api == "127.0.0.1:17004"
    assert d.control.flower == "127.0.0.1:17005"


def test_broker_and_ledger_given_are_written_and_resolve(tmp_path: Path):
    d = load_domain(init_demo(tmp_path / "d", objects=60, broker="redis://10.0.0.9:6380/2",
                              ledger='sqlite:///state/led"ger.db'))
    assert d.control.broker == "redis://10.0.0.9:6380/2"
    assert d.ledger_url == f'sqlite:///{(tmp_path / "d").resolve()}/state/led"ger.db'


def test_one_hundred_thousand_objects_are_written_in_seconds(tmp_path: Path):
    start = time.perf_counter()
    d = load_domain(init_demo(tmp_path / "big", servers=2, bcs=1, clients=2, objects=100_000))
    elapsed = time.perf_counter() - start
    with tables.connect(d.tables_url("cl2")) as conn:
        total = sum(tables.row_counts(conn).values())
        hosted = tables.hosted_counts(conn)
    assert abs(total - 100_000) <= 3_000
    assert set(hosted) == {"srv1", "srv2"}
    assert elapsed < 15, f"{elapsed:.1f} s"


def test_existing_domain_directory_is_refused_and_left_untouched(tmp_path: Path):
    path = init_demo(tmp_path / "d", objects=60)
    before = path.read_bytes()
    token = (tmp_path / "d" / "secrets" / "api.token").read_bytes()
    with pytest.raises(DemoError) as err:
        init_demo(tmp_path / "d", objects=60)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, CosfailError)
    assert path.read_bytes() == before
    assert (tmp_path / "d" / "secrets" / "api.token").read_bytes() == token


def test_directory_left_by_a_failed_run_without_domain_file_is_written_over(tmp_path: Path):
    first = init_demo(tmp_path / "d", objects=60)
    first.unlink()  # as if the run had died before its last step
    d = load_domain(init_demo(tmp_path / "d", servers=2, objects=120))
    with tables.connect(d.tables_url("srv1")) as conn:
        assert sum(tables.row_counts(conn).values()) == 120


def test_directory_holding_a_ledger_is_refused_as_its_state_would_overrule(tmp_path: Path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "ledger.db").write_bytes(b"")
    with pytest.raises(DemoError, match="ledger"):
        init_demo(tmp_path / "d", objects=60)
    assert not (tmp_path / "d" / "domain.toml").exists()


def test_a_file_where_the_directory_should_be_is_refused(tmp_path: Path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DemoError, match="not a directory"):
        init_demo(tmp_path / "f")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"servers": 0}, "servers"),
        ({"bcs": 0}, "bcs"),
        ({"clients": -1}, "clients"),
        ({"servers": 3, "objects": 17}, "objects"),
        ({"objects": "1000"}, "objects"),
        ({"servers": True}, "servers"),
        ({"coverage": "all"}, "coverage"),
        ({"base_port": 0}, "base_port"),
        ({"base_port": 65534}, "base_port"),
        ({"broker": ""}, "broker"),
        ({"ledger": " "}, "ledger"),
        ({"device": "printer in room 2"}, "device"),
    ],
)
def test_invalid_arguments_are_refused_before_anything_is_written(
    tmp_path: Path, kwargs: dict, fragment: str
):
    with pytest.raises(DemoError, match=fragment):
        init_demo(tmp_path / "d", **kwargs)
    assert not (tmp_path / "d").exists()


def test_smallest_demo_gives_each_server_one_row_per_table(tmp_path: Path):
    d = load_domain(init_demo(tmp_path / "d", servers=2, objects=12))
    with tables.connect(d.tables_url("srv2")) as conn:
        assert tables.row_counts(conn) == {t.name: 2 for t in tables.OBJECT_TABLES}


def test_split_budget_always_adds_up_with_every_table_present():
    for budget in range(6, 3000):
        counts = split_budget(budget)
        assert sum(counts.values()) == budget
        assert min(counts.values()) >= 1


def test_generation_is_deterministic():
    assert generate_rows(["srv1", "srv2"], 500) == generate_rows(["srv1", "srv2"], 500)

