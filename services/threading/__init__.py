"""The threading service. Places synced messages into each location's conversations and contacts, and serves them to the CRM."""
