"""The speed layer: Kafka -> quarantine, lake and live features, exactly once."""
