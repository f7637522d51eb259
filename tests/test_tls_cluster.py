"""Three ``trioraft node`` processes over mutual TLS on both listeners, with a client token:
the CLI's flags wired end to end. A client without the CA, without a certificate or without
the token gets nowhere."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest
import trio
import trustme

from tests.processes import TRIORAFT, ProcessCluster
from trioraft import BadRequest, ClientTls, ClusterClient

pytestmark = pytest.mark.xdist_group("http-cluster")


async def refused_by_tls(url: str, context: ssl.SSLContext) -> None:
    host, port = url.removeprefix("https://").split(":")
    with pytest.raises((trio.BrokenResourceError, ssl.SSLError, OSError)):
        stream = await trio.open_ssl_over_tcp_stream(host, int(port), ssl_context=context)
        async with stream:
            await stream.send_all(b"POST /request_vote HTTP/1.1\r\nHost: x\r\n\r\n")
            if not await stream.receive_some(65536):
                raise trio.BrokenResourceError("closed without an answer")


async def test_a_cluster_over_mutual_tls_with_a_client_token(tmp_path: Path) -> None:
    authority = trustme.CA()
    node_cert = authority.issue_cert("127.0.0.1")
    ca_file, cert_file = tmp_path / "ca.pem", tmp_path / "node.pem"
    ca = str(ca_file)
    authority.cert_pem.write_to_path(str(ca_file))
    node_cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    token_file = tmp_path / "client-token"
    token_file.write_text("client-token-0123456789\n")
    tls = ClientTls(ca_file=str(ca_file), cert_file=str(cert_file))
    flags = ["--tls-cert", str(cert_file), "--tls-key", str(cert_file), "--tls-ca", str(ca_file),
             "--client-token-file", str(token_file)]  # fmt: skip
    cluster = ProcessCluster(3, tmp_path, extra=flags, scheme="https", client_tls=tls)
    urls = list(cluster.urls.values())
    async with trio.open_nursery() as nursery:
        await cluster.start_all(nursery)
        with trio.fail_after(20):
            await cluster.wait_leader()
            async with ClusterClient(urls, token="client-token-0123456789", tls=tls) as kv:
                await kv.put("k", "v", 0)
                await kv.append("log", "a")
                assert (await kv.get("k")).value == "v"
            async with ClusterClient(urls, tls=tls) as kv:  # no token
                with pytest.raises(BadRequest) as refused:
                    await kv.get("k")
                assert refused.value.status == 401
            # No CA: the servers' certificates are not trusted. No client certificate:
            # the peer listener refuses the handshake.
            for context in (ssl.create_default_context(), ssl.create_default_context(cafile=ca)):
                await refused_by_tls(cluster.peer_urls["1"], context)
            tls_args = ["--cacert", str(ca_file), "--cert", str(cert_file),
                        "--token-file", str(token_file)]  # fmt: skip
            result = await trio.run_process(
                [*TRIORAFT, "get", "k", "--servers", ",".join(urls), *tls_args],
                capture_stdout=True,
            )
            got = json.loads(result.stdout)
            assert (got["key"], got["value"], got["version"]) == ("k", "v", 1)
        await cluster.stop_all()
