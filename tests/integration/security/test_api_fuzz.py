"""Hostile input, per RPC (issue 13): Hypothesis builds arbitrary requests from each RPC's descriptor (and arbitrary
bytes as the request itself) and sends every one to the whole product twice, once on SQLite and once on
PostgreSQL. Each answer must be a deliberate one (OK, INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED,
FAILED_PRECONDITION or RESOURCE_EXHAUSTED; UNAUTHENTICATED only for a push's own token), never UNKNOWN or
INTERNAL, and both databases must answer alike.

The two stacks start once for the module (real processes, seeded alike); MAILSYNC_FUZZ_EXAMPLES sets the
examples per RPC (default 25, derandomized so a CI run is repeatable). The counts print at the end of the module.
"""

from __future__ import annotations

import collections
import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailsync.v1 import auth_pb2, outbound_pb2, threading_pb2
from services.runtime.api_limits import FIELD_RULES
from services.runtime.grpc_auth import ServiceTokenKeys
from tests.fixtures.databases import _drop_schema, postgres_url
from tests.fixtures.stack import E2EStack, running_product
from tests.integration.security.test_tenant_isolation import SERVICES

EXAMPLES = int(os.environ.get("MAILSYNC_FUZZ_EXAMPLES", "25"))
RAW_EXAMPLES = max(EXAMPLES // 3, 5)
CALL_TIMEOUT_SECONDS = 30.0
ALLOWED = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
# HandlePush carries Google's OIDC token in the request: a bad one is the push's own UNAUTHENTICATED.
ALSO_ALLOWED = {"HandlePush": frozenset({grpc.StatusCode.UNAUTHENTICATED})}
LOCATIONS = ("loc-a", "loc-b")
# Values that name the seeded objects, so examples also reach the paths past "not found".
POOL = [
    "",
    "loc-a",
    "loc-b",
    "u-a",
    "u-b",
    "c-a1",
    "c-b1",
    "ann@crm.test",
    "client@outside.test",
    "*",
    "x" * 65,
    "9" * 40,
    "-1",
    "<m@x>",
    "not an email\r\nBcc: x@y",
    "not-an-email",
    "https://crm.example.com/return",
    "javascript:alert(1)",
    "a\x00b",
    "ü@bücher.example",
    "'; DROP TABLE users; --",
    "%s%n{0}",
    "a" * 2000,
]


def strings() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(POOL),
        st.text(max_size=40),
        st.text(alphabet=st.characters(codec="ascii"), max_size=80),
        st.integers(60, 5000).map(lambda n: "i" * n),
    )


_INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}


def scalar(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_STRING:
        return strings()
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=300)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.enum_type is not None:
        defined = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(defined), st.integers(-(2**31), 2**31 - 1))
    if field.cpp_type in _INT_RANGES:
        low, high = _INT_RANGES[field.cpp_type]
        return st.one_of(st.integers(low, high), st.integers(-2, 1000).filter(lambda n: low <= n <= high))
    if field.cpp_type in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    assert field.message_type is not None
    if field.message_type.full_name == "google.protobuf.Timestamp":
        return st.builds(
            Timestamp,
            seconds=st.one_of(st.integers(0, 4 * 10**9), st.integers(-(2**63), 2**63 - 1)),
            nanos=st.one_of(st.integers(0, 10**9 - 1), st.integers(-(2**31), 2**31 - 1)),
        )
    return messages(field.message_type, depth + 1)


def value_of(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    nested = field.message_type
    if nested is not None and nested.GetOptions().map_entry:
        key, value = nested.fields_by_name["key"], nested.fields_by_name["value"]
        return st.dictionaries(scalar(key, depth), scalar(value, depth), max_size=3)
    if field.is_repeated:
        return st.lists(scalar(field, depth), max_size=3)
    return scalar(field, depth)


def _built(descriptor: Descriptor, values: dict[str, Any]) -> Message:
    message: Any = _message_class(descriptor)()
    for name, value in values.items():
        target = getattr(message, name)
        field = descriptor.fields_by_name[name]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            target.update(value)
        elif field.is_repeated:
            target.extend(value)
        elif field.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def _message_class(descriptor: Descriptor) -> type[Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Any message of the type: each field set or not, to anything its wire type allows."""
    if depth > 3:
        return st.just(_message_class(descriptor)())
    optional = {field.name: value_of(field, depth) for field in descriptor.fields}
    return st.fixed_dictionaries({}, optional=optional).map(lambda values: _built(descriptor, values))


# Values within each kind's limits (services/runtime/api_limits.py), naming the seeded objects where they can.
WELL_FORMED_BY_KIND: dict[str, st.SearchStrategy[Any]] = {
    "id": st.sampled_from(["loc-a", "loc-b", "u-a", "u-b", "c-a1", "c-b1", "m-1", "1.2"]),
    "request_id": st.uuids().map(lambda u: f"r-{u.hex[:12]}"),
    "email": st.sampled_from(["u-a@crm.test", "client@outside.test", "Ann.Lee+x@Example.COM"]),
    "name": st.sampled_from(["Ann", "Client Co", ""]),
    "header_text": st.sampled_from(["Hello", "Re: offer", ""]),
    "body": st.sampled_from(["hello", "", "<p>hi</p>"]),
    "message_id": st.sampled_from(["<m@x>", "<a.b@c.d>"]),
    "url": st.sampled_from(["https://crm.example.com/x", ""]),
    "page_size": st.integers(0, 600),
    "page_token": st.just(""),
    "cursor": st.sampled_from(["", "0", "7"]),
    "version": st.integers(0, 10),
    "oauth_state": st.sampled_from(["state-1", "abc_DEF-123"]),
    "oauth_value": st.sampled_from(["4/code", "openid email", ""]),
    "short_text": st.sampled_from(["projects/p/subscriptions/s", "access_denied", "1"]),
    "token_text": st.sampled_from(["eyJhbGciOiJSUzI1NiJ9.e30.c2ln", ""]),
    "filename": st.sampled_from(["a.txt", "report.pdf"]),
    "content_type": st.sampled_from(["text/plain", "application/pdf"]),
    "push_data": st.binary(max_size=64),
    "content": st.binary(max_size=64),
}


def well_formed_value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    rule = FIELD_RULES.get(field.full_name)
    nested = field.message_type
    if nested is not None and nested.GetOptions().map_entry:
        return st.dictionaries(st.sampled_from(["k", "source"]), st.sampled_from(["v", "1"]), max_size=2)
    if rule is not None and rule.kind is not None and rule.kind.name in WELL_FORMED_BY_KIND:
        one = WELL_FORMED_BY_KIND[rule.kind.name]
    elif field.enum_type is not None:
        one = st.sampled_from([v.number for v in field.enum_type.values])
    elif nested is not None and nested.full_name == "google.protobuf.Timestamp":
        one = st.builds(Timestamp, seconds=st.integers(0, 4 * 10**9), nanos=st.integers(0, 10**9 - 1))
    elif nested is not None:
        one = well_formed(nested, depth + 1)
    else:
        one = scalar(field, depth)
    return st.lists(one, max_size=2) if field.is_repeated else one


def well_formed(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """A message whose every field is within its limits: reaches the servicers' own rules."""
    if depth > 3:
        return st.just(_message_class(descriptor)())
    fields = {field.name: well_formed_value(field, depth) for field in descriptor.fields}
    # Every field set (reaches the write paths), or some (reaches "exactly one of" and defaults).
    values = st.one_of(st.fixed_dictionaries(fields), st.fixed_dictionaries({}, optional=fields))
    return values.map(lambda chosen: _built(descriptor, chosen))


@dataclass
class Target:
    """One running product: its database backend, its stubs and the tokens its keys sign."""

    backend: str
    stack: E2EStack
    crm_token: str
    internal_token: str
    channels: dict[str, grpc.Channel]

    def call(self, method: MethodDescriptor, service: str, request: Any, internal: bool) -> grpc.StatusCode:
        stub = SERVICES[service][1](self.channels[service])
        rpc = getattr(stub, method.name)
        metadata = (("authorization", f"Bearer {self.internal_token if internal else self.crm_token}"),)
        try:
            if method.client_streaming:
                rpc(iter(request), metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
            elif method.server_streaming:
                call = rpc(request, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
                call.initial_metadata()
                if method.name == "WatchMessages" and not call.done():
                    call.cancel()  # a live subscription: accepted
                    return grpc.StatusCode.OK
                for _ in call:
                    pass
            else:
                rpc(request, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
        except grpc.RpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    def call_raw(self, method: MethodDescriptor, service: str, body: bytes) -> grpc.StatusCode:
        path = f"/{method.containing_service.full_name}/{method.name}"
        rpc = self.channels[service].unary_unary(path)
        try:
            rpc(
                body,
                metadata=(("authorization", f"Bearer {self.internal_token}"),),
                timeout=CALL_TIMEOUT_SECONDS,
            )
        except grpc.RpcError as error:
            return error.code()
        return grpc.StatusCode.OK


def seed(stack: E2EStack) -> None:
    """The same users and contacts on every backend (fixed ids, so examples can name them)."""
    for user_id, location in (("u-a", "loc-a"), ("u-b", "loc-b")):
        stack.auth.UpsertUser(
            auth_pb2.UpsertUserRequest(
                request_id=f"seed-{user_id}",
                user=auth_pb2.User(
                    user_id=user_id, crm_email=f"{user_id}@crm.test", location_ids=[location], version=1
                ),
            )
        )
    for contact_id, location in (("c-a1", "loc-a"), ("c-b1", "loc-b")):
        stack.threading.UpsertContact(
            threading_pb2.UpsertContactRequest(
                request_id=f"seed-{contact_id}",
                contact=threading_pb2.Contact(
                    contact_id=contact_id,
                    location_id=location,
                    emails=[threading_pb2.ContactEmail(email="client@outside.test", primary=True)],
                    version=1,
                ),
            )
        )


@contextlib.contextmanager
def target(backend: str, var_dir: Path) -> Iterator[Target]:
    extra: dict[str, str] = {}
    schemas: list[str] = []
    url = postgres_url()
    if backend == "postgresql":
        assert url is not None
        run = uuid.uuid4().hex[:10]
        extra["MAILSYNC_DATABASE_URL"] = url
        for service in ("auth", "ingest", "threading", "outbound"):
            schemas.append(f"fz_{run}_{service}")
            extra[f"MAILSYNC_{service.upper()}_DATABASE_SCHEMA"] = schemas[-1]
    try:
        with running_product(var_dir, extra_env=extra, replica=False) as stack:
            seed(stack)
            signer = stack.runner.crm_signer
            assert signer is not None
            channels = {
                name: grpc.insecure_channel(next(m.address for m in stack.runner.processes if m.name == name))
                for name in SERVICES
            }
            try:
                yield Target(
                    backend,
                    stack,
                    signer.mint("crm-fuzz", LOCATIONS, ttl_seconds=3600),
                    ServiceTokenKeys.parse(stack.runner.token_keys).mint("fuzz", ttl_seconds=3600),
                    channels,
                )
            finally:
                for channel in channels.values():
                    channel.close()
    finally:
        for schema in schemas:
            assert url is not None
            _drop_schema(url, schema)


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Target]]:
    backends = ["sqlite", "postgresql"] if postgres_url() else ["sqlite"]
    with contextlib.ExitStack() as started:
        yield [started.enter_context(target(b, tmp_path_factory.mktemp(f"fuzz-{b}"))) for b in backends]


@pytest.fixture(scope="module")
def counts() -> Iterator[collections.Counter[tuple[str, str, str]]]:
    tally: collections.Counter[tuple[str, str, str]] = collections.Counter()
    yield tally
    examples: collections.Counter[tuple[str, str]] = collections.Counter()
    for (method, backend, _code), n in tally.items():
        examples[(method, backend)] += n
    print("\nHypothesis examples per RPC and database (issue 13):")
    for (method, backend), n in sorted(examples.items()):
        codes = {code: m for (meth, back, code), m in tally.items() if (meth, back) == (method, backend)}
        print(f"  {method:24} {backend:10} {n:4}  {codes}")
    print(f"  total calls: {sum(tally.values())}")


def test_seeded_ids_are_known(targets: list[Target]) -> None:
    """The pool's ids name real objects on every backend, so examples reach the found paths (runs first)."""
    for t in targets:
        stub = SERVICES["threading"][1](t.channels["threading"])
        found = stub.ListContacts(
            threading_pb2.ListContactsRequest(location_id="loc-a"),
            metadata=(("authorization", f"Bearer {t.crm_token}"),),
        )
        assert [c.contact_id for c in found.contacts] == ["c-a1"], t.backend


METHODS = [
    (service, method) for service, (descriptor, _) in SERVICES.items() for method in descriptor.methods
]
COMMON = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def request_strategy(method: MethodDescriptor) -> st.SearchStrategy[Any]:
    """Half the examples within every limit (to reach the servicers), half anything the wire type allows."""
    one = st.one_of(well_formed(method.input_type), messages(method.input_type))
    if method.client_streaming:
        return st.lists(one, max_size=4)
    return one


def _check(
    method_name: str,
    answers: dict[str, grpc.StatusCode],
    counts: collections.Counter[tuple[str, str, str]],
) -> None:
    for backend, code in answers.items():
        counts[(method_name, backend, code.name)] += 1
    allowed = ALLOWED | ALSO_ALLOWED.get(method_name.removesuffix(" (raw bytes)"), frozenset())
    unexpected = {backend: code.name for backend, code in answers.items() if code not in allowed}
    assert unexpected == {}, f"{method_name}: {unexpected}"
    assert len(set(answers.values())) == 1, f"{method_name}: the databases answer differently: {answers}"


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[m.name for _s, m in METHODS])
def test_arbitrary_requests_get_a_deliberate_answer_alike_on_every_database(
    targets: list[Target], counts: collections.Counter[tuple[str, str, str]], service: str, method: Any
) -> None:
    @settings(max_examples=EXAMPLES, **COMMON)  # type: ignore[arg-type]
    @given(request=request_strategy(method), internal=st.booleans())
    def example(request: Any, internal: bool) -> None:
        answers = {t.backend: t.call(method, service, request, internal) for t in targets}
        _check(method.name, answers, counts)

    example()


UNARY = [(s, m) for s, m in METHODS if not m.client_streaming and not m.server_streaming]


@pytest.mark.parametrize(("service", "method"), UNARY, ids=[m.name for _s, m in UNARY])
def test_arbitrary_bytes_as_a_request_get_a_deliberate_answer(
    targets: list[Target], counts: collections.Counter[tuple[str, str, str]], service: str, method: Any
) -> None:
    valid = messages(method.input_type).map(lambda m: m.SerializeToString())
    corrupted = st.tuples(valid, st.binary(min_size=1, max_size=8), st.integers(0, 64)).map(
        lambda t: t[0][: t[2]] + t[1] + t[0][t[2] :]
    )

    @settings(max_examples=RAW_EXAMPLES, **COMMON)  # type: ignore[arg-type]
    @given(body=st.one_of(st.binary(max_size=200), corrupted))
    def example(body: bytes) -> None:
        answers = {t.backend: t.call_raw(method, service, body) for t in targets}
        _check(f"{method.name} (raw bytes)", answers, counts)

    example()


def test_the_fuzzer_reaches_past_validation(counts: collections.Counter[tuple[str, str, str]]) -> None:
    """Negative control for the strategies: they do not only produce refusals (runs last in the module)."""
    reached = {method for (method, _backend, code), _n in counts.items() if code in ("OK", "NOT_FOUND")}
    assert len(reached) >= len(METHODS) // 2, sorted(reached)
    assert any(code == "INVALID_ARGUMENT" for (_m, _b, code) in counts)


def _rpc(service: str, name: str) -> MethodDescriptor:
    return SERVICES[service][0].methods_by_name[name]


ISSUE_13_INPUTS = [
    pytest.param(
        "threading",
        "UpsertContact",
        threading_pb2.UpsertContactRequest(
            contact=threading_pb2.Contact(contact_id="c" * 70, location_id="loc-a", version=1)
        ),
        "contact.contact_id",
        id="70-character contact_id",
    ),
    pytest.param(
        "threading",
        "WatchMessages",
        threading_pb2.WatchMessagesRequest(location_id="loc-a", after_cursor="9" * 40),
        "after_cursor",
        id="40-digit cursor",
    ),
    pytest.param(
        "threading",
        "UpsertContact",
        threading_pb2.UpsertContactRequest(
            contact=threading_pb2.Contact(
                contact_id="c-x",
                location_id="loc-a",
                emails=[threading_pb2.ContactEmail(email="not an email\r\nBcc: x@y")],
            )
        ),
        "contact.emails[0].email",
        id="header injection as a contact email",
    ),
    pytest.param(
        "auth",
        "UpsertUser",
        auth_pb2.UpsertUserRequest(
            user=auth_pb2.User(user_id="u-x", crm_email="not-an-email", location_ids=["loc-a"], version=1)
        ),
        "user.crm_email",
        id="not-an-email as a CRM email",
    ),
    pytest.param(
        "auth",
        "UpsertUser",
        auth_pb2.UpsertUserRequest(
            user=auth_pb2.User(
                user_id="u" * 1_000_000, crm_email="u@crm.test", location_ids=["loc-a"], version=1
            )
        ),
        "user.user_id",
        id="1 MB user_id",
    ),
    pytest.param(
        "auth",
        "ListConnections",
        auth_pb2.ListConnectionsRequest(location_id="loc-a", state=99),  # type: ignore[arg-type]
        "state",
        id="unknown enum value",
    ),
    pytest.param("outbound", "UploadAttachment", "empty-upload", "chunk", id="empty upload"),
]


@pytest.mark.parametrize(("service", "name", "request_", "field"), ISSUE_13_INPUTS)
def test_the_inputs_issue_13_found_are_invalid_argument_naming_the_field_on_every_database(
    targets: list[Target], service: str, name: str, request_: Any, field: str
) -> None:
    method = _rpc(service, name)
    if request_ == "empty-upload":
        request_ = [
            outbound_pb2.UploadAttachmentRequest(
                metadata=outbound_pb2.UploadAttachmentRequest.Metadata(
                    request_id="r-empty", location_id="loc-a", filename="a.txt"
                )
            )
        ]

    def invoke(t: Target) -> Any:
        rpc = getattr(SERVICES[service][1](t.channels[service]), name)
        metadata = (("authorization", f"Bearer {t.crm_token}"),)
        if method.client_streaming:
            return rpc(iter(request_), metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
        answer = rpc(request_, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
        return list(answer) if method.server_streaming else answer

    for t in targets:
        with pytest.raises(grpc.RpcError) as failure:
            invoke(t)
        error = failure.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (t.backend, error.details())
        details = error.details() or ""
        assert details.startswith(field), (t.backend, details)
        assert "SELECT" not in details and "INSERT" not in details and len(details) <= 300
