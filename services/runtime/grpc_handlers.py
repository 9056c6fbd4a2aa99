"""Wrapping a gRPC method handler so that code runs around its behavior, for all four RPC shapes.

The server interceptors (error boundary, authentication, tenant scoping, validation) are each an async context
manager entered around the servicer's method, inside the RPC's own task, so context variables they set are
seen by the servicer and by no other RPC. An interceptor may also replace the request deserializer and wrap the
request stream of client-streaming methods (validation checks each streamed message).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc

# Called with the request (None for client-streaming methods: the stream is not read ahead) and the context.
Around = Callable[[Any, grpc.aio.ServicerContext], AbstractAsyncContextManager[None]]
Behavior = Callable[..., Any]
RequestStream = Callable[[AsyncIterator[Any]], AsyncIterator[Any]]


def wrap_handler(
    handler: grpc.RpcMethodHandler,
    around: Around,
    *,
    request_deserializer: Callable[[bytes], Any] | None = None,
    request_stream: RequestStream | None = None,
) -> grpc.RpcMethodHandler:
    """The same handler with `around(request, context)` entered for the whole of each call.

    `request_deserializer` replaces the handler's own; `request_stream` wraps the request iterator a
    client-streaming behavior receives.
    """
    serializers = (request_deserializer or handler.request_deserializer, handler.response_serializer)
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary(handler.unary_unary, around, True, None), *serializers
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _wrap_stream(handler.unary_stream, around, True, None), *serializers
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _wrap_unary(handler.stream_unary, around, False, request_stream), *serializers
        )
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(
        _wrap_stream(handler.stream_stream, around, False, request_stream), *serializers
    )


def _wrap_unary(
    behavior: Behavior, around: Around, unary_request: bool, request_stream: RequestStream | None
) -> Behavior:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with around(request if unary_request else None, context):
            if request_stream is not None:
                request = request_stream(request)
            return await behavior(request, context)

    return wrapped


def _wrap_stream(
    behavior: Behavior, around: Around, unary_request: bool, request_stream: RequestStream | None
) -> Behavior:
    # A response-streaming behavior is either an async generator or a coroutine that calls context.write().
    if inspect.isasyncgenfunction(behavior):

        async def generator(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with around(request if unary_request else None, context):
                if request_stream is not None:
                    request = request_stream(request)
                async for response in behavior(request, context):
                    yield response

        return generator
    return _wrap_unary(behavior, around, unary_request, request_stream)
