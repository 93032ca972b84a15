"""The Dockerfile, read as text: no Docker engine runs here, so its properties are checked
by parsing it (instructions, stages, build arguments) and the .dockerignore beside it."""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
RUNTIME_USER = re.compile(r"^(\d+)(?::(\d+))?$")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str  # the FROM image, build arguments resolved
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def run_text(self) -> str:
        return "\n".join(i.args for i in self.all("RUN"))


def instructions(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    result: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        keyword, _, args = " ".join(pending).partition(" ")
        result.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    assert not pending, "Dockerfile ends inside a continued line"
    return result


def _substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), value)


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global build arguments with defaults, stages in order)."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions(text):
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(_substitute(words[0], global_args), name))
        elif not stages:
            if ins.keyword == "ARG":
                key, _, default = ins.args.partition("=")
                global_args[key] = default.strip('"')
        else:
            stages[-1].instructions.append(ins)
    return global_args, stages


@pytest.fixture(scope="module")
def parsed() -> tuple[dict[str, str], list[Stage]]:
    return parse(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def stages(parsed: tuple[dict[str, str], list[Stage]]) -> list[Stage]:
    return parsed[1]


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def stage_args(stage: Stage) -> dict[str, str]:
    return {key: default for key, _, default in
            (i.args.partition("=") for i in stage.all("ARG"))}


def test_parser_joins_continuations_and_skips_comments() -> None:
    text = "# c\nARG A=1\nFROM x:${A} AS one\nRUN a \\\n  # inner\n  && b\nFROM one\n"
    args, parsed = parse(text)
    assert args == {"A": "1"}
    assert [(s.base, s.name) for s in parsed] == [("x:1", "one"), ("one", None)]
    assert parsed[0].all("RUN")[0].args == "a && b"


def test_multi_stage_with_the_build_kept_out(stages: list[Stage], final: Stage) -> None:
    assert len(stages) >= 2
    names = {s.name for s in stages[:-1]}
    copies = [i.args for i in final.all("COPY") if i.args.startswith("--from=")]
    assert copies, "the final stage copies its artefacts from a build stage"
    assert all(c.split()[0].removeprefix("--from=") in names for c in copies)


def test_python_base_is_a_pinned_slim_image(stages: list[Stage], final: Stage) -> None:
    pinned = re.compile(
        r"^python:3\.\d+\.\d+-slim-(bookworm|trixie)(@sha256:[0-9a-f]{64})?$")
    assert pinned.match(final.base), final.base
    build = next(s for s in stages if s.name == "build")
    assert build.base == final.base  # the venv's interpreter is the runtime's
    for stage in stages:
        image = stage.base
        if image in {s.name for s in stages}:
            continue
        assert ":" in image.split("/")[-1] and not image.endswith(":latest"), image


def test_runs_as_a_numeric_non_root_user(final: Stage) -> None:
    users = final.all("USER")
    assert users, "no USER in the final stage"
    match = RUNTIME_USER.match(users[-1].args)
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert match and int(match[1]) != 0 and int(match[2] or 1) != 0, users[-1].args
    last_user_line = users[-1].line
    assert all(i.line < last_user_line for i in final.all("RUN")), "RUN after USER runs as the user"


def test_final_stage_holds_only_runtime_dependencies(final: Stage) -> None:
    runs = final.run_text()
    for forbidden in ("pip install", "apt-get install", "apk add", "gcc", "build-essential",
                      "git clone", "curl ", "wget "):
        assert forbidden not in runs, forbidden
    assert "pip uninstall" in runs  # and no installer left behind
    copied = [i.args for i in final.all("COPY") + final.all("ADD")]
    sources = [shlex.split(c)[-2] for c in copied]
    assert sources == ["/opt/venv", "policies"], copied
    assert not final.all("ADD")


def test_ml_extra_is_a_build_argument(stages: list[Stage]) -> None:
    build = next(s for s in stages if s.name == "build")
    extras = stage_args(build)
    assert "EXTRAS" in extras
    default = {e.strip() for e in extras["EXTRAS"].split(",") if e.strip()}
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert "ml" in declared and "ml" not in default  # slim unless asked for
    assert default <= set(declared)
    assert re.search(r"pip install (?:.*\s)?\S*\$\{?EXTRAS", build.run_text())
    assert "--build-arg EXTRAS=redis,ml" in DOCKERFILE.read_text()


def _install(build: Stage, tmp_path: Path, extras: str, index: str) -> tuple[list[str], str]:
    """The build stage's pip install step, run by sh with a pip that prints its arguments:
    (the arguments, what the step wrote to stderr)."""
    steps = [step.strip() for step in build.run_text().split(" && ")]
    wanted = [step for step in steps
              if step.startswith("case ") or step.startswith("/opt/venv/bin/pip install")]
    pip = tmp_path / "pip"
    pip.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    pip.chmod(0o755)
    script = " && ".join(wanted).replace("/opt/venv/bin/pip", str(pip))
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True,
                          env={"PATH": os.environ["PATH"], "EXTRAS": extras,
                               "TORCH_INDEX_URL": index, "wheel": "/wheels/gateway.whl"})
    return done.stdout.splitlines(), done.stderr


def test_torch_index_is_a_build_argument_passed_to_pip(stages: list[Stage],
                                                       tmp_path: Path) -> None:
    """The ml extra's torch: from the CPU-only index given as TORCH_INDEX_URL (documented,
    never written into the file), else PyPI's default (CUDA) build, with a warning."""
    build = next(s for s in stages if s.name == "build")
    assert stage_args(build)["TORCH_INDEX_URL"] == '""'
    text = DOCKERFILE.read_text()
    assert "PyTorch's CPU-only wheel index" in text
    assert not re.search(r"TORCH_INDEX_URL=[a-z]+://", text)  # no index URL in the file
    index = "https://mirror.example/whl/cpu"
    args, warning = _install(build, tmp_path, "redis,ml", index)
    assert args == ["install", "--extra-index-url", index, "/wheels/gateway.whl[redis,ml]"]
    assert warning == ""
    args, warning = _install(build, tmp_path, "redis,ml", "")
    assert args == ["install", "/wheels/gateway.whl[redis,ml]"]
    assert "TORCH_INDEX_URL is empty" in warning and "CPU-only" in warning
    args, warning = _install(build, tmp_path, "redis", "")
    assert args == ["install", "/wheels/gateway.whl[redis]"] and warning == ""


def test_healthcheck_probes_healthz(final: Stage) -> None:
    (check,) = final.all("HEALTHCHECK")
    assert "--interval=" in check.args and "--timeout=" in check.args
    assert "/healthz" in check.args
    cmd = check.args[check.args.index("CMD") + 3:].strip()
    assert json.loads(cmd)[0] == "python"  # exec form: no shell in the probe


@pytest.fixture
def healthz_port() -> Iterator[int]:
    """A server answering GET /healthz with 200, on a free port."""

    class Healthz(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_healthcheck_follows_gateway_port(final: Stage, healthz_port: int) -> None:
    """`docker run -e GATEWAY_PORT=9000` moves the server; the probe follows it."""
    (check,) = final.all("HEALTHCHECK")
    argv = json.loads(check.args[check.args.index("CMD") + 3:].strip())
    assert "8080" in argv[-1]  # the default, as ENV GATEWAY_PORT

    def probe(port: int) -> int:
        return subprocess.run([sys.executable, *argv[1:]], capture_output=True, timeout=10,
                              env={"GATEWAY_PORT": str(port)}, check=False).returncode

    assert probe(healthz_port) == 0
    assert probe(_free_port()) != 0


def test_oci_labels(final: Stage) -> None:
    labels = " ".join(i.args for i in final.all("LABEL"))
    keys = set(re.findall(r"(org\.opencontainers\.image\.[a-z.]+)=", labels))
    assert keys >= {f"org.opencontainers.image.{k}" for k in (
        "title", "description", "version", "revision", "created", "licenses", "base.name")}
    declared_license = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    license_ = declared_license if isinstance(declared_license, str) else declared_license["text"]
    assert f'org.opencontainers.image.licenses="{license_}"' in labels


def test_runtime_contract(final: Stage) -> None:
    env = " ".join(i.args for i in final.all("ENV"))
    for setting in ("GATEWAY_HOME=/var/lib/gateway", "GATEWAY_POLICIES=/etc/gateway/policies",
                    "GATEWAY_HOST=0.0.0.0", "GATEWAY_PORT=8080"):
        assert setting in env
    assert final.all("EXPOSE")[0].args == "8080"
    assert json.loads(final.all("ENTRYPOINT")[0].args) == ["gateway"]
    assert json.loads(final.all("CMD")[0].args) == ["serve"]
    assert "chown gateway:gateway /var/lib/gateway" in final.run_text()


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatchcase(p, pattern[3:]) for p in parts)
        else:
            hit = any(fnmatch.fnmatchcase(p, pattern) for p in prefixes)
        if hit:
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for excluded in (".venv/bin/python", ".vllm-venv/bin/python", ".git/HEAD",
                     "tests/test_routes.py",
                     ".gateway/keys/signing.pem", "gateway/__pycache__/app.cpython-311.pyc",
                     "bench/proxy.py", "helm/gateway/Chart.yaml"):
        assert _ignored(excluded, patterns), excluded
    for needed in ("pyproject.toml", "README.md", "gateway/app.py", "gateway/policy/schema.json",
                   "policies/tiers.yaml"):
        assert not _ignored(needed, patterns), needed
