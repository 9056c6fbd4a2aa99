"""The shared runtime: what every service needs and nothing that belongs to one of them.

Configuration, database, NATS JetStream (publish, consume, outbox, dead letters), the gRPC server bootstrap
and its interceptors, telemetry and logging, the clock, and the Gmail adapter. It never imports a service.
"""
