"""`python -m services.outbound [serve|migrate]`: runs the outbound service (or only applies its migrations)."""

from services.outbound.app import MIGRATIONS_DIR, build
from services.outbound.settings import OutboundSettings
from services.runtime.service import run_service

if __name__ == "__main__":
    run_service(OutboundSettings, build, MIGRATIONS_DIR)
