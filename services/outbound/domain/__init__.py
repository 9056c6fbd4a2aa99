"""The outbound service's pure rules: what may be sent, how replies thread, the rolling quota and send states."""
