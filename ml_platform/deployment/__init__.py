"""Canary deployment: rollout policy, deployer backends, metric sources and the rollout itself.

- :mod:`.policy`: traffic steps, pauses, thresholds, limits (spec ``rollout:`` section + run config)
- :mod:`.measurements`, :mod:`.analysis`: counter windows, quantiles, one analysis verdict
- :mod:`.metric_source`: serving metrics by scraping ``/metrics`` or through Prometheus (PromQL)
- :mod:`.deployer`: the ``deployer`` resource; :mod:`.local` (nginx + processes), :mod:`.kubernetes`
- :mod:`.rollout`: smoke test, steps, analysis, promotion or rollback, with registry bookkeeping

Nothing heavy is imported at module level; MLflow loads inside the functions that need it.
"""
