#!/usr/bin/env python3
"""Property-based check of the console's JSON API against docs/console-api.yaml with
Schemathesis (a generator and checker we did not write): logs in through
`POST /api/v1/session`, then lets Schemathesis call every operation with generated
valid and invalid input, the session cookie and CSRF token as headers, checking
that nothing is a server error and every JSON answer matches its documented schema.

  console_schemathesis.py [SPEC] URL --institution CODE --login-id ID --password PW
      [--max-examples 30] [--checks LIST] [--seed N]

SPEC is the OpenAPI document (default docs/console-api.yaml of this repository), URL
the console's base URL, e.g. http://127.0.0.1:8080 (also --schema SPEC, --console URL).

Run with the test virtualenv's python ($MPN_PYTHON). Network: only the console URL.

Two runs:
  1. every operation but `GET /api/v1/live` (an endless event stream) and
     `DELETE /api/v1/session` (it would log the run out);
  2. `DELETE /api/v1/session` alone, last; afterwards the session must be gone.
The session is checked to still work between the runs.

Exit 0 when both runs pass; 1 on a Schemathesis failure or a failed check here
(the last stdout line is then {"failed": "...", "error": "..."}); 3 when
schemathesis is not installed. On success the last stdout line is
{"passed": true, "runs": 2, "seconds": S}.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from http.cookies import SimpleCookie

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SCHEMA = os.path.normpath(os.path.join(HERE, "..", "..", "..", "docs", "console-api.yaml"))
DEFAULT_CHECKS = "not_a_server_error,response_schema_conformance"

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Failure(Exception):
    pass


def request(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with OPENER.open(req, timeout=15) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def login(console, institution, login_id, password):
    """(session cookie value, csrf token) from POST /api/v1/session."""
    body = json.dumps({"institution": institution, "login_id": login_id, "password": password}).encode()
    status, headers, data = request("POST", f"{console}/api/v1/session", body, {"Content-Type": "application/json"})
    if status != 200:
        raise Failure(f"POST /api/v1/session answered {status}: {data[:300]!r}")
    session = None
    for value in headers.get_all("Set-Cookie") or []:
        jar = SimpleCookie()
        jar.load(value)
        if "mpn_session" in jar:
            session = jar["mpn_session"].value
    if not session:
        raise Failure(f"POST /api/v1/session set no mpn_session cookie (Set-Cookie: {headers.get_all('Set-Cookie')})")
    try:
        csrf = json.loads(data)["csrf"]
    except (ValueError, KeyError, TypeError):
        raise Failure(f"POST /api/v1/session: no csrf in the body {data[:300]!r}")
    if not isinstance(csrf, str) or not csrf:
        raise Failure(f"POST /api/v1/session: csrf is {csrf!r}")
    return session, csrf


def run_st(args, session, csrf, selection, workdir):
    cmd = [
        sys.executable, "-c",
        "import sys; from schemathesis.cli import schemathesis; sys.argv[0] = 'st'; sys.exit(schemathesis())",
        "run", args.schema,
        "--url", args.console,
        "--header", f"Cookie: mpn_session={session}",
        "--header", f"X-CSRF-Token: {csrf}",
        # The credentials come from the headers above, never generated.
        "--generation-with-security-parameters", "false",
        "--checks", args.checks,
        "--max-examples", str(args.max_examples),
        "--phases", "examples,coverage,fuzzing",
        "--workers", "1",
        "--request-timeout", "10",
        "--generation-database", "none",
        "--suppress-health-check", "all",
        "--max-redirects", "0",
        "--no-color",
    ] + selection
    if args.seed is not None:
        cmd += ["--seed", str(args.seed)]
    env = dict(os.environ)
    # Only the console: no proxy, no reporting anywhere.
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(k, None)
    env["NO_PROXY"] = env["no_proxy"] = "*"
    print("+ st run " + " ".join(a if not a.startswith(("Cookie:", "X-CSRF-Token:")) else a.split(":")[0] + ": ***"
                                for a in cmd[4:]), flush=True)
    return subprocess.run(cmd, cwd=workdir, env=env, timeout=args.timeout).returncode


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("targets", nargs="*", metavar="[SPEC] URL",
                   help="the OpenAPI document and the console's base URL (an http(s):// argument is the URL)")
    p.add_argument("--console", help="the console's base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--institution", required=True)
    p.add_argument("--login-id", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--schema", default=DEFAULT_SCHEMA, help="the OpenAPI document (default docs/console-api.yaml)")
    p.add_argument("--max-examples", type=int, default=30, help="test cases per operation and phase")
    p.add_argument("--checks", default=DEFAULT_CHECKS, help=f"Schemathesis checks (default {DEFAULT_CHECKS})")
    p.add_argument("--seed", type=int, help="Hypothesis seed, for a reproducible run")
    p.add_argument("--timeout", type=int, default=600, help="seconds each Schemathesis run may take")
    args = p.parse_args()
    for t in args.targets:
        if t.startswith(("http://", "https://")):
            args.console = t
        else:
            args.schema = t
    if not args.console:
        p.error("the console's base URL is required (URL or --console URL)")
    if not os.path.isfile(args.schema):
        p.error(f"no OpenAPI document at {args.schema}")
    args.console = args.console.rstrip("/")
    args.schema = os.path.abspath(args.schema)
    if importlib.util.find_spec("schemathesis") is None:
        sys.stderr.write("schemathesis is not installed: pip install -r scripts/python-requirements.txt\n")
        return 3

    started = time.monotonic()
    step = "log in"
    try:
        session, csrf = login(args.console, args.institution, args.login_id, args.password)
        cookie = {"Cookie": f"mpn_session={session}"}
        with tempfile.TemporaryDirectory(prefix="mpn-st-") as workdir:
            step = "schemathesis: every operation but the live stream and logging out"
            rc = run_st(args, session, csrf, [
                "--exclude-path", "/api/v1/live",
                "--exclude-operation-id", "deleteSession",
            ], workdir)
            if rc != 0:
                raise Failure(f"schemathesis exited {rc}")

            step = "the session after the first run"
            status, _, data = request("GET", f"{args.console}/api/v1/payments?limit=1", headers=cookie)
            if status != 200:
                raise Failure(f"GET /api/v1/payments with the session answered {status} after the run: {data[:300]!r}")

            step = "schemathesis: DELETE /api/v1/session"
            rc = run_st(args, session, csrf, ["--include-operation-id", "deleteSession"], workdir)
            if rc != 0:
                raise Failure(f"schemathesis exited {rc}")

            step = "the session after logging out"
            status, _, data = request("GET", f"{args.console}/api/v1/payments?limit=1", headers=cookie)
            if status != 401:
                raise Failure(f"GET /api/v1/payments answered {status} after DELETE /api/v1/session, not 401: {data[:300]!r}")
    except Failure as e:
        sys.stderr.write(f"console_schemathesis: {step}: {e}\n")
        print(json.dumps({"failed": step, "error": str(e)}), flush=True)
        return 1
    print(json.dumps({"passed": True, "runs": 2, "seconds": round(time.monotonic() - started, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
