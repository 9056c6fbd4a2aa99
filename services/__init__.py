"""The four mailsync services (auth, ingest, threading, outbound) and their shared runtime."""

import os

# grpcio 1.80 and later (grpc/grpc#43055, open): with gRPC's fork support on, a process with live channels that
# starts a subprocess can have the child abort between fork and exec (epoll_wait: Bad file descriptor, SIGABRT).
# A test stack's ingest died that way once. Every mailsync process that starts others (the launcher, ingest's
# parsing workers, the tests' stacks) starts them with fork+exec, never a bare fork, so the fork handlers buy
# nothing: they are off, set here because the package is imported before grpc in every process that uses it
# (tests/__init__.py and tools/__init__.py import it first). A value set outside is kept.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
