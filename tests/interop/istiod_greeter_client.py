"""grpcio's own xDS client (gRPC C-core) for tests/istiod_*.rs: one `xds:///TARGET` channel with
gRPC's xDS credentials (mTLS as the clusters' UpstreamTlsContext says, with the bootstrap's
certificate providers; plaintext where a cluster has none), driven by JSON commands on stdin.

usage: istiod_greeter_client.py TARGET   (bootstrap from GRPC_XDS_BOOTSTRAP)

Each stdin line is one command; each command prints one JSON line on stdout:

- {"op": "round", "calls": N, "metadata": [[k, v]], "method": "/pkg.Svc/Method",
   "timeout": seconds, "wait_for_ready": bool, "concurrency": C}
  -> {"versions": {"v1": n}, "errors": {"UNAVAILABLE": n}, "first_error": "CODE: details" | null}
  Replies name the version that answered ("hello NAME from V, you are ID").
- {"op": "load_start", ...round options without calls}: calls in a loop on a background thread
  -> {"started": true}
- {"op": "load_stop"} -> the background load's counts, as a round's.
"""
import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import grpc.experimental

from helloworld import decode, encode


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.versions, self.errors, self.first = {}, {}, None

    def add_reply(self, reply):
        version = reply.split(" from ", 1)[1].split(",", 1)[0] if " from " in reply else "?"
        with self.lock:
            self.versions[version] = self.versions.get(version, 0) + 1

    def add_error(self, error):
        code = error.code().name
        with self.lock:
            self.errors[code] = self.errors.get(code, 0) + 1
            self.first = self.first or f"{code}: {error.details()}"

    def json(self):
        with self.lock:
            return {"versions": self.versions, "errors": self.errors, "first_error": self.first}


def call(channel, options, counts):
    method = options.get("method", "/helloworld.Greeter/SayHello")
    stub = channel.unary_unary(method, request_serializer=encode, response_deserializer=decode)
    try:
        reply = stub(
            "istiod",
            timeout=options.get("timeout", 30),
            wait_for_ready=options.get("wait_for_ready", True),
            metadata=[tuple(kv) for kv in options.get("metadata", [])],
        )
        counts.add_reply(reply)
    except grpc.RpcError as error:
        counts.add_error(error)


def run_round(channel, options):
    counts = Counts()
    calls, concurrency = options.get("calls", 100), options.get("concurrency", 1)
    if concurrency <= 1:
        for _ in range(calls):
            call(channel, options, counts)
    else:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            for future in [pool.submit(call, channel, options, counts) for _ in range(calls)]:
                future.result()
    return counts.json()


def main():
    target = sys.argv[1]
    credentials = grpc.xds_channel_credentials(fallback_credentials=grpc.experimental.insecure_channel_credentials())
    load = None
    with grpc.secure_channel(target, credentials) as channel:
        for line in sys.stdin:
            command = json.loads(line)
            op = command.get("op")
            if op == "round":
                out = run_round(channel, command)
            elif op == "load_start":
                stop, counts = threading.Event(), Counts()

                def loop(stop=stop, counts=counts, options=command):
                    while not stop.is_set():
                        call(channel, options, counts)

                thread = threading.Thread(target=loop, daemon=True)
                thread.start()
                load = (stop, counts, thread)
                out = {"started": True}
            elif op == "load_stop":
                stop, counts, thread = load
                stop.set()
                thread.join()
                out = counts.json()
            else:
                out = {"unknown": op}
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
