#!/usr/bin/env python3
"""An independent mpn.notify.v1 client: Python grpcio, stubs generated at run time
from the project's .proto files by grpcio-tools. Used by the engine's integration
tests to prove the interface against a gRPC implementation we did not write.

Prints one JSON object per line on stdout:
  {"granted": [...]}                       result of Authenticate
  {"subscribed": [...], "ack_window": N}   the subscription is live
  {"notification": {...}}                  one per notification (each acknowledged)
  {"error": "CODE", "message": "..."}      an RPC failed
"""

import argparse
import json
import os
import queue
import sys
import tempfile


def generate(proto_root: str) -> None:
    try:
        from grpc_tools import protoc
    except ImportError:
        sys.stderr.write("grpcio-tools is not installed: pip install -r scripts/python-requirements.txt\n")
        sys.exit(3)
    out = tempfile.mkdtemp(prefix="mpn-py-")
    rc = protoc.main([
        "protoc",
        f"-I{proto_root}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "mpn/v1/payment_event.proto",
        "mpn/notify/v1/notify.proto",
    ])
    if rc != 0:
        sys.stderr.write(f"protoc failed with {rc}\n")
        sys.exit(4)
    sys.path.insert(0, out)


def emit(obj) -> None:
    print(json.dumps(obj, ensure_ascii=False), flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--addr", required=True)
    p.add_argument("--proto-root", required=True)
    p.add_argument("--institution", required=True)
    p.add_argument("--login", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--subscribe", action="append", default=[], help="institution to subscribe to (repeatable)")
    p.add_argument("--count", type=int, default=0, help="notifications to receive, then exit")
    args = p.parse_args()

    generate(args.proto_root)
    import grpc
    from mpn.notify.v1 import notify_pb2, notify_pb2_grpc
    from mpn.v1 import payment_event_pb2

    channel = grpc.insecure_channel(args.addr)
    stub = notify_pb2_grpc.NotifyStub(channel)
    md = [("mpn-institution", args.institution), ("mpn-login-id", args.login), ("mpn-secret", args.secret)]
    try:
        resp = stub.Authenticate(notify_pb2.AuthenticateRequest(), metadata=md, timeout=30)
        emit({"granted": list(resp.granted_institutions)})
    except grpc.RpcError as e:
        emit({"error": e.code().name, "message": e.details()})
        return 0
    if args.count <= 0:
        return 0

    requests: "queue.Queue" = queue.Queue()
    requests.put(notify_pb2.ClientMessage(subscribe=notify_pb2.SubscribeRequest(
        institutions=args.subscribe, subscriber_name="python-grpcio")))

    def request_iter():
        while True:
            m = requests.get()
            if m is None:
                return
            yield m

    call = stub.Subscribe(request_iter(), metadata=md)
    received = 0
    try:
        for msg in call:
            which = msg.WhichOneof("message")
            if which == "subscribed":
                emit({"subscribed": list(msg.subscribed.institutions), "ack_window": msg.subscribed.ack_window})
            elif which == "notification":
                n = msg.notification
                emit({"notification": {
                    "seq": n.seq,
                    "id": n.notification_id,
                    "institution": n.institution_code,
                    "kind": payment_event_pb2.EventKind.Name(n.kind),
                    "amount": n.amount,
                    "payer_kana": n.payer_kana,
                    "source_partition": n.source_partition,
                    "source_offset": n.source_offset,
                    # Every field as this (independent) decoder read it, encoded again.
                    "serialized": n.SerializeToString(deterministic=True).hex(),
                }})
                requests.put(notify_pb2.ClientMessage(ack=notify_pb2.Ack(up_to_seq=n.seq)))
                received += 1
                if received >= args.count:
                    break
    except grpc.RpcError as e:
        emit({"error": e.code().name, "message": e.details()})
    finally:
        requests.put(None)
        call.cancel()
        channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
