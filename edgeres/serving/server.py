"""A `tritonserver` binary to serve an exported repository, and running it.

Where Triton is installed (NVIDIA's server image: /opt/tritonserver, or EDGERES_TRITONSERVER naming such
a folder) that one runs, with all its backends. Elsewhere edgeres installs the `tritonserver` binary
that the `nvidia-pytriton` wheel carries (Triton 2.51.0, Linux x86-64, CPU, with the Python backend
only) under its cache, once: the wheel's Python package pins numpy 1.x, so it is unpacked without its
dependencies and never imported. That binary serves repositories whose artifact runs in the Python
backend (`edgeres triton export --backend python`); ONNX Runtime, OpenVINO and TensorRT backends come
with NVIDIA's image only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import ServingError

TRITON_WHEEL = "nvidia-pytriton==0.7.0"
TRITON_VERSION = "2.51.0"
SERVER_ENV = "EDGERES_TRITONSERVER"
NVIDIA_IMAGE_HOME = Path("/opt/tritonserver")
READY = "edgeres-tritonserver.json"
EXIT_TIMEOUT = 5  # seconds Triton waits for requests in flight when stopped
# What Triton logs on every start on a machine without a GPU: never the reason it failed
LOG_NOISE = ("CUDA", "NVML", "DCGM", "CudaDriverHelper", "cuda", "pinned memory")


@dataclass(frozen=True)
class ServerInstall:
    binary: Path
    backends: Path
    libraries: tuple[Path, ...]
    source: str  # where it came from, for messages
    backend_names: tuple[str, ...] = field(default=())

    def has_backend(self, name: str) -> bool:
        return name in self.backend_names


def find_server(install: bool = True, log: Callable[[str], None] = print) -> ServerInstall:
    """The Triton this machine has; the wheel's binary installed under the cache first where `install`."""
    named = os.environ.get(SERVER_ENV)
    if named:
        return _installed_at(Path(named), f"{SERVER_ENV}={named}")
    if (NVIDIA_IMAGE_HOME / "bin" / "tritonserver").is_file():
        return _installed_at(NVIDIA_IMAGE_HOME, str(NVIDIA_IMAGE_HOME))
    home = _cache_home()
    if not (home / READY).is_file():
        if not install:
            raise ServingError(f"no tritonserver here: run `edgeres triton serve` once to install the one the "
                               f"{TRITON_WHEEL} wheel carries, or set {SERVER_ENV} to a Triton install folder")
        _install(home, log)
    return _from_wheel(home)


def _installed_at(home: Path, source: str) -> ServerInstall:
    binary = home / "bin" / "tritonserver"
    if not binary.is_file():
        raise ServingError(f"{source}: no bin/tritonserver in {home}; point {SERVER_ENV} at a Triton install folder "
                           "(the one holding bin/ and backends/, /opt/tritonserver in NVIDIA's image)")
    backends = home / "backends"
    names = tuple(sorted(p.name for p in backends.iterdir())) if backends.is_dir() else ()
    return ServerInstall(binary, backends, (home / "lib",), source, names)


def _cache_home() -> Path:
    from ..runtime.base import cache_root

    return cache_root() / f"tritonserver-{TRITON_VERSION}-py{sys.version_info[0]}{sys.version_info[1]}"


def _from_wheel(home: Path) -> ServerInstall:
    server = home / "pytriton" / "tritonserver"
    return ServerInstall(server / "bin" / "tritonserver", home / "backends", (home / "nvidia_pytriton.libs",),
                         f"{TRITON_WHEEL} under {home}", ("python",))


def _install(home: Path, log: Callable[[str], None]) -> None:
    """pip unpacks the wheel into a scratch folder beside `home`, renamed into place once complete."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        raise ServingError(f"the {TRITON_WHEEL} wheel's tritonserver is for Linux x86-64; elsewhere run NVIDIA's "
                           f"Triton image and set {SERVER_ENV} to its install folder")
    home.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{home.name}-", dir=home.parent))
    try:
        log(f"Installing Triton Inference Server {TRITON_VERSION} (the tritonserver binary of {TRITON_WHEEL}, "
            f"about 150 MB, once) into {home}")
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                               "--quiet", "--no-deps", "--target", str(scratch), TRITON_WHEEL],
                              capture_output=True, text=True)
        if done.returncode != 0:
            tail = " | ".join(done.stderr.strip().splitlines()[-4:])
            raise ServingError(f"pip could not fetch {TRITON_WHEEL} ({tail}); check the network or the package "
                               f"index, or set {SERVER_ENV} to a Triton install folder")
        _python_backend(scratch)
        (scratch / READY).write_text(f'{{"wheel": "{TRITON_WHEEL}", "triton": "{TRITON_VERSION}"}}\n')
        scratch.chmod(0o755)
        shutil.rmtree(home, ignore_errors=True)
        scratch.rename(home)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _python_backend(folder: Path) -> None:
    """Triton's Python backend with the stub built for this interpreter's Python version."""
    server = folder / "pytriton" / "tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServingError(f"{TRITON_WHEEL} has no Python backend stub for Python {version}; serve from NVIDIA's "
                           f"Triton image (set {SERVER_ENV})")
    backend = folder / "backends" / "python"
    backend.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copyfile(server / "backends" / "python" / name, backend / name)
    shutil.copyfile(stub, backend / stub.name)
    (backend / stub.name).chmod(0o755)
    (server / "bin" / "tritonserver").chmod(0o755)


PLATFORM_BACKENDS = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt", "ensemble": None}


def missing_backends(repository: Path, install: ServerInstall) -> dict[str, str]:
    """The models of `repository` whose backend this Triton lacks, with that backend."""
    import re

    missing = {}
    for config in sorted(Path(repository).glob("*/config.pbtxt")):
        text = config.read_text(errors="replace")
        named = re.search(r'^\s*backend:\s*"([^"]+)"', text, re.M)
        platform = re.search(r'^\s*platform:\s*"([^"]+)"', text, re.M)
        needed = named.group(1) if named else PLATFORM_BACKENDS.get(platform.group(1)) if platform else None
        if needed and not install.has_backend(needed):
            missing[config.parent.name] = needed
    return missing


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TritonServer:
    """`tritonserver` serving `repository`, on loopback unless `host` says otherwise; a context manager.

    Ports left at 0 are chosen free. The Python backend's stub runs this interpreter's environment (its
    folder first on PATH, its libpython first on the library path), where edgeres is installed.
    """

    def __init__(self, repository: Path, http_port: int = 0, grpc_port: int = 0, metrics_port: int = 0,
                 host: str = "127.0.0.1", install: ServerInstall | None = None, log_path: Path | None = None,
                 log: Callable[[str], None] = print):
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir() or not any(self.repository.glob("*/config.pbtxt")):
            raise ServingError(f"{repository} holds no Triton models (no */config.pbtxt); give the folder "
                               "`edgeres triton export` wrote")
        reason = check_python_backend_here()
        if reason:  # the repository's preprocessing steps run in the Python backend
            raise ServingError(reason)
        self.install = install or find_server(log=log)
        missing = missing_backends(self.repository, self.install)
        if missing:
            model, backend = next(iter(missing.items()))
            raise ServingError(f"model {model} needs Triton's {backend} backend, which {self.install.source} lacks "
                               f"(it has {', '.join(self.install.backend_names) or 'none'}): export the set again with "
                               "--backend python, or serve it from NVIDIA's Triton image (EDGERES_TRITONSERVER)")
        self.host = host
        self.http_port, self.grpc_port, self.metrics_port = (port or free_port()
                                                             for port in (http_port, grpc_port, metrics_port))
        self.log_path = Path(log_path) if log_path else _log_file()
        self.process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"{_connect_host(self.host)}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{_connect_host(self.host)}:{self.grpc_port}"

    def command(self) -> list[str]:
        return [str(self.install.binary), f"--model-repository={self.repository}",
                f"--backend-directory={self.install.backends}", f"--http-address={self.host}",
                f"--http-port={self.http_port}", f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
                f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}", "--log-info=true",
                # below edgeres' own SIGTERM grace (termination.py), so a stopped edgeres never leaves it behind
                f"--exit-timeout-secs={EXIT_TIMEOUT}"]

    def start(self, timeout: float = 180.0) -> "TritonServer":
        """Start it and wait until it is ready; stopped again if that fails or is interrupted."""
        self._check_ports()
        try:
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                                env=_environment(self.install), start_new_session=True)
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServingError(f"tritonserver stopped (exit {self.process.returncode}) before it was ready: "
                                   f"{self.problems()} (its log: {self.log_path})")
            if self.ready():
                return
            time.sleep(0.25)
        raise ServingError(f"tritonserver was not ready after {timeout:.0f} s: {self.problems()} "
                           f"(log: {self.log_path})")

    def _check_ports(self) -> None:
        """A port something else holds would answer our readiness probe for a server that never started."""
        for option, port in (("http", self.http_port), ("grpc", self.grpc_port), ("metrics", self.metrics_port)):
            with socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((self.host, port))
                except OSError as error:
                    raise ServingError(f"{self.host}:{port} is taken ({error.strerror}): another server holds it; "
                                       f"choose another --{option}-port, or stop that server") from None

    def ready(self) -> bool:
        """This server's process is running and answers ready (not some other process on the port)."""
        if self.process is None or self.process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def problems(self) -> str:
        """The error lines of the server's log that say something, without a CPU machine's CUDA/NVML noise."""
        text = self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""
        lines = [line.strip() for line in text.splitlines()
                 if (line.startswith("E") or "error" in line.lower() or "failed to" in line.lower())
                 and not any(noise in line for noise in LOG_NOISE)]
        return " | ".join(dict.fromkeys(lines))[-1500:] or "no error in its log"

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: nothing is finished or flushed."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = EXIT_TIMEOUT + 3) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # Triton finishes the requests in flight, then exits
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # Python-backend stubs left behind
        except ProcessLookupError:
            pass

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _log_file() -> Path:
    handle, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
    os.close(handle)
    return Path(name)


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _environment(install: ServerInstall) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # the stub must load this interpreter's libpython: another Python's (the system's) with this one's
    # standard library fails inside threading (measured with PyTriton's own launcher)
    libraries = [sysconfig.get_config_var("LIBDIR") or "", *map(str, install.libraries), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(part for part in libraries if part)
    return env


def check_python_backend_here() -> str | None:
    """Why this interpreter cannot run Triton's Python-backend stub, or None."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return (f"this Python ({sys.executable}) was built without a shared libpython, which Triton's Python backend "
                "stub loads; use a Python built with --enable-shared (pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared)")
    return None
