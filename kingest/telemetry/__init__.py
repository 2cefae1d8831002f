"""What kingest shows of itself: traces, metrics, health and logs (OpenTelemetry)."""
