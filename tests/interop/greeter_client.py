"""Calls helloworld.Greeter/SayHello once with grpcio (gRPC C-core) over mutual TLS.

usage: greeter_client.py TARGET CA CERT KEY NAME

Verifies the server's certificate against CA for the DNS name `localhost`. Prints the reply's
message and exits 0; on failure prints `CODE: DETAILS` to stderr and exits 1.
"""
import sys

import grpc

from helloworld import decode, encode


def main():
    target, ca, cert, key, name = sys.argv[1:6]
    with open(ca, "rb") as f:
        root = f.read()
    with open(cert, "rb") as f:
        chain = f.read()
    with open(key, "rb") as f:
        private = f.read()
    credentials = grpc.ssl_channel_credentials(root_certificates=root, private_key=private, certificate_chain=chain)
    options = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(target, credentials, options=options) as channel:
        say_hello = channel.unary_unary(
            "/helloworld.Greeter/SayHello", request_serializer=encode, response_deserializer=decode
        )
        try:
            print(say_hello(name, timeout=20), flush=True)
        except grpc.RpcError as error:
            print(f"{error.code().name}: {error.details()}", file=sys.stderr, flush=True)
            sys.exit(1)


if __name__ == "__main__":
    main()
