"""The Python side of meshlib's gRPC interop tests: grpcio, an independent gRPC implementation,
over mTLS with certificates from meshlib's development CA.

    interop.py server CERT KEY CA
        a grpcio server for meshtest.Echo and grpc.health.v1.Health on 127.0.0.1, presenting
        CERT/KEY and requiring a client certificate signed by CA; prints "PORT <n>" and serves
        until stdin closes. Each reply carries the caller's SPIFFE ID, as grpcio verified it, in
        the initial metadata "x-peer-identity".

    interop.py client PORT CERT KEY CA
        calls the meshtest.Echo server on 127.0.0.1:PORT over TLS, presenting CERT/KEY and
        verifying the server against CA and the address dialled (the server's certificate needs
        an IP SAN of 127.0.0.1), and reads its health with grpcio-health-checking's client,
        printing one line per result; between two health checks it waits for a line on stdin,
        so that the test can change the server's readiness.

    interop.py plaintext PORT
        one call to 127.0.0.1:PORT without TLS; prints "ERROR <code>" or "OK".

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


def read(path):
    with open(path, "rb") as file:
        return file.read()


def say(line):
    print(line, flush=True)


def peer_spiffe_id(context):
    """The caller's SPIFFE ID as grpcio's TLS stack verified it: the URI SAN of its certificate."""
    auth = context.auth_context()
    for key in ("peer_spiffe_id", "x509_uri"):
        for value in auth.get(key, []):
            value = value.decode()
            if value.startswith("spiffe://"):
                return value
    return "none"


def serve(cert, key, ca):
    echo_pb2, echo_pb2_grpc = stubs()

    class Echo(echo_pb2_grpc.EchoServicer):
        def Unary(self, request, context):
            context.send_initial_metadata((("x-peer-identity", peer_spiffe_id(context)),))
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
    credentials = grpc.ssl_server_credentials(
        [(read(key), read(cert))], root_certificates=read(ca), require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    say(f"PORT {port}")
    # Serve until the test closes stdin (or dies).
    sys.stdin.read()
    server.stop(grace=None)


def client(port, cert, key, ca):
    echo_pb2, echo_pb2_grpc = stubs()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert)
    )
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        echo = echo_pb2_grpc.EchoStub(channel)
        try:
            reply = echo.Unary(echo_pb2.EchoRequest(message="from grpcio"), timeout=3)
            say(f"UNARY {reply.server} {reply.message} {reply.grpc_timeout}")
        except grpc.RpcError as error:
            # Refused (by the server's authorization, say): nothing else to try.
            say(f"ERROR {error.code().name} {error.details()}")
            return
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


def plaintext(port):
    echo_pb2, echo_pb2_grpc = stubs()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            echo_pb2_grpc.EchoStub(channel).Unary(echo_pb2.EchoRequest(message="x"), timeout=3)
            say("OK")
        except grpc.RpcError as error:
            say(f"ERROR {error.code().name}")


if __name__ == "__main__":
    command, args = sys.argv[1:2], sys.argv[2:]
    if command == ["server"] and len(args) == 3:
        serve(*args)
    elif command == ["client"] and len(args) == 4:
        client(int(args[0]), *args[1:])
    elif command == ["plaintext"] and len(args) == 1:
        plaintext(int(args[0]))
    else:
        sys.exit(__doc__)
