"""The threading service's pure domain: address normalization (addresses), the rules' value types (model) and the
rules themselves (rules). No I/O, no ORM, no protos, no asyncio."""
