"""Running training jobs: one job now, the persistent queue later."""
