"""The outbound service. Sends email from the CRM through Gmail: quota, idempotency, replies in the right thread."""
