"""What the core's events become for the outside: CloudEvents (`cloud_events`) and
migration trace spans (`tracing`)."""
