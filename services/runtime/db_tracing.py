"""A CLIENT span per SQL statement a traced operation runs, from SQLAlchemy's cursor events.

Only statements run inside a span are traced: the health pings, relay polls and backlog readings that run on
their own would each start a trace of one span. Span names are the operation and the database
(`SELECT mailsync`); the statement text is an attribute without its parameters (SQLAlchemy's bound parameters
never reach it), so no message content or token can leak into a trace. The OpenTelemetry SQLAlchemy
instrumentation does the same; its released wheels pin an older opentelemetry-instrumentation than the gRPC
instrumentation the services use.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from sqlalchemy import event
from sqlalchemy.engine import Engine

INSTRUMENTATION_NAME = "mailsync.runtime.db"
_SPAN_KEY = "mailsync_statement_span"
# Statement text is cut at this length: a multi-row insert of a big batch would otherwise be kilobytes per span.
_MAX_STATEMENT = 2000


def _operation(statement: str) -> str:
    words = statement.split(None, 1)
    return words[0].upper() if words else "SQL"


def instrument_engine(engine: Engine, *, system: str, namespace: str) -> None:
    """Adds the span hooks to a (sync) engine; an AsyncEngine passes its `sync_engine`."""
    tracer = trace.get_tracer(INSTRUMENTATION_NAME)

    @event.listens_for(engine, "before_cursor_execute")
    def _start(
        _conn: Any, _cursor: Any, statement: str, _parameters: Any, context: Any, executemany: bool
    ) -> None:
        if context is None or not trace.get_current_span().get_span_context().is_valid:
            return
        operation = _operation(statement)
        span = tracer.start_span(
            f"{operation} {namespace}",
            kind=SpanKind.CLIENT,
            attributes={
                "db.system.name": system,
                "db.namespace": namespace,
                "db.operation.name": operation,
                "db.query.text": statement[:_MAX_STATEMENT],
                "mailsync.db.executemany": executemany,
            },
        )
        setattr(context, _SPAN_KEY, span)

    def _finish(context: Any, error: BaseException | None) -> None:
        span: Span | None = getattr(context, _SPAN_KEY, None)
        if span is None:
            return
        setattr(context, _SPAN_KEY, None)
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()

    @event.listens_for(engine, "after_cursor_execute")
    def _end(_conn: Any, _cursor: Any, _statement: str, _parameters: Any, context: Any, _many: bool) -> None:
        _finish(context, None)

    @event.listens_for(engine, "handle_error")
    def _failed(exception_context: Any) -> None:
        _finish(exception_context.execution_context, exception_context.original_exception)
