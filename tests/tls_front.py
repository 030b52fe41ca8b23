"""A real TLS front for tests and benchmarks: Debian's nginx on loopback, with a certificate
from a certificate authority made here, checking a bearer token before it passes a publish on
to a Pushpin, as Fastly's publish endpoint does (``/service/<id>/publish/``, ``Authorization:
Bearer <token>``). The same server listens on a plain http port too, so that one test body can
run over both.

Besides the publish path it answers ``/connection`` with nginx's connection number and the
count of requests made on that connection (a keep-alive test reads them), and ``/chunked``
with a body nginx sends chunked (its SSI filter drops the length).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support import free_ports

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CHUNKED_BODY = "an answer nginx sends chunked\n"


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the authority's certificate: what a client must trust
    cert: Path  # the server's, for 127.0.0.1, signed by the authority
    key: Path


def make_certificates(folder: Path, host: str = "127.0.0.1") -> Certificates:
    """A certificate authority and a server certificate for ``host`` signed by it."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test authority")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = Certificates(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


class TlsFront:
    """nginx serving TLS on a free loopback port; ``publish_url`` leads to ``upstream_port``'s
    ``/publish/`` when the request carries ``Authorization: Bearer <token>``, else 401."""

    def __init__(
        self,
        folder: Path,
        upstream_port: int,
        token: str,
        service: str = "test-service",
        keepalive_seconds: int = 75,
    ) -> None:
        self.folder = folder
        self.upstream_port = upstream_port
        self.token = token
        self.service = service
        self.keepalive_seconds = keepalive_seconds
        self.port, self.plain_port = free_ports(2)
        self.certificates = make_certificates(folder / "tls")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def plain_url(self) -> str:
        return f"http://127.0.0.1:{self.plain_port}"

    @property
    def grip_base(self) -> str:
        """The GRIP_URL of this front without its key (``.../service/<id>``, as Fastly's)."""
        return f"{self.url}/service/{self.service}"

    @property
    def log_path(self) -> Path:
        return self.folder / "error.log"

    def config(self) -> str:
        temp = self.folder / "temp"
        # As root, nginx's workers would run as nobody, who cannot read the test's folder.
        user = "user root;" if os.geteuid() == 0 else ""
        return f"""
{user}
daemon off;
worker_processes 1;
pid {self.folder}/nginx.pid;
error_log {self.log_path} warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    client_max_body_size 2m;
    client_body_buffer_size 2m;
    keepalive_timeout {self.keepalive_seconds}s;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{self.port} ssl;
        listen 127.0.0.1:{self.plain_port};
        ssl_certificate {self.certificates.cert};
        ssl_certificate_key {self.certificates.key};
        location = /service/{self.service}/publish/ {{
            if ($http_authorization != "Bearer {self.token}") {{
                return 401 "wrong token\\n";
            }}
            proxy_pass http://127.0.0.1:{self.upstream_port}/publish/;
        }}
        location = /connection {{
            return 200 "$connection $connection_requests\\n";
        }}
        location = /chunked {{
            default_type text/html;
            ssi on;
            return 200 "{CHUNKED_BODY.strip()}\\n";
        }}
    }}
}}
"""

    def start(self, timeout: float = 10.0) -> TlsFront:
        (self.folder / "temp").mkdir(parents=True, exist_ok=True)
        path = self.folder / "nginx.conf"
        path.write_text(self.config())
        self.process = subprocess.Popen(
            # -e: the log nginx opens before it reads its config (Debian's is root's)
            [NGINX, "-c", str(path), "-p", str(self.folder), "-e", str(self.log_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.log_path.read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def reload(self, token: str) -> None:
        """Accept ``token`` from now on (nginx rereads its config on SIGHUP)."""
        assert self.process is not None
        self.token = token
        (self.folder / "nginx.conf").write_text(self.config())
        self.process.send_signal(signal.SIGHUP)
        # New workers take over from the old ones: wait until the new token is let through.
        context = ssl.create_default_context(cafile=self.certificates.ca)
        deadline = time.monotonic() + 10
        with httpx.Client(verify=context, timeout=5) as client:
            while True:
                answer = client.post(
                    self.grip_base + "/publish/",
                    json={"items": []},
                    headers={"Authorization": f"Bearer {token}"},
                )
                if answer.status_code == 200:
                    return
                assert time.monotonic() < deadline, f"nginx still answers {answer.status_code}"
                time.sleep(0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT)  # graceful: the workers finish and exit
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> TlsFront:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
