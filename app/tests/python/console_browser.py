#!/usr/bin/env python3
"""Walks the staff console as a person would, in headless Chromium driven by Selenium
(a browser and a client we did not write), against the contract of the console's
pages: log in, see a payment published to Kafka (kafka-python) appear in the live
view, find it in the search, open it, download it as CSV (UTF-8 and Shift_JIS), fail
to open another institution's payment, look at the totals, log out.

Environment: MPN_CHROMIUM (default /usr/bin/chromium), MPN_CHROMEDRIVER (default
/usr/bin/chromedriver). Run with the test virtualenv's python ($MPN_PYTHON):

  console_browser.py --console http://127.0.0.1:PORT --bootstrap HOST:PORT
      --topic TOPIC --institution CODE --login-id ID --password PW
      --foreign-id NOTIFICATION_ID --screenshots DIR --customer CUSTNUMBER

Every step is asserted. On success prints one JSON line on stdout and exits 0:
  {"live_delay_ms": N, "login_ms": N, "search_ms": N, "total_s": F, "notification_id": "..."}
On a failed step prints {"failed": "<step>", "error": "<what>"} on stdout, the same
on stderr, saves failure.png and failure.html in the screenshots directory, exits 1.
Exit 3: selenium or kafka-python missing.
"""

import argparse
import csv
import importlib.util
import io
import json
import os
import random
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone

JST = timezone(timedelta(hours=9))
# The CSV's first columns, in this order (docs: "notification_id,institution,kind,
# status,transaction_key,customer_number,amount,paid_at_jst,channel,...").
CSV_COLUMNS = [
    "notification_id", "institution", "kind", "status", "transaction_key",
    "customer_number", "amount", "paid_at_jst", "channel",
]
AMOUNT = 12345
LIVE_LIMIT_MS = 2000
LIVE_WAIT_S = 5.0
WAIT_S = 15.0
BOM = b"\xef\xbb\xbf"

# Records every EventSource the page opens, so the test publishes only once the live
# view's stream is connected (an event published before that would not be pushed).
EVENTSOURCE_HOOK = """
(() => {
  const Original = window.EventSource;
  if (!Original || window.__mpnSources) return;
  window.__mpnSources = [];
  const Hooked = function (url, config) {
    const source = new Original(url, config);
    window.__mpnSources.push(source);
    return source;
  };
  Hooked.prototype = Original.prototype;
  Hooked.CONNECTING = 0; Hooked.OPEN = 1; Hooked.CLOSED = 2;
  window.EventSource = Hooked;
})();
"""

# The customer number of every result row: a cell marked as such, else the column
# whose header names it ("customer_number", "Customer number", "お客様番号 customer no").
CUSTOMER_CELLS_JS = """
const table = document.querySelector('#results');
if (!table) return {error: 'no table#results'};
const rows = Array.from(table.querySelectorAll('tr.payment'));
const heads = Array.from(table.querySelectorAll('tr th'));
const col = heads.findIndex(th => /customer[\\s_-]*(number|no)/i.test(th.textContent));
const values = rows.map(r => {
  const marked = r.querySelector('td.customer_number, td[data-field="customer_number"], td[data-col="customer_number"]');
  if (marked) return marked.textContent.trim();
  if (col < 0 || !r.cells[col]) return null;
  return r.cells[col].textContent.trim();
});
return {ids: rows.map(r => r.getAttribute('data-id')), values: values, column: col};
"""


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


# No proxies from the environment: the console is on this machine.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect())


def http_get(url, cookie):
    """(status, headers, body bytes) of a GET with the session cookie, redirects not followed."""
    req = urllib.request.Request(url, headers={"Cookie": f"mpn_session={cookie}"} if cookie else {})
    try:
        with OPENER.open(req, timeout=15) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--console", required=True, help="base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap HOST:PORT")
    p.add_argument("--topic", required=True, help="the engine's input topic")
    p.add_argument("--institution", required=True, help="the staff credential's institution (5 or 8 digits)")
    p.add_argument("--login-id", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--foreign-id", required=True, help="notification id of another institution's payment")
    p.add_argument("--screenshots", required=True, help="directory for the PNGs")
    p.add_argument("--customer", required=True, help="customer number of the payment to publish")
    args = p.parse_args()

    missing = [m for m in ("kafka", "selenium") if importlib.util.find_spec(m) is None]
    if missing:
        sys.stderr.write(f"not installed: {', '.join(missing)}: pip install -r scripts/python-requirements.txt\n")
        return 3
    from kafka import KafkaProducer

    console = args.console.rstrip("/")
    os.makedirs(args.screenshots, exist_ok=True)
    downloads = tempfile.mkdtemp(prefix="mpn-console-dl-")
    started = time.monotonic()
    state = {"step": "start"}
    driver = None
    producer = None
    try:
        state["step"] = "kafka producer"
        try:
            producer = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all", linger_ms=0,
                                     max_block_ms=20000, request_timeout_ms=20000)
            # The topic's metadata now, so the timed send below does not wait for it.
            partitions = producer.partitions_for(args.topic)
        except Exception as e:
            raise Failure(f"cannot reach topic {args.topic} at {args.bootstrap}: {type(e).__name__}: {e}")
        check(partitions, f"topic {args.topic} has no partitions at {args.bootstrap}")

        state["step"] = "browser"
        driver = start_browser(console, downloads)
        result = run(driver, producer, args, console, downloads, state)
        print(json.dumps({
            "live_delay_ms": result["live_delay_ms"],
            "login_ms": result["login_ms"],
            "search_ms": result["search_ms"],
            "total_s": round(time.monotonic() - started, 3),
            "notification_id": result["notification_id"],
        }), flush=True)
        return 0
    except Exception as e:  # a failed step, or anything the browser or Kafka threw
        message = str(e) if isinstance(e, Failure) else f"{type(e).__name__}: {e}"
        report = {"failed": state["step"], "error": message}
        if driver is not None:
            try:
                report["url"] = driver.current_url
                driver.save_screenshot(os.path.join(args.screenshots, "failure.png"))
                with open(os.path.join(args.screenshots, "failure.html"), "w", encoding="utf-8") as f:
                    f.write(driver.page_source)
            except Exception:
                pass
        sys.stderr.write(f"console_browser: step '{state['step']}' failed: {message}\n")
        print(json.dumps(report, ensure_ascii=False), flush=True)
        return 1
    finally:
        if driver is not None:
            try:
                driver.quit()
            except Exception:
                pass
        if producer is not None:
            producer.close(timeout=5)
        shutil.rmtree(downloads, ignore_errors=True)


def start_browser(console, downloads):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_AVOID_STATS", "true")
    host = urllib.parse.urlsplit(console).hostname or "127.0.0.1"
    opts = Options()
    opts.binary_location = os.environ.get("MPN_CHROMIUM", "/usr/bin/chromium")
    for a in [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
        "--disable-dev-shm-usage",
        # Nothing but the console: no background traffic, no other host resolves.
        "--no-proxy-server", "--no-first-run", "--no-default-browser-check",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-default-apps", "--disable-extensions", "--disable-domain-reliability",
        "--no-pings", "--disable-features=Translate,OptimizationHints,MediaRouter",
        f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE {host}",
        "--lang=ja-JP",
    ]:
        opts.add_argument(a)
    opts.add_experimental_option("prefs", {
        "download.default_directory": downloads,
        "download.prompt_for_download": False,
        "download.directory_upgrade": True,
        "safebrowsing.enabled": False,
    })
    service = Service(executable_path=os.environ.get("MPN_CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_page_load_timeout(30)
    # Headless Chromium downloads only where told to through the DevTools protocol.
    for cmd in ("Browser.setDownloadBehavior", "Page.setDownloadBehavior"):
        try:
            driver.execute_cdp_cmd(cmd, {"behavior": "allow", "downloadPath": downloads})
        except Exception:
            pass
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": EVENTSOURCE_HOOK})
    return driver


def path_of(driver):
    return urllib.parse.urlsplit(driver.current_url).path


def wait_for(what, fn, timeout=WAIT_S, interval=0.05):
    """fn() until truthy; Failure naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = fn()
            if value:
                return value
        except Failure:
            raise
        except Exception as e:  # a stale element while the page changes
            last = e
        if time.monotonic() >= deadline:
            raise Failure(f"timed out after {timeout:g} s waiting for {what}" + (f" (last error: {last})" if last else ""))
        time.sleep(interval)


def css(driver, selector):
    from selenium.webdriver.common.by import By
    return driver.find_elements(By.CSS_SELECTOR, selector)


def one(driver, selector, where):
    found = css(driver, selector)
    check(found, f"{where}: no element {selector}")
    return found[0]


def run(driver, producer, args, console, downloads, state):
    out = {}

    # a. Without a session every page leads to /login; logging in leads to / with the
    #    session cookie HttpOnly, Secure, SameSite=Strict.
    state["step"] = "a: before login"
    driver.get(console + "/payments")
    wait_for(f"/payments without a session to land on /login (at {driver.current_url})",
             lambda: path_of(driver) == "/login")
    one(driver, "form#login", "/login")
    check(driver.get_cookie("mpn_csrf") is not None, "/login did not set the pre-session cookie mpn_csrf")
    check(css(driver, "form#login input[name=csrf]"), "/login: form#login has no hidden input csrf")

    state["step"] = "a: log in"
    for name, value in (("institution", args.institution), ("login_id", args.login_id), ("password", args.password)):
        field = one(driver, f"form#login input[name={name}]", "/login")
        field.clear()
        field.send_keys(value)
    t = time.monotonic()
    one(driver, "#login-submit", "/login").click()

    def logged_in():
        if path_of(driver) == "/login":
            if css(driver, "#error"):
                raise Failure(f"login refused: {css(driver, '#error')[0].text!r}")
            if not css(driver, "form#login"):  # POST /login answered another page (403 csrf? 429?)
                text = driver.execute_script("return document.body ? document.body.innerText : ''")
                raise Failure(f"POST /login answered a page without form#login: {text[:300]!r}")
        return path_of(driver) == "/" and css(driver, "table#live")
    wait_for(f"the login to land on / with table#live (at {driver.current_url})", logged_in)
    out["login_ms"] = round((time.monotonic() - t) * 1000)
    cookie = driver.get_cookie("mpn_session")
    check(cookie is not None, "no mpn_session cookie after logging in")
    session = cookie.pop("value")
    check(cookie.get("httpOnly") is True, f"mpn_session is not HttpOnly: {cookie}")
    check(cookie.get("secure") is True, f"mpn_session is not Secure: {cookie}")
    check(cookie.get("sameSite") == "Strict", f"mpn_session is not SameSite=Strict: {cookie}")
    check(cookie.get("path", "/") == "/", f"mpn_session's Path is not /: {cookie}")
    for nav, href in (("a#nav-live", "/"), ("a#nav-search", "/payments"), ("a#nav-totals", "/totals")):
        link = one(driver, nav, "live view")
        check(urllib.parse.urlsplit(link.get_attribute("href")).path == href,
              f"live view: {nav} goes to {link.get_attribute('href')}, not {href}")

    # b. A payment published now appears in the live view within 2 s.
    state["step"] = "b: live view"
    wait_for("the live view's EventSource (/api/v1/live) to be open",
             lambda: driver.execute_script(
                 "return (window.__mpnSources || []).some(s => s.readyState === 1 && s.url.indexOf('/api/v1/live') >= 0)"),
             timeout=10)
    before = [r.get_attribute("data-id") for r in css(driver, "#live tr.payment")]
    now = datetime.now(JST)
    key = "0000000101" + now.strftime("%Y%m%d") + f"{random.SystemRandom().randrange(10**8):08d}"
    nid = f"{key}:payment"
    out["notification_id"] = nid
    published = time.time()
    event = {
        "transaction_key": key,
        "kind": "payment",
        "institution_code": args.institution,
        "customer_number": args.customer,
        "amount": AMOUNT,
        "bank_code": "0001",
        "branch_code": "123",
        "channel": "CHANNEL_ATM",
        "collection_method": 1,
        "paid_at": datetime.fromtimestamp(published, JST).isoformat(timespec="seconds"),
        "published_at_us": int(published * 1_000_000),
    }
    t = time.monotonic()
    sent = producer.send(args.topic, key=args.institution.encode(),
                         value=json.dumps(event, ensure_ascii=False).encode("utf-8"),
                         headers=[("content-type", b"application/json")])
    row = f'#live tr.payment[data-id="{nid}"]'

    def appeared():
        if sent.is_done and sent.failed():
            raise Failure(f"Kafka did not take the event: {sent.exception}")
        return css(driver, row)
    wait_for(f"{row} after publishing {nid}", appeared, timeout=LIVE_WAIT_S, interval=0.02)
    delay_ms = round((time.monotonic() - t) * 1000)
    out["live_delay_ms"] = delay_ms
    sent.get(timeout=10)
    driver.save_screenshot(os.path.join(args.screenshots, "live.png"))
    check(delay_ms <= LIVE_LIMIT_MS, f"the payment took {delay_ms} ms to reach the live view (limit {LIVE_LIMIT_MS} ms)")
    order = [r.get_attribute("data-id") for r in css(driver, "#live tr.payment")]
    older = [i for i in order[:order.index(nid)] if i in before]
    check(not older, f"#live: the new payment is below rows that were there before it (newest first): {older[:5]}")

    # c. The search by customer number finds it, and only that customer's payments.
    state["step"] = "c: search"
    driver.get(console + "/payments")
    check(path_of(driver) == "/payments", f"/payments with a session went to {driver.current_url}")
    field = one(driver, "form#search input[name=customer_number]", "/payments")
    field.clear()
    field.send_keys(args.customer)
    t = time.monotonic()
    one(driver, "#search-submit", "/payments").click()
    result_row = f'#results tr.payment[data-id="{nid}"]'
    wait_for(f"{result_row} in the results of customer_number={args.customer}",
             lambda: "customer_number=" in driver.current_url and css(driver, result_row))
    out["search_ms"] = round((time.monotonic() - t) * 1000)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(driver.current_url).query)
    check(query.get("customer_number") == [args.customer], f"the search URL does not carry customer_number: {driver.current_url}")
    cells = driver.execute_script(CUSTOMER_CELLS_JS)
    check("error" not in cells, f"/payments: {cells.get('error')}")
    check(None not in cells["values"],
          "/payments: cannot find the customer number of a result row "
          "(no td.customer_number and no header cell naming customer_number)")
    wrong = [(i, v) for i, v in zip(cells["ids"], cells["values"]) if v != args.customer]
    check(not wrong, f"/payments: rows of other customers in the results for {args.customer}: {wrong[:5]}")
    driver.save_screenshot(os.path.join(args.screenshots, "search.png"))
    results_url = driver.current_url

    # d. Its detail page.
    state["step"] = "d: detail"
    one(driver, f"{result_row} a.detail", "/payments results").click()
    wait_for("dl#payment on the detail page", lambda: css(driver, "dl#payment"))
    check(urllib.parse.unquote(path_of(driver)) == f"/payments/{nid}", f"a.detail led to {driver.current_url}")
    fields = {f: one(driver, f"dd#f-{f}", "detail page").text.strip()
              for f in ("customer_number", "amount", "status", "transaction_key", "kind")}
    check(fields["customer_number"] == args.customer, f"dd#f-customer_number is {fields['customer_number']!r}, not {args.customer!r}")
    check("¥12,345" in fields["amount"], f"dd#f-amount is {fields['amount']!r}, not ¥12,345")
    check("paid" in fields["status"], f"dd#f-status is {fields['status']!r}, it does not say paid")
    check(key in fields["transaction_key"], f"dd#f-transaction_key is {fields['transaction_key']!r}, not {key}")
    check("payment" in fields["kind"], f"dd#f-kind is {fields['kind']!r}, it does not say payment")
    check(css(driver, "table#lifecycle"), "detail page: no table#lifecycle")
    driver.save_screenshot(os.path.join(args.screenshots, "detail.png"))

    # e. The CSV downloads: UTF-8 with a BOM through the browser, Shift_JIS by its link.
    state["step"] = "e: csv utf-8"
    driver.back()
    wait_for("the search results again after going back", lambda: css(driver, result_row))
    if not css(driver, "a#csv-utf8"):
        driver.get(results_url)
    link = one(driver, "a#csv-utf8", "/payments results")
    href = link.get_attribute("href")
    check("encoding=utf-8" in href and f"customer_number={args.customer}" in href,
          f"a#csv-utf8 does not carry the search and encoding=utf-8: {href}")
    link.click()
    target = os.path.join(downloads, "payments.csv")

    def downloaded():
        names = os.listdir(downloads)
        if os.path.exists(target) and not any(n.endswith(".crdownload") for n in names):
            return True
        return False
    wait_for(f"payments.csv in the download directory (has: {os.listdir(downloads)})", downloaded)
    data = open(target, "rb").read()
    check(data.startswith(BOM), f"payments.csv (utf-8) does not start with the UTF-8 BOM: {data[:16]!r}")
    check_csv("payments.csv (utf-8)", data[len(BOM):].decode("utf-8"), nid, args.customer)

    state["step"] = "e: csv shift_jis"
    href = one(driver, "a#csv-sjis", "/payments results").get_attribute("href")
    check("encoding=shift_jis" in href and f"customer_number={args.customer}" in href,
          f"a#csv-sjis does not carry the search and encoding=shift_jis: {href}")
    status, headers, body = http_get(href, session)
    check(status == 200, f"GET {href} answered {status}")
    disposition = headers.get("Content-Disposition", "")
    check("attachment" in disposition and "payments.csv" in disposition,
          f"the Shift_JIS CSV's Content-Disposition is {disposition!r}")
    check(not body.startswith(BOM), "the Shift_JIS CSV starts with a UTF-8 BOM")
    try:
        text = body.decode("shift_jis")
    except UnicodeDecodeError as e:
        raise Failure(f"the Shift_JIS CSV does not decode as shift_jis: {e}")
    check_csv("payments.csv (shift_jis)", text, nid, args.customer)

    # f. Another institution's payment: 404 (or 403), the same as an unknown one.
    state["step"] = "f: another institution's payment"
    foreign = urllib.parse.quote(args.foreign_id, safe=":")
    status, _, _ = http_get(f"{console}/payments/{foreign}", session)
    check(status in (403, 404), f"GET /payments/{args.foreign_id} (another institution's) answered {status}, not 404/403")
    driver.get(f"{console}/payments/{foreign}")
    check(path_of(driver) != "/login", "opening another institution's payment logged the browser out")
    check(not css(driver, "dl#payment"), f"/payments/{args.foreign_id} shows dl#payment: another institution's payment leaks")
    status, _, body = http_get(f"{console}/api/v1/payments/{foreign}", session)
    check(status == 404, f"GET /api/v1/payments/{args.foreign_id} answered {status}, not 404: {body[:200]!r}")
    unknown_status, _, unknown_body = http_get(f"{console}/api/v1/payments/99999999999999999999999999:payment", session)
    check(unknown_status == 404 and json.loads(unknown_body) == json.loads(body),
          f"another institution's payment and an unknown one answer differently: {body[:200]!r} / {unknown_status} {unknown_body[:200]!r}")

    # g. The totals, then log out: the session is gone.
    state["step"] = "g: totals"
    driver.get(console + "/totals")
    wait_for("table#totals on /totals", lambda: css(driver, "table#totals"))
    driver.save_screenshot(os.path.join(args.screenshots, "totals.png"))

    state["step"] = "g: log out"
    if not css(driver, "#logout-submit"):
        driver.get(console + "/")
    one(driver, "#logout-submit", driver.current_url).click()
    wait_for(f"logging out to land on /login (at {driver.current_url})", lambda: path_of(driver) == "/login")
    driver.get(console + "/payments")
    wait_for(f"/payments after logging out to land on /login (at {driver.current_url})",
             lambda: path_of(driver) == "/login")
    status, _, _ = http_get(f"{console}/api/v1/payments", session)
    check(status == 401, f"the logged-out session still works: GET /api/v1/payments answered {status}, not 401")
    return out


def check_csv(name, text, nid, customer):
    rows = list(csv.reader(io.StringIO(text, newline="")))
    check(rows, f"{name} is empty")
    header = rows[0]
    check(header[:len(CSV_COLUMNS)] == CSV_COLUMNS,
          f"{name}: the header starts {header[:len(CSV_COLUMNS)]}, not {CSV_COLUMNS}")
    col = {c: header.index(c) for c in CSV_COLUMNS}
    data = [r for r in rows[1:] if r]
    ours = [r for r in data if r[col["notification_id"]] == nid]
    check(len(ours) == 1, f"{name}: {len(ours)} rows with notification_id {nid} (of {len(data)} rows)")
    row = ours[0]
    check(row[col["customer_number"]] == customer, f"{name}: customer_number is {row[col['customer_number']]!r}, not {customer!r}")
    check(row[col["amount"]] == str(AMOUNT), f"{name}: amount is {row[col['amount']]!r}, not {AMOUNT}")
    others = [r[col["notification_id"]] for r in data if r[col["customer_number"]] != customer]
    check(not others, f"{name}: rows of other customers although the search is customer_number={customer}: {others[:5]}")


if __name__ == "__main__":
    sys.exit(main())
