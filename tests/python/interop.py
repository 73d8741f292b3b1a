"""The Python side of meshlib's gRPC interop tests: grpcio, an independent gRPC implementation.

    interop.py server        a grpcio server for meshtest.Echo and grpc.health.v1.Health on
                             127.0.0.1; prints "PORT <n>" and serves until stdin closes
    interop.py client PORT   calls the meshtest.Echo server on 127.0.0.1:PORT with grpcio and
                             reads its health with grpcio-health-checking's client, printing one
                             line per result; between two health checks it waits for a line on
                             stdin, so that the test can change the server's readiness

Stubs are generated from tests/proto/echo.proto with grpcio-tools at start, into a temporary
directory, so nothing generated is kept in the repository.
"""

import os
import sys
import tempfile
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_tools import protoc

PROTO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "proto")


def stubs():
    out = tempfile.mkdtemp(prefix="meshlib-interop-")
    code = protoc.main(
        ["protoc", "-I", PROTO_DIR, f"--python_out={out}", f"--grpc_python_out={out}", "echo.proto"]
    )
    if code != 0:
        sys.exit(f"protoc failed with {code}")
    sys.path.insert(0, out)
    import echo_pb2
    import echo_pb2_grpc

    return echo_pb2, echo_pb2_grpc


def say(line):
    print(line, flush=True)


def serve():
    echo_pb2, echo_pb2_grpc = stubs()

    class Echo(echo_pb2_grpc.EchoServicer):
        def Unary(self, request, context):
            if request.message == "unavailable":
                context.abort(grpc.StatusCode.UNAVAILABLE, "grpcio says unavailable")
            if request.message == "invalid":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "grpcio says invalid")
            remaining = context.time_remaining()
            timeout = "" if remaining is None else f"{int(remaining * 1_000_000)}u"
            return echo_pb2.EchoReply(message=request.message, server="grpcio", grpc_timeout=timeout)

        def Stream(self, request, context):
            for i in range(request.count):
                yield echo_pb2.EchoReply(message=f"{request.message} {i}", server="grpcio")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    echo_pb2_grpc.add_EchoServicer_to_server(Echo(), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", "meshtest.Echo"):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    say(f"PORT {port}")
    # Serve until the test closes stdin (or dies).
    sys.stdin.read()
    server.stop(grace=None)


def client(port):
    echo_pb2, echo_pb2_grpc = stubs()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        echo = echo_pb2_grpc.EchoStub(channel)
        reply = echo.Unary(echo_pb2.EchoRequest(message="from grpcio"), timeout=3)
        say(f"UNARY {reply.server} {reply.message} {reply.grpc_timeout}")
        replies = list(echo.Stream(echo_pb2.EchoRequest(message="s", count=3), timeout=3))
        say("STREAM " + ",".join(r.message for r in replies))
        missing = channel.unary_unary(
            "/meshtest.Echo/Missing",
            request_serializer=echo_pb2.EchoRequest.SerializeToString,
            response_deserializer=echo_pb2.EchoReply.FromString,
        )
        try:
            missing(echo_pb2.EchoRequest(message="x"), timeout=3)
            say("ERROR none")
        except grpc.RpcError as error:
            say(f"ERROR {error.code().name}")

        checker = health_pb2_grpc.HealthStub(channel)

        def check(service):
            try:
                response = checker.Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
                return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            except grpc.RpcError as error:
                return error.code().name

        say(f"HEALTH {check('')} {check('meshtest.Echo')} {check('no.Such')}")
        sys.stdin.readline()
        say(f"HEALTH {check('')} {check('meshtest.Echo')}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["server"]:
        serve()
    elif sys.argv[1:2] == ["client"] and len(sys.argv) == 3:
        client(int(sys.argv[2]))
    else:
        sys.exit(__doc__)
