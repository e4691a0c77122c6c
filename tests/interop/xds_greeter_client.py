"""Counts helloworld.Greeter replies by version with grpcio (gRPC C-core): through gRPC's own xDS
client with an `xds:///LISTENER` target (bootstrap from GRPC_XDS_BOOTSTRAP), or through a plain
address such as an Envoy listener (then AUTHORITY picks Envoy's virtual host).

usage: xds_greeter_client.py TARGET N [AUTHORITY]

Sends N calls (each waits for the channel to be ready, so no sleeping before the first), then
prints one JSON line: {"v1": n, "v2": n, "errors": n, "first_error": "CODE: DETAILS" or null}.
Then reads stdin: each line runs another round, until stdin closes.
"""
import json
import sys

import grpc

from helloworld import decode, encode


def run_round(say_hello, n):
    counts, first = {"errors": 0}, None
    for _ in range(n):
        try:
            reply = say_hello("xds", timeout=30, wait_for_ready=True)
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
    with grpc.insecure_channel(target, options=options) as channel:
        say_hello = channel.unary_unary(
            "/helloworld.Greeter/SayHello", request_serializer=encode, response_deserializer=decode
        )
        run_round(say_hello, n)
        for _ in sys.stdin:
            run_round(say_hello, n)


if __name__ == "__main__":
    main()
