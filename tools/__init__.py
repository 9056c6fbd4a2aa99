"""Developer tools: code generation, the local runner, benchmarks."""
