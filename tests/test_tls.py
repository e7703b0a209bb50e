"""TLS (`rediss://`) against a real TLS server: Debian's redis-server, with a throwaway CA and
certificates made by trustme for each run. The embedded Valkey has no TLS compiled in, so
these run only where `redis-server` is on PATH.

The server requires client certificates; its certificate names `localhost` only, so the
hostname check can be seen to work by connecting to 127.0.0.1."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from streamq.server import LocalServer
from tests.conftest import free_port, run_cli
from tests.test_cli import one_line_error

REDIS_SERVER = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="needs Debian's redis-server (TLS)")


class Tls:
    def __init__(self, port: int, files: dict[str, Path]) -> None:
        self.port = port
        self.files = files

    def url(self, host: str = "localhost", *, ca: str = "ca", client: bool = True) -> str:
        query = [f"ssl_ca_certs={self.files[ca]}"]
        if client:
            query += [f"ssl_certfile={self.files['client']}", f"ssl_keyfile={self.files['key']}"]
        return f"rediss://{host}:{self.port}/0?" + "&".join(query)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    assert REDIS_SERVER is not None
    folder = tmp_path_factory.mktemp("tls")
    ca, stranger = trustme.CA(), trustme.CA()
    server_cert = ca.issue_cert("localhost")
    client_cert = ca.issue_cert("streamq-worker")
    files = {name: folder / f"{name}.pem" for name in
             ("ca", "stranger", "server", "server_key", "client", "key")}  # fmt: skip
    ca.cert_pem.write_to_path(str(files["ca"]))
    stranger.cert_pem.write_to_path(str(files["stranger"]))
    server_cert.cert_chain_pems[0].write_to_path(str(files["server"]))
    server_cert.private_key_pem.write_to_path(str(files["server_key"]))
    client_cert.cert_chain_pems[0].write_to_path(str(files["client"]))
    client_cert.private_key_pem.write_to_path(str(files["key"]))
    port = free_port()
    options = ["--tls-port", str(port), "--tls-cert-file", str(files["server"]),
               "--tls-key-file", str(files["server_key"]), "--tls-ca-cert-file", str(files["ca"]),
               "--tls-auth-clients", "yes"]  # fmt: skip
    with LocalServer(REDIS_SERVER, extra_args=options):
        yield Tls(port, files)


def test_jobs_go_through_over_tls_with_the_ca_and_a_client_certificate(
    tls: Tls, stream: str
) -> None:
    url = tls.url()
    added = run_cli("enqueue", "--redis-url", url, "--stream", stream, "--payload", '{"n": 1}')
    assert added.returncode == 0, added.stderr
    ran = run_cli("consume", "--redis-url", url, "--stream", stream, "--burst",
                  "--handler", "streamq.examples:print_post")  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    shown = run_cli("job", "show", added.stdout.strip(), "--redis-url", url, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["state"] == "done"


def test_a_server_certificate_from_another_ca_is_refused_in_one_line(tls: Tls) -> None:
    result = run_cli("stats", "--redis-url", tls.url(ca="stranger"))
    one_line_error(
        result, "certificate verify failed: self-signed certificate in certificate chain"
    )


def test_a_certificate_for_another_host_name_is_refused(tls: Tls) -> None:
    # The certificate names localhost; 127.0.0.1 is the same server under another name.
    result = run_cli("stats", "--redis-url", tls.url("127.0.0.1"))
    one_line_error(result, "certificate is not valid for '127.0.0.1'")


def test_without_a_client_certificate_the_server_refuses_the_connection(tls: Tls) -> None:
    result = run_cli("stats", "--redis-url", tls.url(client=False))
    # TLS 1.3 lets the client see either the server's alert or only the closed socket.
    assert "certificate required" in result.stderr or "client certificate" in result.stderr
    one_line_error(result, "cannot reach Redis")
