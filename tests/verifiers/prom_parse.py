#!/usr/bin/env python3
"""Parses sigild's /metrics answer with Prometheus's own Python client (PyPI `prometheus-client`,
pinned in scripts/install-deps.sh), so the tests read the metrics as a Prometheus scraper does,
not with a parser of ours.

Reads one JSON request on stdin, prints one JSON result on stdout.
  {"text": EXPOSITION}
      -> {"ok": true, "families": {NAME: TYPE, ...},
          "samples": [{"name": N, "labels": {K: V, ...}, "value": FLOAT}, ...]}
      A text the parser refuses -> {"ok": false, "error": MESSAGE}.
"""
import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    req = json.load(sys.stdin)
    try:
        families = {}
        samples = []
        for family in text_string_to_metric_families(req["text"]):
            families[family.name] = family.type
            for s in family.samples:
                value = s.value
                if math.isinf(value):
                    value = "+Inf" if value > 0 else "-Inf"
                samples.append({"name": s.name, "labels": dict(s.labels), "value": value})
        print(json.dumps({"ok": True, "families": families, "samples": samples}))
    except Exception as e:  # noqa: BLE001 - every refusal is the answer
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
        sys.exit(1)


main()
