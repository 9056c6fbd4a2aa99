"""Fixtures shared by every tier live in tests/fixtures/ and are registered here once."""

pytest_plugins = [
    "tests.fixtures.sandbox",
    "tests.fixtures.nats_server",
    "tests.fixtures.nats_cluster",
    "tests.fixtures.s3_server",
    "tests.fixtures.databases",
    "tests.fixtures.services",
    "tests.fixtures.auth_service",
    "tests.fixtures.chromium",
    "tests.fixtures.messaging",
    "tests.fixtures.threading_store",
    "tests.fixtures.ingest_world",
    "tests.fixtures.smtp_server",
    "tests.fixtures.outbound_world",
    "tests.fixtures.stack",
]
