"""Code every running service shares: settings, topic names, the Avro codec, the batch loop,
offset fence, event clocks, outbox and dead letters, metrics and Redis keys."""
