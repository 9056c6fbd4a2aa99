"""Observability end to end (issue 14): the whole product exports to a test OTLP receiver in place of the Collector,
and a delivery, a CRM send, a BCC drop, a poison message and a lost grant are driven through it. Then:

* one email is one trace: the push's HTTP server span in ingest is the root, and threading's processing of the
  normalized message descends from it through the pass and both NATS hops;
* every metric the Grafana dashboard and the Prometheus alert rules query (parsed from deploy/observability/, so a
  renamed metric or label fails here) was emitted with the labels the queries use;
* every shipped query parses as PromQL.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from mailsync.v1 import common_pb2, outbound_pb2
from services.runtime import subjects
from tests.e2e.test_scenarios import connected_user, reply_from_crm, sent_from_gmail
from tests.fixtures.dashboard_picture import render_dashboard
from tests.fixtures.observability_queries import Query, alert_queries, dashboard_queries, needs_of
from tests.fixtures.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.fixtures.stack import E2EStack, eventually, only, running_product

# Label values the alert rules match that this run does not provoke (Gmail refusing for quota, a token endpoint
# failing): their labels are still checked, and their values appear in docs/observability.md.
NOT_PROVOKED = frozenset({("gmail_outcome", "rate_limited"), ("mailsync_outcome", "error")})
# The path through the product of one pushed email, root last (service, span name, kind).
EMAIL_TRACE = [
    ("mailsync-threading", "process message.normalized", "CONSUMER"),
    ("mailsync-ingest", "publish message.normalized", "PRODUCER"),
    ("mailsync-ingest", "process mailbox.changed", "CONSUMER"),
    ("mailsync-ingest", "publish mailbox.changed", "PRODUCER"),
    ("mailsync-ingest", "POST /gmail/push", "SERVER"),
]
WAIT_SECONDS = 120.0


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    started = OtlpReceiver().start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver) -> Iterator[E2EStack]:
    telemetry = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        # A re-check queued by an earlier pass replaces a waiting push on the mailbox's work subject (it keeps only
        # the latest item), and that pass has a trace of its own: keep re-checks out of this run so the pass that
        # syncs the delivery is the push's (docs/observability.md, "What is not one trace").
        "MAILSYNC_INGEST_RECHECK_DELAY_SECONDS": "600",
        "MAILSYNC_INGEST_MIN_PUSH_INTERVAL_SECONDS": "0",
    }
    with running_product(tmp_path_factory.mktemp("observed"), extra_env=telemetry, replica=False) as stack:
        # Without re-checks, an email whose push Gmail dropped (within a second of the last one) would wait for
        # the safety poll: here a push over the rate is delayed instead, so each email comes with a push.
        stack.sandbox.settings(push_over_rate="delay")
        yield stack


def publish_poison(stack: E2EStack, mailbox_id: str) -> None:
    """A normalized-message event threading cannot decode: it fails until it is dead-lettered."""
    nats_url = next(m.address for m in stack.runner.processes if m.name == "nats")

    async def publish() -> None:
        client = await nats.connect(nats_url, connect_timeout=10)
        try:
            await client.jetstream().publish(
                subjects.normalized(mailbox_id),
                b"\xff not a protobuf \xff",
                headers={"Nats-Msg-Id": f"poison-{mailbox_id}"},
                timeout=10,
            )
        finally:
            await client.close()

    asyncio.run(publish())


def connection_event_handled(receiver: OtlpReceiver, mailbox_id: str) -> bool:
    return any(
        span.service == "mailsync-ingest"
        and span.name == "process connection.connected"
        and span.attributes.get("mailsync.mailbox_id") == mailbox_id
        for span in receiver.all_spans()
    )


def processing_of(receiver: OtlpReceiver, mailbox_id: str, gmail_id: str) -> ReceivedSpan:
    """Threading's span for the normalized message of one Gmail message (its Nats-Msg-Id names both)."""
    msg_id = f"norm:{mailbox_id}:{gmail_id}"
    return only(
        [
            span
            for span in receiver.all_spans()
            if span.service == "mailsync-threading"
            and span.name == "process message.normalized"
            and span.attributes.get("messaging.message.id") == msg_id
        ]
    )


def test_one_email_is_one_trace_and_every_queried_metric_is_emitted(
    observed: E2EStack, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    stack = observed
    location = stack.new_id("loc")
    user_id, mailbox = connected_user(stack, location)
    mailbox_id = stack.connection(user_id, location).mailbox_id
    contact_address = stack.new_address("carol", "outside.test")
    contact = stack.upsert_contact(location, contact_address, assigned_user_id=user_id)

    # The mailbox's first pass is queued by ingest when it handles the connection event (in the OAuth callback's
    # trace). Once that is queued, a push replaces it or waits for it, so the emails below are synced by passes that
    # pushes queued.
    eventually(
        lambda: connection_event_handled(receiver, mailbox_id),
        timeout=WAIT_SECONDS,
        what="ingest handling the connection event",
    )
    # A stranger's email: decided, not placed. Once it is decided, the first pass is over.
    stranger = stack.deliver(mailbox, stack.new_address("nobody", "elsewhere.test"), "Hi", "Not a contact")
    stack.wait_for_decision(location, stranger["message_id"])
    # A delivery: pushed, synced, placed.
    delivered = stack.deliver(mailbox, contact_address, "Quote request", "Can you send a quote?")
    stored = stack.wait_for_message(location, contact.contact_id, rfc_message_id=delivered["message_id"])
    # A CRM send through Gmail.
    send = reply_from_crm(stack, location, user_id, stored, contact_address, "Here is the quote")
    assert send.state == outbound_pb2.SEND_STATE_SENT
    # A BCC drop over SMTP.
    bcc_address = stack.bcc_address(location)
    sent_from_gmail(stack, mailbox, to=[contact_address], bcc=[bcc_address], subject="Offer", body="Inside")
    stack.drop_over_smtp(
        mailbox, bcc_address, stack.stamped_by_mx(stack.outbox_raw(bcc_address), "gmail.test")
    )
    # A poison message.
    publish_poison(stack, mailbox_id)
    # A grant that dies: access tokens that expire at once, then a password change.
    lost_location = stack.new_id("loc")
    lost_user = stack.create_user([lost_location])
    lost_mailbox = stack.new_address("lost")
    stack.sandbox.settings(access_token_lifetime_s=5)
    try:
        stack.connect_gmail(lost_user.user_id, lost_location, lost_mailbox)
        stack.sandbox.change_password(lost_mailbox, "a-new-password")
        stack.deliver(lost_mailbox, contact_address, "Meanwhile", "after the password change")
        stack.wait_for_connection(
            lost_user.user_id,
            lost_location,
            common_pb2.CONNECTION_STATE_REAUTH_REQUIRED,
            timeout=WAIT_SECONDS,
        )
    finally:
        stack.sandbox.settings(access_token_lifetime_s=3599)

    # One email, one trace: push -> pass -> NATS -> threading.
    processing = eventually(
        lambda: processing_of(receiver, mailbox_id, delivered["id"]),
        timeout=WAIT_SECONDS,
        what="threading's span for the delivered message",
    )

    def whole_chain() -> list[ReceivedSpan]:
        chain = receiver.chain(processing)
        assert not chain[-1].parent_span_id, [s.name for s in chain]
        return chain

    chain = eventually(whole_chain, timeout=WAIT_SECONDS, what="the delivered email's trace up to its root")
    steps = [(s.service, s.name, s.kind) for s in chain]
    assert [step for step in steps if step in EMAIL_TRACE] == EMAIL_TRACE, (
        steps[-1],
        chain[-1].attributes.get("messaging.message.id"),
    )
    root = chain[-1]
    assert (
        root.attributes["http.route"] == "/gmail/push" and root.attributes["http.response.status_code"] == 200
    )
    # Ids ride in attributes, never in span names.
    assert all(mailbox_id not in s.name and location not in s.name for s in receiver.all_spans())
    assert processing.attributes["mailsync.mailbox_id"] == mailbox_id

    # Every metric the dashboard and the alerts query, with the labels (and exact values) they use.
    queries = dashboard_queries() + alert_queries()
    needed = {query: needs_of(query) for query in queries}

    def all_emitted() -> bool:
        series = receiver.series()
        missing: list[str] = []
        for query, needs in needed.items():
            labels_seen = {
                label for metric in needs.metrics for labels in series.get(metric, []) for label in labels
            }
            values_seen = {
                (label, value)
                for metric in needs.metrics
                for labels in series.get(metric, [])
                for label, value in labels.items()
            }
            missing += [f"{query.where}: metric {m}" for m in sorted(needs.metrics) if m not in series]
            missing += [f"{query.where}: label {label}" for label in sorted(needs.labels - labels_seen)]
            missing += [
                f"{query.where}: {label}={value!r}"
                for label, value in sorted(needs.exact_values - values_seen - NOT_PROVOKED)
            ]
        assert not missing, missing
        return True

    eventually(all_emitted, timeout=WAIT_SECONDS, interval=1.0, what="every queried metric and label")
    series = receiver.series()
    dead = [
        labels for labels in series["mailsync_dead_letters_total"] if labels["job"] == "mailsync-threading"
    ]
    assert dead, series["mailsync_dead_letters_total"]
    decided = {
        (labels["mailsync_rule"], labels["mailsync_synced"])
        for labels in series["mailsync_messages_decided_total"]
    }
    assert ("R2", "true") in decided and any(synced == "false" for _rule, synced in decided), decided
    # The mailbox tier of a Gmail copy comes from auth's GetMailbox through ingest's event (a drop has none).
    tiers = {
        (labels["mailsync_source"], labels["mailsync_mailbox_tier"])
        for labels in series["mailsync_messages_decided_total"]
    }
    assert {tier for source, tier in tiers if source == "gmail_sync"} <= {"consumer", "workspace"}, tiers
    assert ("gmail_sync", "consumer") in tiers or ("gmail_sync", "workspace") in tiers, tiers

    # What the report and docs/observability.md show: the trace tree of the email and the metrics emitted.
    summary = {
        "trace_id": processing.trace_id,
        "trace": [
            {
                "service": s.service,
                "name": s.name,
                "kind": s.kind,
                "span_id": s.span_id,
                "parent": s.parent_span_id,
            }
            for s in sorted(receiver.trace(processing.trace_id), key=lambda s: s.start_ns)
        ],
        "metrics": sorted(series),
    }
    (tmp_path / "observed.json").write_text(json.dumps(summary, indent=2))
    picture = render_dashboard(receiver.all_points(), tmp_path / "dashboard.png")
    assert picture.stat().st_size > 10_000
    destination = os.environ.get("MAILSYNC_OBSERVABILITY_ARTIFACTS")
    if destination:
        # Refreshing docs/observability.md's picture and trace: point this at a folder and run the test.
        Path(destination).mkdir(parents=True, exist_ok=True)
        (Path(destination) / "observed.json").write_text(json.dumps(summary, indent=2))
        render_dashboard(receiver.all_points(), Path(destination) / "observability-dashboard.png")


@pytest.mark.parametrize("query", dashboard_queries() + alert_queries(), ids=lambda q: q.where)
def test_every_shipped_query_is_valid_promql(query: Query) -> None:
    needs = needs_of(query)
    assert needs.metrics, f"{query.where} selects no metric"


def test_a_broken_query_is_caught() -> None:
    with pytest.raises(ValueError):
        needs_of(Query("negative control", "sum(rate(mailsync_sends_total[5m])"))
