"""`python -m services.ingest [serve|migrate]`: runs the ingest service (or only applies its migrations)."""

from services.ingest.app import MIGRATIONS_DIR, build
from services.ingest.settings import IngestSettings
from services.runtime.service import run_service

if __name__ == "__main__":
    run_service(IngestSettings, build, MIGRATIONS_DIR)
