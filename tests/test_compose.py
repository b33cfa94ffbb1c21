"""docker-compose.yml: valid for docker-compose, and every service runs natively.

There is no Docker engine here. So the compose file is checked in two ways:

- `docker-compose config` (Debian's docker-compose 1.29) accepts it, and rejects copies
  with the mistakes an edit makes: an unknown key, an undeclared named volume, a secret
  nobody defined. (1.29's `config` lets an undefined secret through; `up` refuses it in
  `compose.project.get_secrets`, which the test runs offline on the same file.)
- every cosfail service's `command` is started natively with the same arguments, except
  that `-d /etc/cosfail/domain.toml` names a native copy of deploy/domain.toml in which
  what the containers mount (node homes, secrets) and reach (redis, postgres, ports)
  points at their native counterparts: the tests' redis-server, the local PostgreSQL
  (trust auth, database `test`, a schema of its own), directories under tmp, the secret
  files deploy/make-secrets writes, free ports. Then its `healthcheck.test`, rewritten
  the same way, must pass. redis and postgres are the real local servers; their images
  must be pinned to the versions that run here.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from conftest import REPO, RedisServer, free_port
from cosfail.cosprint.domain import load_domain
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from sqlalchemy.engine import make_url

pytestmark = pytest.mark.timeout(180)

COMPOSE_FILE = "docker-compose.yml"
CONTAINER_DOMAIN = "/etc/cosfail/domain.toml"
INFRA = ("pod", "redis", "postgres")
NODES = ("srv1", "srv2", "bcs1", "cl1", "cl2")
COSFAIL_SERVICES = ("control", "api", "flower", "beat", "watch", *NODES)
COSFAIL_BIN = Path(sys.executable).parent / "cosfail"
# seconds for every native service to pass its healthcheck: about 30 s on an idle
# 2-core machine; the margin is for a busy one
STACK_DEADLINE = 90.0
PINNED = re.compile(r"^[a-z0-9._/-]+:(\d+)\.(\d+)(\.\d+)?(-[a-z0-9.]+)?$")

# What `docker-compose up` checks about secrets before it creates anything
# (compose/project.py, Project.from_config), run on its own: it needs no engine.
SECRETS_CHECK = """
import sys
from compose.config import config
from compose.config.environment import Environment
from compose.project import get_secrets

base, name = sys.argv[1], sys.argv[2]
cfg = config.load(config.find(base, [name], Environment.from_env_file(base)))
for service in cfg.services:
    get_secrets(service["name"], service.get("secrets") or [], cfg.secrets)
"""


# ----- docker-compose -------------------------------------------------------------------
def docker_compose() -> str:
    found = shutil.which("docker-compose")
    assert found, "docker-compose is not installed (.ci/run installs Debian's docker-compose)"
    return found


def compose_env() -> dict[str, str]:
    """The environment without COMPOSE_* or COSFAIL_* settings that would change the file."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "COSFAIL_"))}


def compose(project: Path, *args: str,
            file: str = COMPOSE_FILE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        [docker_compose(), "-f", str(project / file), *args], cwd=project,
        capture_output=True, text=True, timeout=60, env=compose_env())


def secrets_check(project: Path, file: str = COMPOSE_FILE) -> subprocess.CompletedProcess[str]:
    """docker-compose's own secret check, with docker-compose's own interpreter."""
    interpreter = Path(docker_compose()).read_text().splitlines()[0].removeprefix("#!").split()
    return subprocess.run(  # noqa: S603
        [*interpreter, "-c", SECRETS_CHECK, str(project), file], cwd=project,
        capture_output=True, text=True, timeout=60, env=compose_env())


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the compose project whose secret files deploy/make-secrets made, as the
    operator does (deploy/README); the repo's own deploy/secrets/ is never touched."""
    dest = tmp_path_factory.mktemp("compose") / "cosfail"
    dest.mkdir()
    for name in (COMPOSE_FILE, "Dockerfile", ".dockerignore"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "deploy", dest / "deploy",
                    ignore=shutil.ignore_patterns("secrets", "cosfail.env"))
    done = subprocess.run(["sh", str(dest / "deploy" / "make-secrets")],  # noqa: S603, S607
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return dest


@pytest.fixture(scope="module")
def config(project: Path) -> dict[str, Any]:
    """The file as docker-compose reads it (anchors merged, variables interpolated)."""
    done = compose(project, "config")
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


# ----- the file -------------------------------------------------------------------------
def test_config_accepts_the_file(project: Path, config: dict[str, Any]) -> None:
    assert set(config["services"]) == {*INFRA, *COSFAIL_SERVICES}
    done = secrets_check(project)
    assert done.returncode == 0, done.stderr
    # deploy/make-secrets made every file a secret names: nothing to warn about
    assert "undefined secret file" not in done.stderr, done.stderr
    # with the example env file too, whose values it interpolates
    done = compose(project, "--env-file", "deploy/cosfail.env.example", "config")
    assert done.returncode == 0, done.stderr
    ports = yaml.safe_load(done.stdout)["services"]["pod"]["ports"]
    assert ports == ["127.0.0.1:8700:8700/tcp", "127.0.0.1:5555:5555/tcp"]
    # the pod publishes the ports the API and Flower listen on, on every interface of it
    control = tomllib.loads((project / "deploy" / "domain.toml").read_text())["control"]
    published = {p.split(":")[2].removesuffix("/tcp") for p in config["services"]["pod"]["ports"]}
    assert {control["api"], control["flower"]} == {f"0.0.0.0:{p}" for p in published}


def mutate(project: Path, name: str, change: Any) -> str:
    data = yaml.safe_load((project / COMPOSE_FILE).read_text())
    change(data)
    (project / name).write_text(yaml.safe_dump(data, sort_keys=False))
    return name


def _unknown_key(d: dict[str, Any]) -> None:
    d["services"]["srv1"]["restart_policy"] = "always"


def _undeclared_volume(d: dict[str, Any]) -> None:
    d["services"]["bcs1"]["volumes"].append("home-bcs2:/var/lib/cosfail/bcs2")


def _undefined_secret(d: dict[str, Any]) -> None:
    del d["secrets"]["pgpass"]


def _unknown_healthcheck_key(d: dict[str, Any]) -> None:
    d["services"]["api"]["healthcheck"]["intervals"] = "5s"


def _undefined_dependency(d: dict[str, Any]) -> None:
    d["services"]["api"]["depends_on"]["ledger"] = {"condition": "service_healthy"}


@pytest.mark.parametrize(("change", "named"), [
    (_unknown_key, "restart_policy"), (_undeclared_volume, "home-bcs2"),
    (_undefined_secret, "pgpass"), (_unknown_healthcheck_key, "intervals"),
    (_undefined_dependency, "ledger"),
], ids=lambda v: v.__name__.strip("_") if callable(v) else "")
def test_config_rejects_a_broken_copy(project: Path, change: Any, named: str) -> None:
    name = mutate(project, f"broken-{change.__name__.strip('_')}.yml", change)
    done = compose(project, "config", file=name)
    if done.returncode == 0:  # 1.29's config lets an undefined secret through: `up` would not
        done = secrets_check(project, name)
        assert "ConfigurationError" in done.stderr or done.returncode == 0, done.stderr
    assert done.returncode != 0, f"{change.__name__}: accepted\n{done.stdout[-500:]}"
    assert named in done.stderr, done.stderr  # the message names the mistake


def test_secrets_are_files_outside_the_repo_history(project: Path,
                                                    config: dict[str, Any]) -> None:
    secrets_dir = project / "deploy" / "secrets"
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    for name, spec in config["secrets"].items():
        path = Path(spec["file"])
        assert path.parent == secrets_dir, (name, path)
        # libpq ignores a PGPASSFILE that group or others may read
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        ignored = subprocess.run(["git", "check-ignore", "-q", f"deploy/secrets/{name}"],  # noqa: S603, S607
                                 cwd=REPO, check=False)
        assert ignored.returncode == 0, f"deploy/secrets/{name} is not gitignored"
    # no secret in the environment of any service: only *_FILE names of files
    for svc, spec in config["services"].items():
        for key in spec.get("environment") or {}:
            if re.search(r"PASSWORD|TOKEN|SECRET|AUTH", key):
                assert key.endswith("_FILE"), (svc, key)
    # nor in the domain file: the ledger URL has no password, the rest are file paths
    domain = tomllib.loads((project / "deploy" / "domain.toml").read_text())
    assert make_url(domain["ledger"]["url"]).password is None
    pgpass = (secrets_dir / "pgpass").read_text().strip().split(":")
    ledger = make_url(domain["ledger"]["url"])
    assert pgpass[:4] == [ledger.host, str(ledger.port), ledger.database, ledger.username]
    assert pgpass[4] == (secrets_dir / "postgres_password").read_text().strip()
    assert config["services"]["postgres"]["environment"]["POSTGRES_USER"] == ledger.username
    assert config["services"]["postgres"]["environment"]["POSTGRES_DB"] == ledger.database


def test_images_are_pinned_to_what_runs_here(config: dict[str, Any]) -> None:
    services = config["services"]
    for name in INFRA:
        assert PINNED.match(services[name]["image"]), services[name]["image"]
    redis_v = subprocess.run(["redis-server", "--version"], capture_output=True,  # noqa: S603, S607
                             text=True, check=True).stdout
    local_redis = re.search(r"v=(\d+\.\d+)", redis_v)
    assert local_redis and services["redis"]["image"].startswith(
        f"redis:{local_redis.group(1)}."), (services["redis"]["image"], redis_v)
    local_pg = subprocess.run(["psql", "-h", "127.0.0.1", "-U", postgres_user(), "-d", "test",  # noqa: S603, S607
                               "-Atc", "show server_version"], capture_output=True, text=True,
                              check=True).stdout.strip()
    major = local_pg.split(".")[0]
    assert services["postgres"]["image"].startswith(f"postgres:{major}."), local_pg
    # the cosfail services run the image of this version, built from the Dockerfile
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for name in COSFAIL_SERVICES:
        assert services[name]["image"] == f"cosfail:{version}", name
        assert Path(services[name]["build"]["context"]).joinpath("Dockerfile").is_file()


def test_dockerfile_builds_a_non_root_image_with_everything_the_code_reads() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert "COPY requirements.lock ./" in text and "!requirements.lock" in (
        REPO / ".dockerignore").read_text()
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0"), user
    # the build context is what the Dockerfile copies, never deploy/secrets or a venv
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", patterns
    assert not [p for p in patterns if p.startswith(("!deploy", "!.venv", "!tests"))]
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    # the source directory of each installed top package: cosfail/ and those it maps
    sources = {"cosfail": "cosfail", **setuptools["package-dir"]}
    # a package the Dockerfile leaves out installs nowhere in the image: `cosfail` fails
    for src in sources.values():
        assert f"COPY {src} ./{src}\n" in text and f"!{src}" in patterns, src
    # `pip install .` ships only what setuptools is told about: every non-Python file
    # a package reads next to itself must match [tool.setuptools.package-data]
    package_data = setuptools.get("package-data", {})
    for pkg, src in sources.items():
        for f in (REPO / src).rglob("*"):
            if f.is_file() and f.suffix not in (".py", ".pyc") and "__pycache__" not in f.parts:
                patterns = package_data.get(pkg, [])
                assert any(f.relative_to(REPO / src).match(p) for p in patterns), (
                    f"{f.relative_to(REPO)} would be missing from the image: add it to "
                    "[tool.setuptools.package-data] in pyproject.toml")


def locked() -> dict[str, tuple[str, int]]:
    """requirements.lock: package → (pinned version, how many hashes)."""
    pins: dict[str, tuple[str, int]] = {}
    name = ""
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line):
            name = canonicalize_name(m.group(1))
            pins[name] = (m.group(2), 0)
        elif "--hash=sha256:" in line:
            version, hashes = pins[name]
            pins[name] = (version, hashes + 1)
    return pins


def test_the_image_installs_every_dependency_at_its_locked_version_and_hash_and_cups():
    text = (REPO / "Dockerfile").read_text()
    locked_install = text.index("pip install --require-hashes --no-deps -r requirements.lock")
    assert locked_install < text.index("pip install --no-deps . && pip check")
    assert re.search(r"apt-get install -y --no-install-recommends cups-daemon cups-client "
                     r"cups-bsd", text)
    pins = locked()
    assert pins and all(hashes for _, hashes in pins.values()), pins
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in
              (*project["dependencies"], *project["optional-dependencies"]["postgres"])]
    for req in wanted:  # each direct dependency, within pyproject's range, with its extras
        name = canonicalize_name(req.name)
        assert name in pins and req.specifier.contains(pins[name][0]), (req, pins.get(name))
    assert {"redis", "psycopg-binary"} <= pins.keys()  # celery[redis], psycopg[binary]


def test_health_refuses_bad_input() -> None:
    for args in (["bogus"], ["worker"], ["control", "--node", "srv1"]):
        done = subprocess.run([str(COSFAIL_BIN), "health", *args, "-d",  # noqa: S603
                               str(REPO / "deploy" / "domain.toml")],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stderr.startswith("cosfail: "), done.stderr


# ----- the services, natively -----------------------------------------------------------
def postgres_user() -> str:
    import psycopg

    for user in ("root", "postgres"):
        try:
            psycopg.connect(f"host=127.0.0.1 port=5432 dbname=test user={user}",
                            connect_timeout=3).close()
            return user
        except psycopg.OperationalError:
            continue
    pytest.fail("no local PostgreSQL at 127.0.0.1:5432 with database test (user root or postgres)")


def mounts(spec: dict[str, Any], config: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Container path → (source, mode) of a service: volumes and secrets."""
    found: dict[str, tuple[str, str]] = {}
    for vol in spec.get("volumes") or []:
        source, target, *mode = vol.split(":")
        found[target] = (source, mode[0] if mode else "rw")
    for secret in spec.get("secrets") or []:
        target = secret.get("target") or secret["source"]
        path = target if target.startswith("/") else f"/run/secrets/{target}"
        found[path] = (config["secrets"][secret["source"]]["file"], "ro")
    return found


@dataclass
class Native:
    """The compose project's cosfail services as native processes."""

    config: dict[str, Any]
    root: Path
    redis: RedisServer
    domain_file: Path = field(init=False)
    volumes: Path = field(init=False)
    workdir: Path = field(init=False)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    health: dict[str, tuple[int, str]] = field(default_factory=dict)
    unhealthy_before: dict[str, tuple[int, str]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.domain_file = self.root / "etc" / "domain.toml"
        self.volumes = self.root / "volumes"
        self.workdir = self.root / "workdir"  # the image's WORKDIR
        self.workdir.mkdir(parents=True)
        self.paths = self._path_map()

    def _path_map(self) -> dict[str, Path]:
        """Every container mount point of every service → its native path. A mount point
        names the same thing in every service that has it (the domain copy is shared)."""
        paths: dict[str, Path] = {}
        seen: dict[str, str] = {}
        for name, spec in self.config["services"].items():
            for target, (source, _mode) in mounts(spec, self.config).items():
                assert seen.setdefault(target, source) == source, (
                    f"{target} is {seen[target]} in one service, {source} in {name}")
                if target == CONTAINER_DOMAIN:
                    paths[target] = self.domain_file
                elif source.startswith("/"):
                    paths[target] = Path(source)  # a bind mount or a secret file
                else:
                    assert source in self.config["volumes"], source
                    paths[target] = self.volumes / source
                    paths[target].mkdir(parents=True, exist_ok=True)
        return paths

    def native(self, value: str) -> str:
        """A container path as the native processes see it; anything else unchanged."""
        if not value.startswith("/"):
            return value
        p = PurePosixPath(value)
        for target, native in self.paths.items():
            if p == PurePosixPath(target) or PurePosixPath(target) in p.parents:
                return str(native / p.relative_to(target))
        return value

    def argv(self, argv: list[str]) -> list[str]:
        if argv[0] == "cosfail":
            return [str(COSFAIL_BIN), *(self.native(a) for a in argv[1:])]
        return [argv[0], *(self.native(a) for a in argv[1:])]

    def env(self, spec: dict[str, Any]) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("COSFAIL_", "PG"))}
        base["PATH"] = f"{COSFAIL_BIN.parent}{os.pathsep}{base.get('PATH', '')}"
        for key, value in (spec.get("environment") or {}).items():
            base[key] = self.native(str(value))
        return base

    def write_domain(self, compose_domain: Path, ledger: str) -> None:
        """deploy/domain.toml with native addresses and paths, otherwise as it is."""
        text = compose_domain.read_text()
        raw = tomllib.loads(text)
        control = raw["control"]
        swap = {control["broker"]: self.redis.url, raw["ledger"]["url"]: ledger,
                control["api"]: f"127.0.0.1:{free_port()}",
                control["flower"]: f"127.0.0.1:{free_port()}"}
        for key in ("token_file", "flower_auth_file"):
            swap[control[key]] = self.native(control[key])
        for node in raw["node"]:
            swap[node["home"]] = self.native(node["home"])
            assert swap[node["home"]] != node["home"], f"{node['name']}'s home is mounted nowhere"
        for old, new in swap.items():
            assert text.count(f'"{old}"') == 1, old
            text = text.replace(f'"{old}"', f'"{new}"')
        for node in raw["node"]:
            text, n = re.subn(rf"^port = {node['port']}$", f"port = {free_port()}", text,
                              flags=re.M)
            assert n == 1, node["name"]
        self.domain_file.parent.mkdir(parents=True, exist_ok=True)
        self.domain_file.write_text(text)
        load_domain(self.domain_file)  # it must still be a valid domain

    def seed_homes(self) -> None:
        """What deploy/README has the operator do once: a demo domain's node homes
        (tables, designation srv1@1) copied into the node home volumes."""
        seed = self.root / "seed"
        readme = (REPO / "deploy" / "README").read_text()
        args = ["--servers", "2", "--bcs", "1", "--clients", "2"]
        assert f"cosfail init-demo /tmp/seed {' '.join(args)} " in readme
        done = subprocess.run([str(COSFAIL_BIN), "init-demo", str(seed), *args,  # noqa: S603
                               "--objects", "600"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        domain = load_domain(self.domain_file)
        assert sorted(p.name for p in (seed / "nodes").iterdir()) == sorted(domain.names())
        for node in domain.names():
            shutil.copytree(seed / "nodes" / node, domain.home(node), dirs_exist_ok=True)

    # ----- processes ---------------------------------------------------------------------
    def start(self, name: str) -> None:
        spec = self.config["services"][name]
        log = open(self.root / f"{name}.log", "ab")  # closed once the child has it
        self.procs[name] = subprocess.Popen(  # noqa: S603
            self.argv(spec["command"]), env=self.env(spec), cwd=self.workdir, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def healthcheck(self, name: str) -> tuple[int, str]:
        spec = self.config["services"][name]
        test = spec["healthcheck"]["test"]
        assert test[0] == "CMD", f"{name}: healthcheck is not exec form: {test}"
        argv = self.argv(test[1:])
        if name == "redis":  # the real local redis-server is the tests' own, on its port
            argv[1:1] = ["-h", "127.0.0.1", "-p", str(self.redis.port)]
        timeout = seconds(spec["healthcheck"].get("timeout", "30s"))
        try:
            done = subprocess.run(argv, env=self.env(spec), cwd=self.workdir,  # noqa: S603
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return -1, f"no answer within the healthcheck's timeout ({timeout:g} s)"
        return done.returncode, (done.stdout + done.stderr).strip()[-500:]

    def wait_healthy(self, name: str, deadline: float) -> None:
        while True:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                self.health[name] = (-1, f"exited with status {proc.returncode}: "
                                         f"{self.log_tail(name)}")
                return
            self.health[name] = self.healthcheck(name)
            if self.health[name][0] == 0 or time.monotonic() > deadline:
                return
            time.sleep(0.5)

    def log_tail(self, name: str) -> str:
        try:
            return (self.root / f"{name}.log").read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def stop(self) -> list[str]:
        """SIGTERM every process group, SIGKILL what is left after 15 s; then the node
        services (their own sessions) and anything else naming this native domain.
        Returns what had to be killed after that."""
        for proc in self.procs.values():
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self.domain_file.exists():
            from cosfail.cosprint.drivers import driver_for

            domain = load_domain(self.domain_file)
            for node in domain.names():
                driver_for(domain, node).stop(timeout=5)
        leftovers = []
        for pid, cmdline in _processes_naming(f"{self.root}{os.sep}"):
            leftovers.append(f"{pid} {cmdline}")
            _signal_group(pid, signal.SIGKILL, group=False)
        return leftovers


def seconds(value: str | int | float) -> float:
    if isinstance(value, int | float):
        return float(value)
    m = re.fullmatch(r"(\d+)(ms|s|m)", value)
    assert m, value
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]


def _signal_group(pid: int, sig: signal.Signals, group: bool = True) -> None:
    try:
        os.killpg(pid, sig) if group else os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _processes_naming(text: str) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append((int(entry.name), cmdline.strip()))
    return found


@pytest.fixture(scope="module")
def native(project: Path, config: dict[str, Any], redis_server: RedisServer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Native]:
    """Every cosfail service started natively, in depends_on order, each awaited until
    its healthcheck passes (or the deadline); all of them stopped at the end."""
    import psycopg

    redis_server.flush()
    user = postgres_user()
    schema = f"compose_{uuid.uuid4().hex[:10]}"
    admin = f"host=127.0.0.1 port=5432 dbname=test user={user}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    compose_ledger = make_url(tomllib.loads(
        (project / "deploy" / "domain.toml").read_text())["ledger"]["url"])
    ledger = (f"{compose_ledger.drivername}://{user}@127.0.0.1:5432/test"
              f"?options=-csearch_path%3D{schema}")

    stack = Native(config, tmp_path_factory.mktemp("native"), redis_server)
    services = list(COSFAIL_SERVICES)
    try:
        started = time.monotonic()
        deadline = started + STACK_DEADLINE
        stack.write_domain(project / "deploy" / "domain.toml", ledger)
        with ThreadPoolExecutor(max_workers=4) as pool:
            # A healthcheck that passes with nothing running would prove nothing.
            # (beat's check is its broker's, by design: it has nothing else to ask.)
            probes = {s: pool.submit(stack.healthcheck, s)
                      for s in ("control", "srv1", "api", "flower", "watch")}
            stack.seed_homes()
            for infra in ("redis", "postgres"):
                stack.health[infra] = stack.healthcheck(infra)
            stack.unhealthy_before = {s: f.result() for s, f in probes.items()}
            stack.timings["seeded, unhealthy before"] = time.monotonic() - started
            # control first: the others depend on it being healthy (it makes the ledger)
            stack.start("control")
            stack.wait_healthy("control", deadline)
            stack.timings["control healthy"] = time.monotonic() - started
            rest = [s for s in services if s != "control"]
            if stack.health["control"][0] == 0:
                for s in rest:
                    stack.start(s)
                # two at a time: every check is a process too, and this machine is small
                with ThreadPoolExecutor(max_workers=2) as checkers:
                    list(checkers.map(lambda s: stack.wait_healthy(s, deadline), rest))
        stack.timings["all healthy"] = time.monotonic() - started
        print(f"native compose stack: {stack.timings}")  # shown with -s or on failure
        yield stack
    finally:
        leftovers = stack.stop()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        assert not leftovers, f"still running after SIGTERM/SIGKILL of the services: {leftovers}"


@pytest.mark.parametrize("name", ["redis", "postgres"])
def test_infrastructure_healthcheck_passes_on_the_local_server(native: Native,
                                                               name: str) -> None:
    code, output = native.health[name]
    assert code == 0, f"{name} healthcheck: {output}"


@pytest.mark.parametrize("name", COSFAIL_SERVICES)
def test_service_starts_natively_and_passes_its_healthcheck(native: Native, config: dict[str, Any],
                                                            name: str) -> None:
    spec = config["services"][name]
    command = spec["command"]
    assert command[0] == "cosfail" and command[-2:] == ["-d", CONTAINER_DOMAIN], command
    assert spec["healthcheck"]["test"][1] == "cosfail", spec["healthcheck"]
    assert spec["healthcheck"]["test"][-2:] == ["-d", CONTAINER_DOMAIN]
    assert spec["restart"] in ("always", "unless-stopped", "on-failure"), spec.get("restart")
    assert all("condition" in dep for dep in spec["depends_on"].values()), spec["depends_on"]
    if name != "control":
        assert spec["depends_on"]["control"]["condition"] == "service_healthy"
    # what the service reads is mounted in it, and only its own node home is writable
    mounted = mounts(spec, config)
    assert mounted[CONTAINER_DOMAIN][1] == "ro"
    domain = tomllib.loads((REPO / "deploy" / "domain.toml").read_text())
    homes = {n["name"]: n["home"] for n in domain["node"]}
    if name in homes:
        assert {h: mounted[h][1] for h in homes.values()} == {
            h: "rw" if n == name else "ro" for n, h in homes.items()}
    if name == "control":  # it fences a failed server: it stops that node's COSprint
        assert all(mounted[h][1] == "rw" for h in homes.values())
    if name == "api":
        assert domain["control"]["token_file"] in mounted
    if name == "flower":
        assert domain["control"]["flower_auth_file"] in mounted
    if name != "beat":  # the ledger's password, for libpq
        assert mounted[spec["environment"]["PGPASSFILE"]][0].endswith("/pgpass")

    if name in native.unhealthy_before:
        code, output = native.unhealthy_before[name]
        assert code != 0, f"{name}'s healthcheck passed before it was started: {output}"
    code, output = native.health.get(name, (None, "never started: control was not healthy"))
    assert code == 0, (f"{name}: {' '.join(command)} did not pass its healthcheck within "
                       f"{STACK_DEADLINE:g} s: {output}\n{native.log_tail(name)}")
    assert native.procs[name].poll() is None, f"{name} exited: {native.log_tail(name)}"


def test_node_workers_started_their_cosprint(native: Native) -> None:
    """The reference driver runs each node's COSprint next to its worker."""
    from cosfail.cosprint.drivers import driver_for

    domain = load_domain(native.domain_file)
    deadline = time.monotonic() + 20
    down = list(NODES)
    while down and time.monotonic() < deadline:
        down = [n for n in NODES if driver_for(domain, n).status() is None]
        time.sleep(0.2)
    assert not down, f"COSprint not running on {down}: " + "".join(
        native.log_tail(n)[-400:] for n in down)
