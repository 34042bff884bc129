#!/usr/bin/env python3
"""Publishes payment events with kafka-python, a pure-Python Kafka client that shares
no code with librdkafka: proves the documented JSON record form against a client we
did not write. Reads one JSON object per line from stdin: {"key": ..., "event": {...}}
and writes each event as a record with header content-type: application/json.
Prints {"published": N} when every record is acknowledged."""

import argparse
import json
import sys


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    args = p.parse_args()
    try:
        from kafka import KafkaProducer
    except ImportError:
        sys.stderr.write("kafka-python is not installed: pip install -r scripts/python-requirements.txt\n")
        return 3
    producer = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all", linger_ms=1)
    futures = []
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        item = json.loads(line)
        futures.append(producer.send(
            args.topic,
            key=item["key"].encode(),
            value=json.dumps(item["event"], ensure_ascii=False).encode("utf-8"),
            headers=[("content-type", b"application/json")],
        ))
    for f in futures:
        f.get(timeout=60)
    producer.flush()
    producer.close()
    print(json.dumps({"published": len(futures)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
