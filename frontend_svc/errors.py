"""Domain errors -> gRPC status codes, in one place."""
from __future__ import annotations

import functools
import inspect
import logging

import grpc
import redis

from artifacts import BlobCorrupt, BlobNotFound
from kiln.shapes import GraphError

log = logging.getLogger(__name__)


class NotFound(LookupError):
    pass


class Unavailable(RuntimeError):
    pass


class FailedPrecondition(RuntimeError):
    pass


def _code(err: BaseException) -> grpc.StatusCode:
    if isinstance(err, (GraphError, ValueError)):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(err, (NotFound, BlobNotFound)):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(err, BlobCorrupt):
        return grpc.StatusCode.DATA_LOSS
    if isinstance(err, FailedPrecondition):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(err, (Unavailable, redis.ConnectionError)):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


def _abort(context: grpc.ServicerContext, err: BaseException) -> None:
    code = _code(err)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("internal error")
    message = str(err.args[0]) if isinstance(err, (KeyError, NotFound)) and err.args else str(err)
    context.abort(code, message)


def translate(method):
    """Wrap a servicer method (unary or server-streaming) so domain errors become statuses."""
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def stream(self, request, context):
            try:
                yield from method(self, request, context)
            except Exception as err:  # noqa: BLE001
                if isinstance(err, grpc.RpcError) or context.code() is not None:
                    raise
                _abort(context, err)
        return stream

    @functools.wraps(method)
    def unary(self, request, context):
        try:
            return method(self, request, context)
        except Exception as err:  # noqa: BLE001
            if isinstance(err, grpc.RpcError) or context.code() is not None:
                raise
            _abort(context, err)
    return unary
