"""Developer infrastructure the application and the tests start on this machine.

A single KRaft broker from the Maven jars (``broker``, `pulse broker`), a three-node
KRaft cluster (``cluster``, `pulse chaos` case 3), what a Kafka node's process needs in
both (``process``), a throwaway ``redis-server`` (``redis``), and an S3-compatible object
store, SeaweedFS, built from the Go module proxy (``s3``).
"""
