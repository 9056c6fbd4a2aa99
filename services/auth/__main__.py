"""`python -m services.auth [serve|migrate]`: runs the auth service (or only applies its migrations)."""

from services.auth.app import MIGRATIONS_DIR, build
from services.auth.settings import AuthSettings
from services.runtime.service import run_service

if __name__ == "__main__":
    run_service(AuthSettings, build, MIGRATIONS_DIR)
