"""The ingest service. Gmail changes in: Pub/Sub pushes, history sync, BCC drops; normalized messages out to NATS."""
