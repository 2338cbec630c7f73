"""Build the gRPC server: the servicer, health, reflection."""
from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from frontend_svc.servicer import CompileServicer
from frontend_svc.submit import Frontend
from kiln.v1 import farm_pb2, farm_pb2_grpc

MAX_MESSAGE = 512 << 20
SERVICE = farm_pb2.DESCRIPTOR.services_by_name["CompileService"].full_name


def make_server(frontend: Frontend, listen: str, max_workers: int = 32) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                         options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                  ("grpc.max_send_message_length", MAX_MESSAGE)])
    farm_pb2_grpc.add_CompileServiceServicer_to_server(CompileServicer(frontend), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise RuntimeError(f"cannot listen on {listen}")
    return server, port
