"""Ingest's pure rules: MIME normalization and BCC-drop admission, with no I/O, protos or asyncio."""
