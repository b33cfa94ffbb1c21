"""domain.toml: invalid files are refused with one clear line; valid ones resolve paths."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cosfail.cosprint.domain import load_domain, parse_domain
from cosfail.cosprint.errors import DomainFileError, UnknownNodeError

BASE: dict = {
    "control": {"name": "unit"},
    "ledger": {"url": "sqlite:///state/ledger.db"},
    "node": [
        {"name": "srv1", "role": "server", "master": True, "home": "nodes/srv1", "port": 7001},
        {"name": "srv2", "role": "server", "home": "nodes/srv2", "port": 7002},
        {"name": "bcs1", "role": "bcs", "home": "nodes/bcs1", "port": 7003},
        {"name": "bcs2", "role": "bcs", "home": "nodes/bcs2", "port": 7004,
         "backup_area": "areas/bcs2"},
        {"name": "cl1", "role": "client", "home": "nodes/cl1", "port": 7005,
         "tables": "sqlite:///db/cl1.db"},
    ],
    "coverage": [
        {"bcs": "bcs1", "servers": ["srv1", "srv2"]},
        {"bcs": "bcs2", "servers": ["srv2"]},
    ],
}
NODE = {n["name"]: i for i, n in enumerate(BASE["node"])}


def literal(value: object) -> str:
    """A TOML value: JSON's strings, numbers, booleans and arrays are TOML's too."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {literal(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def render(doc: dict) -> str:
    """TOML for `doc`: top-level dicts become tables, lists of dicts arrays of tables."""
    def pairs(table: dict) -> list[str]:
        return [f"{json.dumps(k)} = {literal(v)}" for k, v in table.items()]

    lines: list[str] = []
    for key, value in doc.items():
        if isinstance(value, list):
            for entry in value:
                lines += [f"[[{key}]]", *pairs(entry), ""]
        else:
            lines += [f"[{key}]", *pairs(value), ""]
    return "\n".join(lines)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "domain.toml"
    path.write_text(text)
    return path


def variant(change: Callable[[dict], object]) -> dict:
    doc = copy.deepcopy(BASE)
    change(doc)
    return doc


def node(doc: dict, name: str) -> dict:
    return doc["node"][NODE[name]]


def refused(path: Path) -> str:
    """The one-line message with which loading `path` is refused."""
    with pytest.raises(DomainFileError) as err:
        load_domain(path)
    message = str(err.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    return message


# ----- invalid files -------------------------------------------------------------------

INVALID: list[tuple[str, Callable[[dict], object], list[str]]] = [
    ("coverage_unknown_server",
     lambda d: d["coverage"][0]["servers"].append("srv9"), ["coverage[0]", "unknown node 'srv9'"]),
    ("coverage_unknown_bcs",
     lambda d: d["coverage"][1].update(bcs="bcs9"), ["coverage[1]", "unknown node 'bcs9'"]),
    ("bcs_covering_a_client",
     lambda d: d["coverage"][1]["servers"].append("cl1"), ["'cl1' is a client, not a server"]),
    ("bcs_covering_a_bcs",
     lambda d: d["coverage"][0]["servers"].append("bcs2"), ["'bcs2' is a bcs, not a server"]),
    ("coverage_naming_a_client_as_bcs",
     lambda d: d["coverage"][1].update(bcs="cl1"), ["'cl1' is a client, not a bcs"]),
    ("coverage_naming_a_server_as_bcs",
     lambda d: d["coverage"][1].update(bcs="srv1"), ["'srv1' is a server, not a bcs"]),
    ("coverage_with_no_servers",
     lambda d: d["coverage"][1].update(servers=[]), ["coverage[1].servers"]),
    ("coverage_unknown_key",
     lambda d: d["coverage"][0].update(priority=1), ["coverage[0].priority", "Extra inputs"]),
    ("two_masters",
     lambda d: node(d, "srv2").update(master=True), ["two or more masters (srv1, srv2)"]),
    ("no_master", lambda d: node(d, "srv1").pop("master"), ["no master"]),
    ("bcs_as_master",
     lambda d: (node(d, "srv1").pop("master"), node(d, "bcs1").update(master=True)),
     ["'bcs1'", "only a server can be master"]),
    ("duplicate_names",
     lambda d: node(d, "bcs2").update(name="srv2"), ["node[3]", "duplicate node name 'srv2'"]),
    ("duplicate_port",
     lambda d: node(d, "cl1").update(port=7002), ["'cl1'", "port 7002 already used by 'srv2'"]),
    ("server_covered_by_no_bcs",
     lambda d: (d["coverage"][0]["servers"].remove("srv1")),
     ["server 'srv1' is covered by no bcs"]),
    ("no_coverage_at_all", lambda d: d.pop("coverage"), ["is covered by no bcs"]),
    ("no_nodes", lambda d: (d.pop("node"), d.pop("coverage")), ["node", "Field required"]),
    ("missing_home", lambda d: node(d, "srv2").pop("home"), ["node[1] 'srv2'.home", "required"]),
    ("missing_port", lambda d: node(d, "bcs1").pop("port"), ["node[2] 'bcs1'.port", "required"]),
    ("port_as_string", lambda d: node(d, "srv1").update(port="7001"), ["node[0] 'srv1'.port"]),
    ("port_zero", lambda d: node(d, "srv1").update(port=0), ["node[0] 'srv1'.port"]),
    ("port_too_high", lambda d: node(d, "srv1").update(port=70000), ["node[0] 'srv1'.port"]),
    ("port_as_float", lambda d: node(d, "srv1").update(port=7001.0), ["node[0] 'srv1'.port"]),
    ("role_not_in_set", lambda d: node(d, "cl1").update(role="slave"), ["node[4] 'cl1'.role"]),
    ("master_as_string", lambda d: node(d, "srv1").update(master="yes"), ["'srv1'.master"]),
    ("unknown_node_key",
     lambda d: node(d, "srv2").update(colour="red"), ["node[1] 'srv2'.colour", "Extra inputs"]),
    ("unknown_driver", lambda d: node(d, "srv2").update(driver="lprng"), ["'srv2'.driver"]),
    ("backup_area_on_a_server",
     lambda d: node(d, "srv2").update(backup_area="x"), ["'srv2'", "backup_area belongs to a bcs"]),
    ("unknown_control_key", lambda d: d["control"].update(brokr="redis://x"), ["control.brokr"]),
    ("unsafe_domain_name", lambda d: d["control"].update(name="my domain"), ["control.name"]),
    ("retention_zero", lambda d: d["control"].update(retention=0), ["control.retention"]),
    ("ledger_in_both_places",
     lambda d: d["control"].update(ledger="sqlite:///other.db"),
     ["both [control] ledger and [ledger] url are set"]),
    ("unknown_ledger_key", lambda d: d["ledger"].update(path="x.db"), ["ledger.path"]),
    ("unknown_top_level_table", lambda d: d.update(printers={"a": 1}), ["printers"]),
    ("ssh_without_key_file",
     lambda d: node(d, "srv2").update(ssh={"host": "h", "known_hosts": "kh"}),
     ["'srv2'.ssh.key_file"]),
]


@pytest.mark.parametrize(
    ("change", "fragments"), [(c, f) for _, c, f in INVALID], ids=[i for i, _, _ in INVALID]
)
def test_invalid_domain_file_is_refused_with_one_line_naming_the_problem(
    tmp_path: Path, change: Callable[[dict], object], fragments: list[str]
):
    message = refused(write(tmp_path, render(variant(change))))
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    "bad_name", ["a;rm -rf", "../x", "Srv1", "srv 1", "", "1srv", "x" * 41, "srv1\nrole"]
)
def test_unsafe_node_name_is_refused_naming_the_name(tmp_path: Path, bad_name: str):
    doc = variant(lambda d: node(d, "cl1").update(name=bad_name))
    message = refused(write(tmp_path, render(doc)))
    assert "node[4]" in message and ".name" in message and "not allowed" in message, message
    assert repr(bad_name) in message, message


def test_malformed_toml_is_refused_as_not_valid_toml(tmp_path: Path):
    message = refused(write(tmp_path, render(BASE) + "\n[[node]\nname = \n"))
    assert "not valid TOML" in message and "line" in message, message


def test_missing_file_is_refused_naming_the_path(tmp_path: Path):
    message = refused(tmp_path / "nowhere" / "domain.toml")
    assert "no such domain file" in message, message


def test_directory_instead_of_file_is_refused(tmp_path: Path):
    (tmp_path / "domain.toml").mkdir()
    assert "cannot read" in refused(tmp_path / "domain.toml")


def test_non_utf8_file_is_refused_not_crashing(tmp_path: Path):
    path = tmp_path / "domain.toml"
    path.write_bytes(b"\xff\xfe[control]\n")
    assert "not UTF-8" in refused(path)


def test_unknown_key_holding_a_newline_still_gives_one_line(tmp_path: Path):
    doc = variant(lambda d: node(d, "srv1").update({"evil\nkey": 1}))
    assert "Extra inputs" in refused(write(tmp_path, render(doc)))


def test_parse_domain_refuses_a_dict_without_reading_a_file(tmp_path: Path):
    doc = variant(lambda d: node(d, "srv2").update(master=True))
    with pytest.raises(DomainFileError, match=r"two or more masters") as err:
        parse_domain(doc, tmp_path / "x.toml")
    assert "\n" not in str(err.value) and "x.toml" in str(err.value)


# ----- valid files ---------------------------------------------------------------------


@pytest.fixture
def domain(tmp_path: Path):
    return load_domain(write(tmp_path, render(BASE)))


def test_valid_file_loads_nodes_roles_and_master(domain):
    assert domain.names() == ["srv1", "srv2", "bcs1", "bcs2", "cl1"]
    assert domain.names("server") == ["srv1", "srv2"]
    assert domain.names("bcs") == ["bcs1", "bcs2"]
    assert domain.names("client") == ["cl1"]
    assert domain.initial_master == "srv1"
    assert domain.node("cl1").role == "client"
    assert domain.control.name == "unit"


def test_covering_bcs_and_covered_servers_follow_coverage_order(domain):
    assert domain.covering_bcs("srv1") == ["bcs1"]
    assert domain.covering_bcs("srv2") == ["bcs1", "bcs2"]
    assert domain.covering_bcs("cl1") == []
    assert domain.covered_servers("bcs1") == ["srv1", "srv2"]
    assert domain.covered_servers("bcs2") == ["srv2"]


def test_unknown_node_lookup_raises_unknown_node_error_naming_it(domain):
    with pytest.raises(UnknownNodeError) as err:
        domain.node("srv9")
    assert "'srv9'" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UnknownNodeError):
        domain.home("srv9")


def test_paths_resolve_against_the_domain_file_directory_not_the_cwd(
    domain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    base = tmp_path.resolve()
    assert domain.home("srv1") == base / "nodes" / "srv1"
    assert domain.tables_url("srv1") == f"sqlite:///{base}/nodes/srv1/tables.db"
    assert domain.tables_url("cl1") == f"sqlite:///{base}/db/cl1.db"
    assert domain.backup_area("bcs1") == base / "nodes" / "bcs1" / "backup"
    assert domain.backup_area("bcs2") == base / "areas" / "bcs2"
    assert domain.spool_dir("srv2") == base / "nodes" / "srv2" / "spool"
    assert domain.ledger_url == f"sqlite:///{base}/state/ledger.db"


def test_a_ledger_named_where_older_files_name_it_is_still_used(tmp_path: Path):
    doc = variant(lambda d: (d.pop("ledger"),
                             d["control"].update(ledger="postgresql+psycopg://u@db/ledger")))
    assert load_domain(write(tmp_path, render(doc))).ledger_url == "postgresql+psycopg://u@db/ledger"


def test_absolute_and_non_sqlite_table_urls_pass_through(tmp_path: Path):
    doc = variant(lambda d: (
        node(d, "cl1").update(tables="postgresql+psycopg://u@db/cosprint"),
        node(d, "bcs1").update(tables="sqlite:////var/lib/cosprint/bcs1.db"),
    ))
    domain = load_domain(write(tmp_path, render(doc)))
    assert domain.tables_url("cl1") == "postgresql+psycopg://u@db/cosprint"
    assert domain.tables_url("bcs1") == "sqlite:////var/lib/cosprint/bcs1.db"


def test_same_port_on_different_hosts_is_allowed(tmp_path: Path):
    doc = variant(lambda d: node(d, "cl1").update(port=7001, host="10.0.0.5"))
    domain = load_domain(write(tmp_path, render(doc)))
    assert domain.service_url("cl1") == "http://10.0.0.5:7001"
    assert domain.service_url("srv1") == "http://127.0.0.1:7001"


def test_control_defaults_apply_when_control_is_absent(tmp_path: Path):
    doc = variant(lambda d: d.pop("control"))
    domain = load_domain(write(tmp_path, render(doc)))
    assert domain.control.name == "cosprint"
    assert domain.control.retention >= 1 and domain.control.backup_interval > 0


def test_cosfail_domain_environment_variable_names_the_default_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    path = write(tmp_path, render(BASE))
    monkeypatch.setenv("COSFAIL_DOMAIN", str(path))
    assert load_domain().path == path


def test_the_site_domain_of_the_deployment_guide_loads_with_every_node_on_its_own_host(
        tmp_path: Path):
    guide = (Path(__file__).parent.parent / "docs" / "deploy.md").read_text()
    [block] = [b.split("\n", 1)[1] for b in guide.split("```")[1::2] if b.startswith("toml")]
    (tmp_path / "domain.toml").write_text(block)
    d = load_domain(tmp_path / "domain.toml")
    assert d.ledger_url.startswith("postgresql+psycopg://")
    assert len({d.address(n) for n in d.names()}) == len(d.names()) == 3
    assert {n for n in d.names() if d.node(n).ssh} == {"srv1", "bcs1"}
