"""Reads a Prometheus /metrics page with prometheus_client's own text parser (an
implementation we did not write) and prints what it found as JSON:
{"families": {name: {"type": t, "help": h, "samples": [{"name": n, "labels": {...}, "value": v}]}}}.
Used by the integration tests (app/tests/it/operations.rs)."""

import argparse
import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    args = ap.parse_args()
    with urllib.request.urlopen(args.url, timeout=10) as r:
        ctype = r.headers.get("Content-Type", "")
        text = r.read().decode("utf-8")
    families = {}
    for f in text_string_to_metric_families(text):
        families[f.name] = {
            "type": f.type,
            "help": f.documentation,
            "samples": [
                {"name": s.name, "labels": dict(s.labels), "value": s.value}
                for s in f.samples
            ],
        }
    json.dump({"content_type": ctype, "families": families}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
