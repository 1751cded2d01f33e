"""Plumbing below every layer.

Settings, errors, the Spark session, JVM jars, the local broker, Kafka admin.
"""
