"""Shared by the Python driver tests (test_psycopg.py, test_asyncpg.py).

The launcher (tests/drivers/launch.c) has started PostgreSQL and one pgwarden per pool mode
and put their addresses in the environment; see tests/drivers/README.md.  Each case runs
once per pool mode, with its own keys and connections, and prints one line:
"ok <mode> <case>" or "FAIL <mode> <case>: <why>".  The last line is the count.
"""

import json
import os
import sys
import time
import traceback
import urllib.request
import uuid

# The recipes of docs/locks.md live in tests/drivers/recipes/.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "recipes"))

CASE_TIMEOUT_S = 20

# PostgreSQL type OIDs the lock functions return.
INT8, BOOL, INT4, TEXT = 20, 16, 23, 25


def modes():
    return os.environ.get("PGW_MODES", "session transaction").split()


def url(mode):
    """postgresql:// URL of pgwarden in this pool mode ("direct": PostgreSQL itself)."""
    return os.environ["DATABASE_URL_" + mode.upper()]


def conninfo(mode):
    port = os.environ["PGW_DIRECT_PORT" if mode == "direct" else "PGW_PORT_" + mode.upper()]
    return dict(host=os.environ["PGW_HOST"], port=int(port), user=os.environ["PGW_USER"],
                password=os.environ["PGW_PASSWORD"], database=os.environ["PGW_DB"])


def admin(mode, method, path, body=None):
    """A request to the admin port of pgwarden in this pool mode (e.g. POST /chaos); the
    decoded JSON answer."""
    port = os.environ["PGW_ADMIN_PORT_" + mode.upper()]
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        "http://127.0.0.1:%s%s" % (port, path), data=data, method=method,
        headers={"Authorization": "Bearer " + os.environ["PGW_ADMIN_TOKEN"],
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def unique(prefix):
    """A key or table name no other case uses."""
    return "%s_%s" % (prefix, uuid.uuid4().hex[:10])


def check(cond, what, *values):
    if not cond:
        raise AssertionError(what + ("" if not values else ": " + " ".join(map(repr, values))))


def check_token(t, after=0):
    check(isinstance(t, int) and not isinstance(t, bool), "token is not an integer", t)
    check(t > 0, "token is not positive", t)
    check(t > after, "token did not increase", after, t)
    return t


class Runner:
    def __init__(self, driver):
        self.driver = driver
        self.passed = 0
        self.failed = []

    def ok(self, mode, name, seconds):
        self.passed += 1
        print("ok   %-11s %s (%.2f s)" % (mode, name, seconds), flush=True)

    def fail(self, mode, name, exc):
        self.failed.append("%s %s" % (mode, name))
        print("FAIL %-11s %s: %s: %s" % (mode, name, type(exc).__name__, exc), flush=True)
        sys.stdout.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        sys.stdout.flush()

    def finish(self):
        for f in self.failed:
            print("failed: " + f)
        print("%s: %d passed, %d failed" % (self.driver, self.passed, len(self.failed)),
              flush=True)
        return 1 if self.failed or self.passed == 0 else 0


def now():
    return time.monotonic()
