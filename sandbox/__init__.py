"""Gmail sandbox: a local server that plays Gmail REST, Google OAuth and Pub/Sub push for tests and demos."""
