"""The shipped deployment files say what the README promises (no container engine runs
here: hadolint lints the Containerfile in CI, these tests read the files)."""

from __future__ import annotations

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
    for unit in ("asyncsync-integrity.service", "asyncsync-retry.service"):
        assert "--wait-lock" in (deploy / unit).read_text(), unit
    for timer in ("asyncsync-integrity.timer", "asyncsync-retry.timer"):
        service = timer.replace(".timer", ".service")
        assert (deploy / service).exists() and "OnCalendar=" in (deploy / timer).read_text()
