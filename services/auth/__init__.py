"""The auth service. Gmail connections of CRM users: OAuth consent, encrypted tokens, access tokens for the other services, Gmail watches."""
