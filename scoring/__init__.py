"""The served models evaluated without Spark: their exported parameters, scored in NumPy.

A retrain exports each servable model version to a small JSON document (``scorer.json``
beside the Spark ML model); the read path and the stream evaluate it on live features,
so a score ages with the stream clock like the features do. Each scorer is tested equal
to Spark ML's ``transform`` of the same version on every customer.
"""
