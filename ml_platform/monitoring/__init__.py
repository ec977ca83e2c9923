"""Drift monitoring and the feedback loop.

Production windows read from the serving prediction log, drift reports against
the reference snapshot of the model version that served them, Prometheus export
of the scores, and a generator of (drifted) traffic for demos and tests.

Importing this package is cheap: pandas, pyarrow, Evidently, MLflow and
prometheus_client load inside the functions that use them.
"""
