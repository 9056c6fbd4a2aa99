"""The threading service's storage: models (tables), contacts (the CRM replica), placements (rules in, rows out),
reads (the queries the API answers from). Everything is idempotent under redelivery and concurrent replicas."""
