"""Getting events out to brokers: named sinks (NATS JetStream, Redis Streams), the
messages they carry, and the relays that forward a namespace's events to them."""
