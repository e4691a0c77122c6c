"""Serves helloworld.Greeter with grpcio (gRPC C-core) over mutual TLS on 127.0.0.1, any port.

usage: greeter_server.py CA CERT KEY

Requires a client certificate chained to CA. SayHello answers
`hello NAME from grpcio, you are CALLER_SPIFFE_ID`. Prints `listening on 127.0.0.1:PORT` once
serving, and stops when its stdin closes (so it never outlives the test that started it).
"""
import sys
from concurrent import futures

import grpc

from helloworld import decode, encode


def caller(context):
    auth = context.auth_context()
    for key in ("peer_spiffe_id", "x509_subject_alternative_name"):
        for value in auth.get(key, []):
            text = value.decode("utf-8", "replace")
            if text.startswith("spiffe://"):
                return text
    return "?"


def say_hello(name, context):
    return f"hello {name} from grpcio, you are {caller(context)}"


def main():
    ca, cert, key = sys.argv[1:4]
    with open(ca, "rb") as f:
        root = f.read()
    with open(cert, "rb") as f:
        chain = f.read()
    with open(key, "rb") as f:
        private = f.read()
    handler = grpc.method_handlers_generic_handler(
        "helloworld.Greeter",
        {"SayHello": grpc.unary_unary_rpc_method_handler(say_hello, request_deserializer=decode, response_serializer=encode)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    credentials = grpc.ssl_server_credentials([(private, chain)], root_certificates=root, require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    sys.stdin.read()
    server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
