"""The batch layer: backfill the lake from files, retrain the three models, report."""
