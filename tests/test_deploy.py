"""The shipped deployment files say what the README promises (no container engine runs
here: hadolint lints the Containerfile in CI, these tests read the files)."""

from __future__ import annotations

import ast
import functools
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_runtime_dependency_is_pinned_in_the_constraints() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            pins[_name(name)] = version
    missing = [d for d in project["dependencies"] if _name(d) not in pins]
    assert missing == []


def test_the_image_is_pinned_reproducible_and_refuses_an_embedded_database() -> None:
    text = (ROOT / "Containerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", text, flags=re.M)
    assert bases and all(re.fullmatch(r"python:3\.11\.\d+-slim-\w+@sha256:[0-9a-f]{64}", b)
                         for b in bases), bases  # fmt: skip
    assert "--constraint constraints.txt" in text
    assert "ASYNCSYNC_IN_CONTAINER=1" in text
    assert "podman build --format docker" in text  # the OCI format drops HEALTHCHECK
    assert re.search(r"HEALTHCHECK .*\n.*/healthz", text)


def test_units_publish_on_loopback_and_timers_wait_for_the_lock() -> None:
    deploy = ROOT / "deploy"
    serve = (deploy / "asyncsync.service").read_text()
    assert "-p 127.0.0.1:9108:9108" in serve and "-p 9108:9108" not in serve
    assert "PublishPort=127.0.0.1:9108:9108" in (deploy / "asyncsync.container").read_text()
    assert "HealthCmd=" in (deploy / "asyncsync.container").read_text()
    timers = sorted(p.name for p in deploy.glob("*.timer"))
    assert timers == ["asyncsync-integrity-deep.timer", "asyncsync-integrity.timer",
                      "asyncsync-retry.timer"]  # fmt: skip
    for timer in timers:
        service = (deploy / timer.replace(".timer", ".service")).read_text()
        assert "--wait-lock" in service and "OnCalendar=" in (deploy / timer).read_text()
    # The planning document's check compares every id: without serve's weekly one, a timer's.
    assert "--mode integrity --deep" in (deploy / "asyncsync-integrity-deep.service").read_text()


def test_workers_scale_out_in_compose_and_kubernetes() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "deploy/workers/compose.yaml").read_text())
    services = compose["services"]
    worker = services["worker"]
    assert worker["command"][0] == "serve" and "ports" not in worker  # replicas would collide
    assert worker["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    setup = services["setup"]["command"][0]
    assert "asyncsync accounts add" in setup and "--client-secret-env" in setup
    # Every secret the accounts table names is in the workers' environment.
    for name in ("SECRET_TENANT_A", "REFRESH_TENANT_B"):
        assert name in worker["environment"]
    prometheus = yaml.safe_load((ROOT / "deploy/workers/prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["dns_sd_configs"][0]["names"] == ["worker"]
    docs = list(yaml.safe_load_all((ROOT / "deploy/kubernetes/asyncsync.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    deployment = kinds["Deployment"]
    assert deployment["spec"]["replicas"] >= 2
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "serve"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "DATABASE_URL" in kinds["Secret"]["stringData"]


def test_nothing_restarts_forever_on_a_refused_refresh_token() -> None:
    # Exit 4 (invalid_grant: a person must run `asyncsync authorize`) and exit 2 (bad
    # configuration) do not get better by restarting.
    for unit in ("asyncsync.service", "asyncsync.container"):
        text = (ROOT / "deploy" / unit).read_text()
        prevent = re.search(r"^RestartPreventExitStatus=(.+)$", text, flags=re.M)
        assert prevent and {"2", "4"} <= set(prevent.group(1).split()), unit
    compose = (ROOT / "deploy" / "compose.yaml").read_text()
    assert re.search(r'restart: "on-failure:\d+"', compose)  # bounded: compose cannot skip 4


@functools.cache
def _functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_what_the_readme_names_exists() -> None:
    """Every test the README cites (``tests/x.py::name``, and the bare ``::name`` or
    ``test_name`` after it, of the same file), every file it names, every flag and variable
    paired in its Configuration table, and every ``asyncsync_*`` series it names is there."""
    from asyncsync.flags.table import FLAGS

    readme = (ROOT / "README.md").read_text()
    wrong: list[str] = []
    cited: Path | None = None
    for span in re.findall(r"`([^`\n]+)`", readme):
        if whole := re.fullmatch(r"(tests/[\w/]+\.py)(?:::(\w+))?(?:\[[^\]]*\])?", span):
            cited, name = ROOT / whole[1], whole[2]
        elif bare := re.fullmatch(r"(?:::)?(test_\w+)(?:\[[^\]]*\])?", span):
            name = bare[1]
        else:
            continue
        if cited is None or not cited.exists() or (name and name not in _functions(cited)):
            wrong.append(span)
    paths = re.findall(r"(?<![\w/.-])((?:deploy|bench|asyncsync|docs|tests)/[\w./-]*\w)", readme)
    wrong += [p for p in paths if not (ROOT / p).exists()]
    config = readme[readme.index("## Configuration") : readme.index("## How it works")]
    pairs = {(f.flag, f.env) for f in FLAGS} | {("--mode", "ASYNCSYNC_MODE")}
    for row in re.findall(r"^\| (`--.*?) \| (.*?) \|", config, flags=re.M):
        flags, envs = (re.findall(r"`([^` ]+)[^`]*`", cell) for cell in row)
        wrong += [f"{f} {e}" for f, e in zip(flags, envs, strict=True) if (f, e) not in pairs]
    code = "".join(p.read_text() for d in ("asyncsync", "tests", "bench")
                   for p in (ROOT / d).rglob("*.py"))  # fmt: skip
    wrong += [v for v in set(re.findall(r"\b(?:ASYNCSYNC|TINY)_[A-Z_]+[A-Z]", readme))
              if v not in code]  # fmt: skip
    series = set(re.findall(r'"(asyncsync_\w+)"', (ROOT / "asyncsync/metrics.py").read_text()))
    tables = set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", (ROOT / "schema.sql").read_text()))
    wrong += [m for m in set(re.findall(r"\basyncsync_[a-z_]+[a-z]", readme))
              if m not in series | tables]  # fmt: skip
    assert wrong == []


def test_the_build_context_is_what_the_containerfile_copies_and_compose_keeps_a_health_check() -> (
    None
):
    # Every build sent .venv and .git (~500 MB) as its context; `podman compose --build`
    # builds in OCI format, which drops the image's HEALTHCHECK, and compose said none.
    import yaml

    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [r.strip() for r in ignore if r.strip() and not r.startswith("#")]
    assert rules[0] == "*", rules
    kept = {r[1:] for r in rules if r.startswith("!")}
    copied: set[str] = set()
    for line in (ROOT / "Containerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            copied.update(line.split()[1:-1])
    assert copied and copied == kept, (copied, kept)
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    probe = compose["services"]["asyncsync"]["healthcheck"]["test"]
    assert "/healthz" in " ".join(probe), probe
