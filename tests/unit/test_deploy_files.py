"""The deployment files agree with each other: what one names, the other provides.

Docker is not run here: these tests read docker-compose.yml, the Dockerfile and the Asterisk,
Prometheus and Grafana configuration, and check every port, path, name and credential they share.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from dialguard.store.embedded import server_settings

ROOT = Path(__file__).resolve().parents[2]
ASTERISK = ROOT / "asterisk-config"
SERVICES = {"asterisk", "postgres", "dialguard", "prometheus", "grafana"}


# -- readers ---------------------------------------------------------------------------------


@dataclass
class Section:
    name: str
    entries: list[tuple[str, str]] = field(default_factory=list)

    def get(self, key: str) -> str | None:
        return next((v for k, v in self.entries if k == key), None)

    def all(self, key: str) -> list[str]:
        return [v for k, v in self.entries if k == key]


def read_asterisk_conf(path: Path) -> list[Section]:
    """Asterisk's .conf format: [section](template), `key = value` or `key => value`, ; comments."""
    sections: list[Section] = []
    for raw in path.read_text().splitlines():
        line = re.split(r"(?<!\\);", raw, maxsplit=1)[0].strip()
        if not line or line.startswith("#"):  # #include and friends: read on their own
            continue
        header = re.fullmatch(r"\[([^\]]+)\](\([^)]*\))?", line)
        if header:
            sections.append(Section(header.group(1)))
            continue
        parts = re.split(r"\s*(=>|=)\s*", line, maxsplit=1)
        assert len(parts) == 3, f"{path.name}: not a key/value line: {raw!r}"
        assert sections, f"{path.name}: entry before any section: {raw!r}"
        sections[-1].entries.append((parts[0], parts[2]))
    return sections


def section(sections: list[Section], name: str, type_: str | None = None) -> Section:
    for s in sections:
        if s.name == name and (type_ is None or s.get("type") == type_):
            return s
    raise AssertionError(f"no section [{name}] of type {type_}")


def dialplan_lines(context: str) -> list[str]:
    """The application part of every priority of a context, in order."""
    lines = []
    for key, value in section(read_asterisk_conf(ASTERISK / "extensions.conf"), context).entries:
        assert key in {"exten", "same", "include"}, (context, key)
        lines.append(value)
    return lines


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    svc = compose["services"][name]
    assert isinstance(svc, dict)
    return svc


def raw_env(compose: dict[str, Any], name: str, key: str) -> str:
    value = service(compose, name)["environment"][key]
    assert isinstance(value, str)
    return value


def env(compose: dict[str, Any], name: str, key: str) -> str:
    """An environment value as compose resolves it: `${VAR:-default}` is the default, and a
    required `${VAR:?message}` stands for a value the operator supplies."""
    return re.sub(
        r"\$\{\w+(?::-([^}]*)|:\?[^}]*)\}",
        lambda m: m.group(1) if m.group(1) is not None else "from-dotenv",
        raw_env(compose, name, key),
    )


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def mounts(compose: dict[str, Any], name: str) -> dict[str, str]:
    """Bind mounts of a service: repository path -> container path."""
    result = {}
    for volume in service(compose, name).get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            result[source] = target
    return result


@dataclass(frozen=True)
class Published:
    host_ip: str
    host_port: str
    container_port: str
    protocol: str


def published(compose: dict[str, Any], name: str) -> list[Published]:
    result = []
    for spec in service(compose, name).get("ports", []):
        spec, _, protocol = spec.partition("/")
        parts = spec.split(":")
        host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"
        result.append(Published(host_ip, parts[-2], parts[-1], protocol or "tcp"))
    return result


def prometheus_config() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    assert isinstance(data, dict)
    return data


def dashboard() -> dict[str, Any]:
    data = json.loads((ROOT / "grafana" / "dashboards" / "dialguard.json").read_text())
    assert isinstance(data, dict)
    return data


def all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for panel in panels:
        found.append(panel)
        found.extend(all_panels(panel.get("panels", [])))
    return found


# -- docker-compose.yml ----------------------------------------------------------------------


def test_compose_has_every_service(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_path_a_service_mounts_exists_in_the_repository(
    compose: dict[str, Any], name: str
) -> None:
    for source in mounts(compose, name):
        assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"


def test_every_named_volume_is_declared(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for name in SERVICES:
        for volume in service(compose, name).get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} uses undeclared volume {source}"


def test_databases_keep_their_data_in_named_volumes(compose: dict[str, Any]) -> None:
    assert "postgres-data:/var/lib/postgresql/data" in service(compose, "postgres")["volumes"]
    assert any(v.endswith(":/prometheus") for v in service(compose, "prometheus")["volumes"])
    assert any(v.endswith(":/var/lib/grafana") for v in service(compose, "grafana")["volumes"])


def test_only_grafana_the_admin_api_and_the_trunk_are_published(compose: dict[str, Any]) -> None:
    for name in ("postgres", "prometheus"):
        assert not published(compose, name), f"{name} must not be published"
    for name in ("dialguard", "grafana"):
        for port in published(compose, name):
            assert port.host_ip == "127.0.0.1", f"{name} publishes {port} beyond loopback"
    ari_port = (read_http_conf().get("bindport") or "").strip()
    for port in published(compose, "asterisk"):
        assert port.protocol == "udp", f"asterisk publishes {port}: only SIP/RTP over UDP"
        assert port.container_port != ari_port


def test_dialguard_is_built_from_this_repository(compose: dict[str, Any]) -> None:
    assert service(compose, "dialguard")["build"] == "."
    assert (ROOT / "Dockerfile").is_file()


def test_the_database_url_names_the_postgres_service(compose: dict[str, Any]) -> None:
    url = urlsplit(env(compose, "dialguard", "DIALGUARD_DATABASE_URL"))
    assert url.scheme in {"postgres", "postgresql"}
    assert url.hostname == "postgres"
    assert url.port == 5432
    postgres = service(compose, "postgres")["environment"]
    assert url.username == postgres["POSTGRES_USER"]
    assert url.path == "/" + postgres["POSTGRES_DB"]
    assert service(compose, "dialguard")["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_compose_database_gets_the_embedded_servers_settings(compose: dict[str, Any]) -> None:
    command = service(compose, "postgres")["command"]
    assert command[0] == "postgres"
    flags = command[1::2]
    assert set(flags) == {"-c"}
    given = dict(setting.split("=", 1) for setting in command[2::2])
    embedded = server_settings(4 * 1024**3)
    assert given == {
        "shared_buffers": "${POSTGRES_SHARED_BUFFERS:-" + embedded["shared_buffers"] + "}",
        "checkpoint_timeout": embedded["checkpoint_timeout"],
        "max_wal_size": embedded["max_wal_size"],
    }


def test_secrets_are_required_not_defaulted(compose: dict[str, Any]) -> None:
    for svc, key in [
        ("postgres", "POSTGRES_PASSWORD"),
        ("dialguard", "DIALGUARD_API_TOKEN"),
        ("dialguard", "DIALGUARD_ARI_PASSWORD"),
        ("grafana", "GF_SECURITY_ADMIN_PASSWORD"),
    ]:
        assert ":?" in raw_env(compose, svc, key), f"{svc}.{key} must come from .env"


def test_no_secret_ships_in_plain_text(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    secret = re.compile(r"(PASSWORD|TOKEN|SECRET)", re.IGNORECASE)
    defaulted = [
        line.strip()
        for line in text.splitlines()
        if secret.search(line) and ":-" in line and not line.strip().startswith("#")
    ]
    assert defaulted == [], "a secret with a default ships that default to every install"
    for name in ("ari.conf",):
        for s in read_asterisk_conf(ASTERISK / name):
            assert s.get("password") is None, f"{name} [{s.name}] ships a password"


def test_the_dotenv_list_in_the_readme_is_every_variable_compose_reads(
    compose: dict[str, Any],
) -> None:
    def strings(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [s for v in node.values() for s in strings(v)]
        if isinstance(node, list):
            return [s for v in node for s in strings(v)]
        return [node] if isinstance(node, str) else []

    used = {v for text in strings(compose) for v in re.findall(r"\$\{(\w+)", text)}
    # Settings shipped commented out (the ARI proxy's) are listed too, for when they are on.
    commented = [
        line
        for line in (ROOT / "docker-compose.yml").read_text().splitlines()
        if line.strip().startswith("#") and ": ${" in line
    ]
    used |= {v for line in commented for v in re.findall(r"\$\{(\w+)", line)}
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### The `.env` file") :]
    section = section[: section.index("\n#", 1)]
    listed = set(re.findall(r"^\| `(\w+)` \|", section, re.MULTILINE))
    assert listed == used


# -- Asterisk --------------------------------------------------------------------------------


def read_http_conf() -> Section:
    return section(read_asterisk_conf(ASTERISK / "http.conf"), "general")


def test_ari_url_names_the_port_asterisk_serves_http_on(compose: dict[str, Any]) -> None:
    http = read_http_conf()
    assert http.get("enabled") == "yes"
    url = urlsplit(env(compose, "dialguard", "DIALGUARD_ARI_URL"))
    assert url.hostname == "asterisk" and url.hostname in compose["services"]
    assert url.port == int(http.get("bindport") or 0)
    assert url.path == "/ari"


def test_ari_credentials_match_the_ari_user(compose: dict[str, Any]) -> None:
    sections = read_asterisk_conf(ASTERISK / "ari.conf")
    assert section(sections, "general").get("enabled") == "yes"
    user = section(sections, env(compose, "dialguard", "DIALGUARD_ARI_USERNAME"), "user")
    assert user.get("read_only") == "no"
    assert user.get("password_format") == "plain"
    # The password is not in ari.conf: it includes a file that compose writes from the same
    # .env variable that dialguard logs in with.
    assert '#tryinclude "ari-password.conf"' in (ASTERISK / "ari.conf").read_text()
    target = {c["source"]: c["target"] for c in service(compose, "asterisk")["configs"]}
    assert target["ari-password"] == "/etc/asterisk/ari-password.conf"
    content = compose["configs"]["ari-password"]["content"]
    assert content.splitlines() == [
        f"[{user.name}](+)",
        "password = ${DIALGUARD_ARI_PASSWORD:?set DIALGUARD_ARI_PASSWORD in .env}",
    ]
    assert raw_env(compose, "dialguard", "DIALGUARD_ARI_PASSWORD") == (
        "${DIALGUARD_ARI_PASSWORD:?set DIALGUARD_ARI_PASSWORD in .env}"
    )
    users = [s.name for s in sections if s.get("type") == "user"]
    assert users == [user.name], "dialers use the ARI proxy, not an ARI account of their own"


def test_asterisk_gets_every_config_file_it_needs(compose: dict[str, Any]) -> None:
    targets = mounts(compose, "asterisk")
    for name in ("http.conf", "ari.conf", "extensions.conf", "pjsip.conf", "rtp.conf"):
        assert targets[f"./asterisk-config/{name}"] == f"/etc/asterisk/{name}"


def test_the_published_rtp_range_is_the_one_asterisk_uses(compose: dict[str, Any]) -> None:
    rtp = section(read_asterisk_conf(ASTERISK / "rtp.conf"), "general")
    expected = f"{rtp.get('rtpstart')}-{rtp.get('rtpend')}"
    assert Published("0.0.0.0", expected, expected, "udp") in published(compose, "asterisk")
    transport = section(read_asterisk_conf(ASTERISK / "pjsip.conf"), "transport-udp", "transport")
    sip_port = str(port_of(transport.get("bind") or ""))
    assert Published("0.0.0.0", sip_port, sip_port, "udp") in published(compose, "asterisk")


def test_the_gate_calls_the_app_dialguard_listens_as(compose: dict[str, Any]) -> None:
    app = env(compose, "dialguard", "DIALGUARD_ARI_APP")
    stasis = [line for line in dialplan_lines("dialguard-out") if "Stasis(" in line]
    assert len(stasis) == 1
    args = re.search(r"Stasis\(([^)]*)\)", stasis[0])
    assert args is not None
    app_name, *stasis_args = args.group(1).split(",")
    assert app_name == app
    # gate.campaign_from "arg:N" reads the Nth argument, counted from 1; the destination is
    # the extension itself (gate.destination_from defaults to "exten").
    campaign_from = env(compose, "dialguard", "DIALGUARD_GATE_CAMPAIGN_FROM")
    assert campaign_from == "arg:1"
    assert stasis_args[int(campaign_from.split(":")[1]) - 1] == "${CAMPAIGN}"


def test_the_gate_fails_closed() -> None:
    lines = dialplan_lines("dialguard-out")
    assert lines[0] == "_X.,1,Set(TIMEOUT(absolute)=5)"
    assert lines[1].startswith("n,Stasis(")
    assert lines[2] == 'n,GotoIf($["${STASISSTATUS}"="FAILED"]?dg_down)'
    # Whatever leaves Stasis without jumping to a label is hung up before the allowed branch.
    before_allowed = lines[: next(i for i, x in enumerate(lines) if x.startswith("n(allowed)"))]
    assert before_allowed[-1] == "n,Hangup(21)"
    assert "n(dg_down),Log(" in "\n".join(lines)
    dg_down = next(i for i, x in enumerate(lines) if x.startswith("n(dg_down)"))
    assert lines[dg_down + 1] == "n,Hangup(21)"
    # The absolute timeout lands in T: no verdict in time is a rejection too.
    timeout = lines.index(next(x for x in lines if x.startswith("T,1,")))
    assert lines[timeout + 1] == "n,Hangup(21)"


def test_the_gate_has_the_labels_dialguard_jumps_to(compose: dict[str, Any]) -> None:
    labels = {
        m.group(1)
        for line in dialplan_lines("dialguard-out")
        if (m := re.match(r"n\((\w+)\)", line))
    }
    assert {"allowed", "denied", "dg_down"} <= labels
    assert env(compose, "dialguard", "DIALGUARD_GATE_ALLOW_LABEL") in labels


def test_the_allowed_branch_dials_the_watched_trunk_and_keeps_its_cause(
    compose: dict[str, Any],
) -> None:
    lines = dialplan_lines("dialguard-out")
    start = next(i for i, x in enumerate(lines) if x.startswith("n(allowed)"))
    end = next(i for i, x in enumerate(lines) if x.startswith("n(denied)"))
    allowed = lines[start:end]
    assert allowed[0] == "n(allowed),Set(TIMEOUT(absolute)=0)"
    dial = next(x for x in allowed if "Dial(" in x)
    trunk = env(compose, "dialguard", "DIALGUARD_ARI_TRUNKS")
    tech, endpoint = trunk.split("/")
    assert f"Dial({tech}/${{EXTEN}}@{endpoint}," in dial
    section(read_asterisk_conf(ASTERISK / "pjsip.conf"), endpoint, "endpoint")
    # A plain Hangup() turns a cause of 0 into 16; the branch must hang up with a cause.
    assert allowed[-1] == "n,Hangup(${DG_CAUSE})"
    assert all(not x.endswith("Hangup()") for x in lines)


def test_no_endpoint_without_auth_reaches_the_trunk() -> None:
    endpoints = [
        s for s in read_asterisk_conf(ASTERISK / "pjsip.conf") if s.get("type") == "endpoint"
    ]
    assert endpoints
    contexts = {s.name: s for s in read_asterisk_conf(ASTERISK / "extensions.conf")}

    def dials_out(context: str) -> bool:
        text = "\n".join(v for _, v in contexts[context].entries)
        return "dialguard-out" in text or "@carrier" in text

    for endpoint in endpoints:
        assert endpoint.name != "anonymous"
        context = endpoint.get("context")
        assert context in contexts, f"endpoint {endpoint.name}: no context [{context}]"
        if dials_out(context):
            assert endpoint.get("auth"), f"endpoint {endpoint.name} dials out without auth"
    assert not dials_out("from-carrier")


# -- Prometheus ------------------------------------------------------------------------------


def test_prometheus_scrapes_dialguard_on_its_metrics_port(compose: dict[str, Any]) -> None:
    jobs = {job["job_name"]: job for job in prometheus_config()["scrape_configs"]}
    targets = [t for c in jobs["dialguard"]["static_configs"] for t in c["targets"]]
    metrics_port = port_of(env(compose, "dialguard", "DIALGUARD_METRICS_LISTEN"))
    assert targets == [f"dialguard:{metrics_port}"]


def test_the_alerts_use_the_scrape_job_name() -> None:
    alerts = (ROOT / "prometheus" / "alerts.yml").read_text()
    assert 'up{job="dialguard"}' in alerts
    jobs = [job["job_name"] for job in prometheus_config()["scrape_configs"]]
    assert "dialguard" in jobs


def test_prometheus_reads_its_config_and_rules_from_the_mounted_folder(
    compose: dict[str, Any],
) -> None:
    target = mounts(compose, "prometheus")["./prometheus"]
    command = service(compose, "prometheus")["command"]
    assert f"--config.file={target}/prometheus.yml" in command
    for rule_file in prometheus_config()["rule_files"]:
        assert not rule_file.startswith("/"), "relative, so promtool and the container agree"
        assert (ROOT / "prometheus" / rule_file).is_file()


# -- Grafana ---------------------------------------------------------------------------------


def grafana_datasource() -> dict[str, Any]:
    path = ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    data = yaml.safe_load(path.read_text())
    (source,) = data["datasources"]
    assert isinstance(source, dict)
    return source


def test_grafana_datasource_points_at_the_prometheus_service(compose: dict[str, Any]) -> None:
    source = grafana_datasource()
    assert source["type"] == "prometheus"
    url = urlsplit(source["url"])
    assert url.hostname == "prometheus" and url.hostname in compose["services"]
    listen = next(
        arg for arg in service(compose, "prometheus")["command"] if "--web.listen-address" in arg
    )
    assert url.port == port_of(listen)


def test_grafana_datasource_scrape_interval_matches_prometheus() -> None:
    interval = prometheus_config()["global"]["scrape_interval"]
    assert grafana_datasource()["jsonData"]["timeInterval"] == interval


def test_the_dashboard_defaults_to_the_provisioned_datasource() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["current"]["value"] == grafana_datasource()["uid"]


def test_grafana_loads_the_provisioning_and_the_dashboard_folder(compose: dict[str, Any]) -> None:
    targets = mounts(compose, "grafana")
    assert targets["./grafana/provisioning"] == "/etc/grafana/provisioning"
    providers = yaml.safe_load(
        (ROOT / "grafana" / "provisioning" / "dashboards" / "dialguard.yml").read_text()
    )["providers"]
    (provider,) = providers
    assert provider["type"] == "file"
    assert provider["options"]["path"] == targets["./grafana/dashboards"]
    home = env(compose, "grafana", "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    relative = Path(home).relative_to(targets["./grafana/dashboards"])
    assert (ROOT / "grafana" / "dashboards" / relative).is_file()


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    board = dashboard()
    assert board["uid"] == "dialguard"
    assert board["schemaVersion"] >= 36
    panels = all_panels(board["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"] == panel["datasource"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_the_dashboard_variables_read_dialguard_series() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["campaign"]["query"]["query"] == (
        "label_values(dialguard_decisions_total, campaign)"
    )
    assert variables["caller_id"]["query"]["query"] == (
        "label_values(dialguard_callerid_calls_total, caller_id)"
    )
    for name in ("campaign", "caller_id"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"


# -- Dockerfile ------------------------------------------------------------------------------


def dockerfile() -> str:
    # Join continuation lines, so each instruction is one line.
    return (ROOT / "Dockerfile").read_text().replace("\\\n", " ")


def instructions(name: str) -> list[str]:
    return [
        line.split(None, 1)[1]
        for line in dockerfile().splitlines()
        if line.split(None, 1)[:1] == [name]
    ]


def test_the_image_is_python_311_slim_and_runs_unprivileged() -> None:
    assert instructions("FROM") == ["python:3.11-slim"]
    users = instructions("USER")
    assert users and users[-1] not in {"root", "0"}


def test_every_path_the_dockerfile_copies_exists() -> None:
    for copy in instructions("COPY"):
        *sources, _ = copy.split()
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"


def test_the_healthcheck_asks_readyz_on_the_api_port(compose: dict[str, Any]) -> None:
    (healthcheck,) = instructions("HEALTHCHECK")
    url = re.search(r"http://[^'\"]+", healthcheck)
    assert url is not None
    parsed = urlsplit(url.group(0))
    assert parsed.hostname == "127.0.0.1" and parsed.path == "/readyz"
    api_port = port_of(env(compose, "dialguard", "DIALGUARD_API_LISTEN"))
    assert parsed.port == api_port
    assert [p.container_port for p in published(compose, "dialguard")] == [str(api_port)]
    # The listen address must include loopback, where the health check calls.
    assert env(compose, "dialguard", "DIALGUARD_API_LISTEN").split(":")[0] in {
        "0.0.0.0",
        "127.0.0.1",
    }


def test_dockerignore_keeps_local_state_out_and_the_sources_in() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".env", "**/__pycache__"} <= ignored
    assert not {"src", "pyproject.toml", "README.md"} & ignored
