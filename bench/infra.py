"""Benchmark infrastructure: Postfix's smtp-sink / smtp-source, the bench database, `edm` subprocesses, and
resource sampling (RSS every 0.2 s, CPU seconds per process group).

Nothing here imports `edm`: it runs programs and reads /proc, so it stays valid however src/ changes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # .venv/bin: the `edm` console script lives beside this interpreter
SBIN_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/sbin")
PG_ADMIN_URL = os.environ.get("EDM_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
DB_NAME = os.environ.get("EDM_BENCH_DB", "edm_bench")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- Postfix tools ------------------------------------------------------------------------------------


def _find(program: str) -> str | None:
    found = shutil.which(program)
    if found:
        return found
    for directory in SBIN_DIRS:
        candidate = Path(directory) / program
        if candidate.exists():
            return str(candidate)
    return None


def ensure_postfix_tools() -> tuple[str, str]:
    """Paths of smtp-sink and smtp-source; installs the `postfix` package non-interactively if missing."""
    sink, source = _find("smtp-sink"), _find("smtp-source")
    if sink and source:
        return sink, source
    log("smtp-sink/smtp-source missing: installing the postfix package (no daemon is configured or started)")
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if sudo is None:
        raise SystemExit("postfix's smtp-sink is missing and we are not root: `apt-get install postfix` first")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    preseed = b"postfix postfix/main_mailer_type select No configuration\n"
    subprocess.run([*sudo, "debconf-set-selections"], input=preseed, check=True, env=env)
    install = [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", "postfix"]
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(install, check=True, env=env, stdout=subprocess.DEVNULL)
    sink, source = _find("smtp-sink"), _find("smtp-source")
    if not (sink and source):
        raise SystemExit("the postfix package is installed but smtp-sink/smtp-source were not found")
    return sink, source


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sink:
    """`smtp-sink -u nobody -m 2048 127.0.0.1:PORT 1024` (1024 = listen backlog), stopped by pid.

    -m raises the sink's cap on simultaneous sessions from its default 256: each worker process keeps its
    own pool of up to max_concurrency connections per service (idle ones for 30 s), so 2 workers × 2
    services × 100 = 400 sessions; past the cap, new sessions wait unanswered in the kernel's queue and
    time out as failures (which froze both services in an early run)."""

    MAX_SESSIONS = 2048

    def __init__(self, binary: str, port: int | None = None, options: tuple[str, ...] = ()) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.options = options  # more smtp-sink flags, e.g. ("-p",): do not offer PIPELINING
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sink:
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        argv = [self.binary, *user, *self.options, "-m", str(self.MAX_SESSIONS), f"127.0.0.1:{self.port}", "1024"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"smtp-sink exited with {self.proc.returncode}")
            time.sleep(0.05)
        raise RuntimeError("smtp-sink did not start listening")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc, timeout=5)
        self.proc = None


def stop_process(proc: subprocess.Popen[Any] | None, *, timeout: float) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds; a process already gone is left alone."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class SourceRef:
    sessions: int
    messages: int
    rates: list[float]

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


def smtp_source(
    binary: str, port: int, *, messages: int, sessions: int = 1, size: int = 5000, rounds: int = 3
) -> SourceRef:
    """`smtp-source -d -s SESSIONS -m N -l SIZE 127.0.0.1:PORT`, timed on the wall clock; median of rounds."""
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run(
            [binary, "-d", "-s", str(sessions), "-m", str(messages), "-l", str(size), f"127.0.0.1:{port}"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        rates.append(messages / (time.perf_counter() - start))
    return SourceRef(sessions, messages, rates)


# ---- the database -------------------------------------------------------------------------------------


def db_url() -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{DB_NAME}"


def recreate_database() -> str:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    return db_url()


def pg_settings() -> dict[str, str]:
    import psycopg

    names = ("server_version", "shared_buffers", "synchronous_commit", "max_connections", "work_mem")
    with psycopg.connect(db_url(), autocommit=True) as conn:
        return {n: str(conn.execute(f"SHOW {n}").fetchone()[0]) for n in names}  # type: ignore[index]


BENCH_KEYS = ("EDM_DATABASE_URL", "EDM_ENV", "EDM_SECRET_KEY", "EDM_LOG_LEVEL", "EDM_PUBLIC_URL")


def passthrough() -> dict[str, str]:
    """EDM_* settings from the caller's environment that reach the workers (e.g. EDM_WORKER_CONCURRENCY,
    EDM_DB_POOL_SIZE): everything but the ones the bench sets itself."""
    return {
        k: v
        for k, v in os.environ.items()
        if k.startswith("EDM_") and k not in BENCH_KEYS and not k.startswith("EDM_BENCH_")
    }


def edm_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDM_")}
    env.update(passthrough())
    env.update(
        {
            "EDM_DATABASE_URL": db_url(),
            "EDM_ENV": "development",
            "EDM_SECRET_KEY": "bench-secret-key-0123456789abcdef0123456789abcdef",
            "EDM_LOG_LEVEL": "WARNING",
            "EDM_PUBLIC_URL": "https://edm.bench.example",
        }
    )
    # Worker tuning knobs under test pass through (everything else EDM_* is reset above).
    env.update({k: v for k, v in os.environ.items() if k in ("EDM_CLAIM_MAX", "EDM_WORKER_CONCURRENCY")})
    env.update(extra)
    return env


def edm(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([str(BIN / "edm"), *args], env=env or edm_env(), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"edm {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip()


# ---- workers ------------------------------------------------------------------------------------------


class Workers:
    """N `edm worker --concurrency C` processes; stopped with SIGTERM (graceful), then SIGKILL."""

    def __init__(self, count: int, concurrency: int, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.count, self.concurrency, self.log_dir = count, concurrency, log_dir
        self.env = env or edm_env()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def start(self) -> Workers:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for i in range(self.count):
            path = self.log_dir / f"worker-{i}.log"
            self.logs.append(path)
            with path.open("wb") as out:
                self.procs.append(
                    subprocess.Popen(
                        [str(BIN / "edm"), "worker", "--concurrency", str(self.concurrency)],
                        env=self.env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        return self

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def check_alive(self) -> None:
        for proc, path in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                tail = path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"worker {proc.pid} exited with {proc.returncode}:\n{tail}")

    def stop(self, timeout: float = 45.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def errors(self) -> list[str]:
        lines = []
        for path in self.logs:
            lines += [
                ln for ln in path.read_text(errors="replace").splitlines() if " ERROR " in ln or "Traceback" in ln
            ]
        return lines


# ---- sampling -----------------------------------------------------------------------------------------


def vm_hwm_mb(pid: int) -> float | None:
    """The kernel's peak resident set size of a live process (VmHWM), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class RssSampler:
    """Samples the RSS of the given pids every `period` seconds in a background thread."""

    pids: list[int]
    period: float = 0.2
    samples: dict[int, list[tuple[float, float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        procs = {pid: psutil.Process(pid) for pid in self.pids}
        while not self._stop.is_set():
            now = time.monotonic() - self._t0
            for pid, proc in procs.items():
                with contextlib.suppress(psutil.Error):
                    self.samples.setdefault(pid, []).append((now, proc.memory_info().rss / 2**20))
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, pid: int) -> float:
        return max((mb for _, mb in self.samples.get(pid, [])), default=0.0)

    def at(self, pid: int, t: float) -> float:
        """The last sample taken at or before t seconds after start."""
        best = 0.0
        for when, mb in self.samples.get(pid, []):
            if when > t:
                break
            best = mb
        return best


def _ours(title: str) -> bool:
    """A backend of the bench database, or a shared auxiliary process (WAL writer, checkpointer, …);
    not the backends of other databases (tests running beside the bench)."""
    is_backend = "(" in title or "[local]" in title
    return not is_backend or f" {DB_NAME} " in title


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


class CpuMeter:
    """CPU seconds used between start() and stop() by groups of processes: the workers, PostgreSQL's
    backends (every `postgres` process), the sink, and the whole machine (for idle time)."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.before: dict[str, dict[int, float]] = {}
        self.used: dict[str, float] = {}
        self.wall = 0.0
        self.machine_busy = 0.0

    def _read(self) -> dict[str, dict[int, float]]:
        out: dict[str, dict[int, float]] = {name: {} for name in self.groups}
        out["postgres"] = {}
        for name, pids in self.groups.items():
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    out[name][pid] = _cpu(psutil.Process(pid))
        for proc in psutil.process_iter(["name", "cmdline"]):
            if proc.info["name"] == "postgres" and _ours(" ".join(proc.info["cmdline"] or [])):
                with contextlib.suppress(psutil.Error):
                    out["postgres"][proc.pid] = _cpu(proc)
        return out

    def start(self) -> CpuMeter:
        self.before = self._read()
        self._t0 = time.monotonic()
        self._machine0 = psutil.cpu_times()
        return self

    def stop(self) -> CpuMeter:
        after = self._read()
        self.wall = time.monotonic() - self._t0
        m1 = psutil.cpu_times()
        busy = lambda t: sum(t) - t.idle - getattr(t, "iowait", 0.0)  # noqa: E731
        self.machine_busy = busy(m1) - busy(self._machine0)
        for name, pids in after.items():
            self.used[name] = sum(v - self.before.get(name, {}).get(pid, 0.0) for pid, v in pids.items())
        self.used["other"] = max(0.0, self.machine_busy - sum(self.used.values()))
        return self


# ---- profiling ----------------------------------------------------------------------------------------


def ensure_py_spy() -> str:
    path = BIN / "py-spy"
    if not path.exists():
        log("installing py-spy into the venv (profiling only)")
        subprocess.run([str(BIN / "pip"), "install", "-q", "py-spy"], check=True)
    return str(path)


class PySpy:
    """`py-spy record --format raw --idle` on a running process until stop() (SIGINT makes it write)."""

    def __init__(self, pid: int, output: Path, rate: int = 100, idle: bool = True) -> None:
        self.pid, self.output, self.rate, self.idle = pid, output, rate, idle
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PySpy:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            ensure_py_spy(),
            "record",
            "-p",
            str(self.pid),
            "-r",
            str(self.rate),
            "--format",
            "raw",
            "--nonblocking",
            "-o",
            str(self.output),
        ]
        self.proc = subprocess.Popen(
            cmd + (["--idle"] if self.idle else []), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        return self

    def stop(self) -> Path:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.output


def fresh_database(pool_size: int = 2) -> tuple[Any, Any, Any]:
    """Drop and recreate the bench database, migrate it, point this process at it; returns
    (settings, engine, sessionmaker) for set-up code that runs in the bench process itself."""
    from edm.db.engine import make_engine, make_sessionmaker
    from edm.settings import Settings

    recreate_database()
    edm("db", "upgrade")
    os.environ.update({k: v for k, v in edm_env().items() if k.startswith("EDM_")})
    settings = Settings()
    engine = make_engine(settings.database_url, pool_size=pool_size)
    return settings, engine, make_sessionmaker(engine)
