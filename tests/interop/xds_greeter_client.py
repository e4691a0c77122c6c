"""Counts helloworld.Greeter replies by version with grpcio (gRPC C-core): through gRPC's own xDS
client with an `xds:///LISTENER` target (bootstrap from GRPC_XDS_BOOTSTRAP), or through a plain
address such as an Envoy listener (then AUTHORITY picks Envoy's virtual host).

usage: xds_greeter_client.py TARGET N [AUTHORITY]

Sends N calls (each waits for the channel to be ready, so no sleeping before the first), then
prints one JSON line: {"v1": n, "v2": n, "errors": n, "first_error": "CODE: DETAILS" or null}.
Then reads stdin: each line runs another round, until stdin closes.

With MESH_XDS_CREDENTIALS=xds the channel uses gRPC's xDS credentials: mTLS as the clusters'
UpstreamTlsContext says, with the bootstrap's certificate providers. With MESH_XDS_FAIL_FAST=1,
calls do not wait for the channel to be ready: they fail once it is in TRANSIENT_FAILURE.
"""
import os
import json
import sys

import grpc
import grpc.experimental

from helloworld import decode, encode


def run_round(say_hello, n):
    counts, first = {"errors": 0}, None
    wait = os.environ.get("MESH_XDS_FAIL_FAST") != "1"
    for _ in range(n):
        try:
            reply = say_hello("xds", timeout=30, wait_for_ready=wait)
            version = reply.split(" from ", 1)[1].split(",", 1)[0]
            counts[version] = counts.get(version, 0) + 1
        except grpc.RpcError as error:
            counts["errors"] += 1
            first = first or f"{error.code().name}: {error.details()}"
    counts["first_error"] = first
    print(json.dumps(counts), flush=True)


def main():
    target, n = sys.argv[1], int(sys.argv[2])
    options = [("grpc.default_authority", sys.argv[3])] if len(sys.argv) > 3 else []
    if os.environ.get("MESH_XDS_CREDENTIALS") == "xds":
        credentials = grpc.xds_channel_credentials(fallback_credentials=grpc.experimental.insecure_channel_credentials())
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    with channel:
        say_hello = channel.unary_unary(
            "/helloworld.Greeter/SayHello", request_serializer=encode, response_deserializer=decode
        )
        run_round(say_hello, n)
        for _ in sys.stdin:
            run_round(say_hello, n)


if __name__ == "__main__":
    main()
