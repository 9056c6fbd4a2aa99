"""Developer tools: code generation, the local runner, benchmarks."""

import services  # noqa: F401  (first: it turns gRPC's fork handlers off before anything imports grpc)
