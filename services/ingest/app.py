"""Composition root of the ingest service: wires the database, NATS and gRPC servicers into one process.

`build(settings)` creates everything (nothing connects at import time) and returns the components that
`services.runtime.service` serves and later cleans up.
"""

from __future__ import annotations

from pathlib import Path

from services.ingest.drop_pipeline import add_bcc_drops
from services.ingest.pipeline import add_sync_pipeline
from services.ingest.settings import IngestSettings
from services.runtime.service import ServiceComponents, open_foundation

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


async def build(settings: IngestSettings) -> ServiceComponents:
    """Opens and migrates the database, connects NATS, and registers the service's servicers and tasks."""
    components = await open_foundation(settings, MIGRATIONS_DIR)
    drops = add_bcc_drops(components, settings)
    add_sync_pipeline(components, settings, drops=drops.rpcs)
    return components
