"""Plumbing below every layer.

Settings, errors, the Spark session, JVM jars, Kafka admin.
"""
