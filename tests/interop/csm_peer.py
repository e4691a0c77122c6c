"""gRPC's own CSM observability (grpcio-csm-observability) as a peer of mesh, both ways: serves
helloworld.Greeter with grpcio, plaintext on 127.0.0.1, any port, and calls a mesh server on
request; the plugin records its OpenTelemetry metrics (gRFC A66 with the CSM labels of A79) into
an in-memory reader.

usage: csm_peer.py   (labels from CSM_CANONICAL_SERVICE_NAME, CSM_WORKLOAD_NAME, CSM_MESH_ID, as
                      the plugin reads them)

Prints `listening on 127.0.0.1:PORT` once serving. Then reads commands on stdin, one a line:
- `metrics`: prints one line of JSON, every data point recorded so far, as {"name", "unit",
  "attributes", and "count", "sum", "bounds" for a histogram or "value" for a counter};
- `call HOST:PORT N`: N unary SayHello calls to a mesh server, then prints `called N`.
Stops when stdin closes (so it never outlives the test that started it).

The method is registered on both sides (a registered handler, a registered client method), so
grpc.method carries its name as a generated stub's would. grpcio turns CSM on only for channels
to an `xds:` target (Traffic Director's); this peer calls mesh by address, so the plugin's option
is told the channel is a CSM one (the one change to the plugin's behaviour; everything it records
is its own).
"""
import json
import sys
from concurrent import futures

import grpc
import grpc_csm_observability
from grpc_csm_observability import CsmOpenTelemetryPlugin
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from helloworld import decode, encode

METHOD = "/helloworld.Greeter/SayHello"


def points(reader):
    out = []
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    entry = {"name": metric.name, "unit": metric.unit, "attributes": dict(point.attributes)}
                    if hasattr(point, "count"):
                        entry["count"] = point.count
                        entry["sum"] = point.sum
                        entry["bounds"] = list(point.explicit_bounds)
                    else:
                        entry["value"] = point.value
                    out.append(entry)
    return out


def call(target, n):
    with grpc.insecure_channel(target) as channel:
        say_hello = channel.unary_unary(
            METHOD, request_serializer=encode, response_deserializer=decode, _registered_method=True
        )
        for i in range(n):
            say_hello(f"grpcio {i}", timeout=30)
    return n


def main():
    option = grpc_csm_observability._csm_observability_plugin.CsmOpenTelemetryPluginOption
    option.is_active_on_client_channel = staticmethod(lambda target: True)
    reader = InMemoryMetricReader()
    plugin = CsmOpenTelemetryPlugin(meter_provider=MeterProvider(metric_readers=[reader]))
    plugin.register_global()
    handlers = {
        "SayHello": grpc.unary_unary_rpc_method_handler(
            lambda name, context: f"hello {name} from grpcio", request_deserializer=decode, response_serializer=encode
        )
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_registered_method_handlers("helloworld.Greeter", handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    for line in sys.stdin:
        words = line.split()
        if words == ["metrics"]:
            print(json.dumps(points(reader)), flush=True)
        elif len(words) == 3 and words[0] == "call":
            print(f"called {call(words[1], int(words[2]))}", flush=True)
    server.stop(grace=1).wait()
    plugin.deregister_global()


if __name__ == "__main__":
    main()
