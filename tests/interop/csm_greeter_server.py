"""Serves helloworld.Greeter with grpcio and gRPC's own CSM observability plugin
(grpcio-csm-observability), plaintext on 127.0.0.1, any port, recording its OpenTelemetry
metrics into an in-memory reader.

usage: csm_greeter_server.py   (labels from CSM_CANONICAL_SERVICE_NAME, CSM_WORKLOAD_NAME,
                                CSM_MESH_ID, as the plugin reads them)

Prints `listening on 127.0.0.1:PORT` once serving. Each line `metrics` on stdin prints one line
of JSON: every data point the plugin recorded so far, as {"name", "unit", "attributes",
"count" or "value"}. Stops when stdin closes (so it never outlives the test that started it).
"""
import json
import sys
from concurrent import futures

import grpc
from grpc_csm_observability import CsmOpenTelemetryPlugin
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from helloworld import decode, encode


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
                    else:
                        entry["value"] = point.value
                    out.append(entry)
    return out


def main():
    reader = InMemoryMetricReader()
    plugin = CsmOpenTelemetryPlugin(meter_provider=MeterProvider(metric_readers=[reader]))
    plugin.register_global()
    handler = grpc.method_handlers_generic_handler(
        "helloworld.Greeter",
        {
            "SayHello": grpc.unary_unary_rpc_method_handler(
                lambda name, context: f"hello {name} from grpcio", request_deserializer=decode, response_serializer=encode
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    for line in sys.stdin:
        if line.strip() == "metrics":
            print(json.dumps(points(reader)), flush=True)
    server.stop(grace=1).wait()
    plugin.deregister_global()


if __name__ == "__main__":
    main()
