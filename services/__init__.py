"""The four mailsync services (auth, ingest, threading, outbound) and their shared runtime."""
