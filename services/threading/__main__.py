"""`python -m services.threading [serve|migrate]`: runs the threading service (or only applies its migrations)."""

from services.runtime.service import run_service
from services.threading.app import MIGRATIONS_DIR, build
from services.threading.settings import ThreadingSettings

if __name__ == "__main__":
    run_service(ThreadingSettings, build, MIGRATIONS_DIR)
