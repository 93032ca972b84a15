"""https:// backends signed by a private CA, and backends that ask for the gateway's
client certificate (vLLM's --ssl-ca-certs with --ssl-cert-reqs 2): `upstream_tls`."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.settings import SettingsError, load_settings
from tests.conftest import MODEL, StartGateway, chat, model_list

ANSWER = {"id": "c", "object": "chat.completion", "model": MODEL,
          "choices": [{"index": 0, "finish_reason": "stop",
                       "message": {"role": "assistant", "content": "over tls"}}]}


def _issue(subject: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
           *, ca: bool = False, server: bool = False,
           ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer is not None else (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A private CA, a server certificate for localhost and a client certificate."""
    ca, ca_key = _issue("test ca", None, ca=True)
    _write(tmp_path / "ca", ca, ca_key)
    for name, server in (("server", True), ("client", False)):
        cert, key = _issue(name, (ca.subject, ca_key), server=server)
        _write(tmp_path / name, cert, key)
    return tmp_path


async def _tls_backend(servers: list[web.AppRunner], pki: Path, *,
                       require_client: bool) -> str:
    async def handler(request: web.Request) -> web.Response:
        if request.path == "/v1/models":
            return model_list()
        if request.path == "/v1/chat/completions":
            return web.json_response(ANSWER)
        return web.Response()

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki / "server.crt", pki / "server.key")
    if require_client:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki / "ca.crt")
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    servers.append(runner)
    return f"https://localhost:{runner.addresses[0][1]}"


async def _ask(url: str, token: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.post(
            url + "/v1/chat/completions", json=chat("hi"),
            headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status, await resp.text()


async def test_a_backend_signed_by_a_private_ca(
        start_gateway: StartGateway, servers: list[web.AppRunner], pki: Path,
        token: str) -> None:
    backend = await _tls_backend(servers, pki, require_client=False)
    trusting = await start_gateway(backend, upstream_tls={"ca_file": str(pki / "ca.crt")})
    status, text = await _ask(trusting.url, token)
    assert status == 200 and "over tls" in text
    untrusting = await start_gateway(backend)  # the system's CAs do not know it
    status, text = await _ask(untrusting.url, token)
    assert status == 503, text  # never healthy: its certificate is not trusted


async def test_a_backend_that_asks_for_the_gateways_certificate(
        start_gateway: StartGateway, servers: list[web.AppRunner], pki: Path,
        token: str) -> None:
    backend = await _tls_backend(servers, pki, require_client=True)
    ca = str(pki / "ca.crt")
    with_cert = await start_gateway(backend, upstream_tls={
        "ca_file": ca, "cert_file": str(pki / "client.crt"),
        "key_file": str(pki / "client.key")})
    status, text = await _ask(with_cert.url, token)
    assert status == 200 and "over tls" in text
    without = await start_gateway(backend, upstream_tls={"ca_file": ca})
    status, _ = await _ask(without.url, token)
    assert status == 503


def test_bad_tls_files_stop_start_up_naming_the_key(pki: Path, tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    for tls, message in (
            ({"ca_file": str(tmp_path / "absent.pem")}, "upstream_tls.ca_file: no such file"),
            ({"ca_file": str(tmp_path / "junk.pem")}, "upstream_tls.ca_file: not a PEM"),
            ({"cert_file": str(pki / "client.crt")}, "needs both cert_file and key_file"),
            ({"cert_file": str(pki / "client.crt"), "key_file": str(pki / "server.key")},
             "upstream_tls.cert_file: not a PEM certificate with its key")):
        with pytest.raises(SettingsError, match=message):
            load_settings(env={}, overrides={"upstream_tls": tls})
