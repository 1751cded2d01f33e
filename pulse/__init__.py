"""Pulse runtime plumbing: settings, CLI, Spark session, local broker, JVM dependencies."""
