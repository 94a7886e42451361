#!/usr/bin/env python3
"""lockcall_oracle.py: compares pgwarden's lock-call module with a real PostgreSQL.

PostgreSQL gets the seven lock functions as SQL functions of the same signatures (STRICT,
plpgsql, raising a NOTICE with their arguments); each case is sent to it by the simple or
the extended protocol over a raw protocol-v3 connection, and to build*/tests/proxy/
lockcall_oracle (px_lockcall_* driven by JSON lines).  For every case the two must agree:
whether and where (Parse, Bind, Execute) it fails and every field of the error (SQLSTATE,
message, detail, hint, position, context), the argument values the function received, the
ParameterDescription and RowDescription bytes.  Cases pgwarden deliberately treats otherwise
(0A000 for argument forms it does not evaluate, its own 22023 checks, texts it leaves to
PostgreSQL) are listed separately for review.

    tests/fixture/pgcluster.sh start /tmp/pgc     # prints the port
    tests/proxy/lockcall_oracle.py --dir /tmp/pgc --oracle build/tests/proxy/lockcall_oracle
    tests/proxy/lockcall_oracle.py ... --emit-c   # prints the cases as test_lockcall.c rows

It creates the functions in the cluster's pgwarden_test database (as superuser postgres,
over the Unix socket) and drops them at the end.
"""
import argparse
import json
import os
import socket
import struct
import subprocess
import sys

FUNCS = """
CREATE OR REPLACE FUNCTION pgwarden_lock(key text, mode text) RETURNS bigint LANGUAGE plpgsql
  STRICT AS $$BEGIN RAISE NOTICE 'ARGS|%|%', encode(convert_to(key, 'UTF8'), 'hex'),
  encode(convert_to(mode, 'UTF8'), 'hex'); RETURN 1; END$$;
CREATE OR REPLACE FUNCTION pgwarden_lock(key text, mode text, timeout_ms integer) RETURNS bigint
  LANGUAGE plpgsql STRICT AS $$BEGIN RAISE NOTICE 'ARGS|%|%|%', encode(convert_to(key, 'UTF8'),
  'hex'), encode(convert_to(mode, 'UTF8'), 'hex'), timeout_ms; RETURN 1; END$$;
CREATE OR REPLACE FUNCTION pgwarden_xact_lock(key text, mode text) RETURNS bigint
  LANGUAGE plpgsql STRICT AS $$BEGIN RAISE NOTICE 'ARGS|%|%', encode(convert_to(key, 'UTF8'),
  'hex'), encode(convert_to(mode, 'UTF8'), 'hex'); RETURN 2; END$$;
CREATE OR REPLACE FUNCTION pgwarden_xact_lock(key text, mode text, timeout_ms integer)
  RETURNS bigint LANGUAGE plpgsql STRICT AS $$BEGIN RAISE NOTICE 'ARGS|%|%|%',
  encode(convert_to(key, 'UTF8'), 'hex'), encode(convert_to(mode, 'UTF8'), 'hex'), timeout_ms;
  RETURN 2; END$$;
CREATE OR REPLACE FUNCTION pgwarden_try_lock(key text, mode text) RETURNS bigint
  LANGUAGE plpgsql STRICT AS $$BEGIN RAISE NOTICE 'ARGS|%|%', encode(convert_to(key, 'UTF8'),
  'hex'), encode(convert_to(mode, 'UTF8'), 'hex'); RETURN 3; END$$;
CREATE OR REPLACE FUNCTION pgwarden_try_xact_lock(key text, mode text) RETURNS bigint
  LANGUAGE plpgsql STRICT AS $$BEGIN RAISE NOTICE 'ARGS|%|%', encode(convert_to(key, 'UTF8'),
  'hex'), encode(convert_to(mode, 'UTF8'), 'hex'); RETURN 4; END$$;
CREATE OR REPLACE FUNCTION pgwarden_unlock(key text) RETURNS boolean LANGUAGE plpgsql STRICT
  AS $$BEGIN RAISE NOTICE 'ARGS|%', encode(convert_to(key, 'UTF8'), 'hex'); RETURN true; END$$;
CREATE OR REPLACE FUNCTION pgwarden_unlock_all() RETURNS integer LANGUAGE plpgsql STRICT
  AS $$BEGIN RAISE NOTICE 'ARGS'; RETURN 0; END$$;
CREATE OR REPLACE FUNCTION pgwarden_locks() RETURNS TABLE(key text, mode text, scope text,
  token bigint) LANGUAGE plpgsql STRICT AS $$BEGIN RAISE NOTICE 'ARGS'; RETURN QUERY
  VALUES ('a,b'::text, 'read'::text, 'session'::text, 5::bigint); END$$;
"""
DROP = """
DROP FUNCTION pgwarden_lock(text, text); DROP FUNCTION pgwarden_lock(text, text, integer);
DROP FUNCTION pgwarden_xact_lock(text, text); DROP FUNCTION pgwarden_xact_lock(text, text, integer);
DROP FUNCTION pgwarden_try_lock(text, text); DROP FUNCTION pgwarden_try_xact_lock(text, text);
DROP FUNCTION pgwarden_unlock(text); DROP FUNCTION pgwarden_unlock_all(); DROP FUNCTION pgwarden_locks();
"""


def msg(t, body):
    return t + struct.pack("!I", len(body) + 4) + body


def cstr(s):
    return (s.encode() if isinstance(s, str) else s) + b"\0"


class Conn:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.buf = b""
        body = struct.pack("!I", 196608) + cstr("user") + cstr("postgres") + cstr("database")
        body += cstr("pgwarden_test") + b"\0"
        self.s.sendall(struct.pack("!I", len(body) + 4) + body)
        self.until_ready()

    def read(self):
        while True:
            if len(self.buf) >= 5:
                n = struct.unpack("!I", self.buf[1:5])[0]
                if len(self.buf) >= n + 1:
                    m, self.buf = self.buf[: n + 1], self.buf[n + 1:]
                    return m
            d = self.s.recv(65536)
            if not d:
                raise EOFError
            self.buf += d

    def until_ready(self):
        out = []
        while True:
            m = self.read()
            out.append(m)
            if m[:1] == b"Z":
                return out

    def query(self, sql):
        self.s.sendall(msg(b"Q", cstr(sql)))
        return self.until_ready()


def fields(m):
    f = {}
    for part in m[5:-1].split(b"\0"):
        if part:
            f[chr(part[0])] = part[1:].decode()
    return f


def pg_run(conn, case):
    """PostgreSQL's answer to a case, in the oracle's JSON shape."""
    sql = bytes.fromhex(case["sql_hex"])
    if not case["ext"]:
        msgs = (conn.s.sendall(msg(b"Q", sql + b"\0")), conn.until_ready())[1]
    else:
        p = cstr(case.get("stmt", "")) + sql + b"\0" + struct.pack("!H", len(case["oids"]))
        p += b"".join(struct.pack("!I", o) for o in case["oids"])
        b = cstr(case.get("portal", "")) + cstr(case.get("stmt", ""))
        b += struct.pack("!H", len(case["fmts"])) + b"".join(struct.pack("!H", f) for f in case["fmts"])
        b += struct.pack("!H", len(case["vals"]))
        for v in case["vals"]:
            b += struct.pack("!i", -1) if v is None else struct.pack("!I", len(v) // 2) + bytes.fromhex(v)
        b += struct.pack("!H", len(case["rfmts"])) + b"".join(struct.pack("!H", f) for f in case["rfmts"])
        stmt, portal = case.get("stmt", ""), case.get("portal", "")
        conn.s.sendall(msg(b"P", p) + msg(b"D", b"S" + cstr(stmt)) + msg(b"B", b) +
                       msg(b"D", b"P" + cstr(portal)) + msg(b"E", cstr(portal) + b"\0\0\0\0") +
                       msg(b"S", b"") + msg(b"C", b"S" + cstr(stmt)) + msg(b"S", b""))
        msgs = conn.until_ready() + conn.until_ready()
    out = {"stage": "parse" if case["ext"] else "simple"}
    args = None
    for m in msgs:
        t = m[:1]
        if t == b"1":
            out["stage"] = "bind"
        elif t == b"2":
            out["stage"] = "exec"
        elif t == b"t":
            out["t"] = m.hex()
        elif t == b"T" and (out["stage"] == "exec" or not case["ext"]):
            out["T"] = m.hex()
        elif t == b"N":
            f = fields(m)
            if f.get("M", "").startswith("ARGS"):
                args = f["M"].split("|")[1:]
        elif t == b"D":
            out["D"] = m.hex()
        elif t == b"E" and "err" not in out:
            f = fields(m)
            out["err"] = {k: (int(v) if k == "P" else v) for k, v in f.items()
                          if k in "CMDHPW"}
            out["err"]["stage"] = out["stage"]
    out["args"] = args
    return out


def our_args_as_pg(ours):
    """Our argument values as the NOTICE would show them (None when not called)."""
    if ours.get("null_result") or "args" not in ours:
        return None
    res = []
    for i, a in enumerate(ours["args"]):
        res.append(str(a["int"]) if "int" in a else (a["len"], a["text"]))
    return res


def same_args(ours, pg):
    """Our values (text: its length and first bytes) are PostgreSQL's."""
    if ours is None or pg is None:
        return ours is None and pg is None
    if len(ours) != len(pg):
        return False
    for o, p in zip(ours, pg):
        if isinstance(o, tuple):
            if len(p) != 2 * o[0] or not p.startswith(o[1]):
                return False
        elif o != p:
            return False
    return True


def compare(case, pg, ours):
    """'ok', or a description of the difference, or 'review: ...'."""
    if case.get("known"):
        return "known: " + case["known"]
    if not ours["lock"]:
        if pg.get("args") is not None:
            return "review: not a lock call, but PostgreSQL called the function"
        return "ok"
    if "err" in ours:
        e = dict(ours["err"])
        stage = e.pop("stage")
        if e["C"] == "0A000":
            return "review: 0A000 (PostgreSQL: %s)" % json.dumps(pg.get("err") or pg.get("args"))
        if stage == "exec":
            return "ok" if "err" not in pg else "differs: exec error, PostgreSQL %s" % pg["err"]
        p = dict(pg.get("err") or {})
        pstage = p.pop("stage", None)
        if p != e:
            return "differs: ours %s PostgreSQL %s" % (json.dumps(ours["err"]), json.dumps(pg.get("err")))
        if case["ext"] and pstage != stage:
            return "differs: stage %s, PostgreSQL %s" % (stage, pstage)
        return "ok"
    if "err" in pg:
        return "differs: PostgreSQL error %s" % json.dumps(pg["err"])
    if case["ext"] and ours.get("t") != pg.get("t"):
        return "differs: ParameterDescription %s vs %s" % (ours.get("t"), pg.get("t"))
    if ours.get("T") != pg.get("T"):
        return "differs: RowDescription %s vs %s" % (ours.get("T"), pg.get("T"))
    if not same_args(our_args_as_pg(ours), pg["args"]):
        return "differs: args %s vs %s" % (our_args_as_pg(ours), pg["args"])
    return "ok"


def case_of(c):
    """Normalises a case given as a string (simple query) or a dict."""
    if isinstance(c, (str, bytes)):
        c = {"sql": c}
    sql = c["sql"]
    sql = sql if isinstance(sql, bytes) else sql.encode()
    vals = [None if v is None else (v if isinstance(v, bytes) else v.encode()).hex()
            for v in c.get("vals", [])]
    return {"sql_hex": sql.hex(), "ext": c.get("ext", "vals" in c or "oids" in c),
            "oids": c.get("oids", []), "fmts": c.get("fmts", []), "vals": vals,
            "rfmts": c.get("rfmts", []), "stmt": c.get("stmt", ""), "portal": c.get("portal", ""),
            "known": c.get("known")}


C_HEAD = """/* clang-format off */
/*
 * lockcall_expected.h: the statements of lockcall_cases.py with the answers test_lockcall.c
 * expects.  Generated by tests/proxy/lockcall_oracle.py --emit-c (do not edit by hand):
 * each case was put to %s,
 * which had the lock functions as SQL functions of the same signatures, and to
 * px_lockcall_*; "PostgreSQL agrees" rows are
 * answers both gave identically (every error field, argument values, ParameterDescription
 * and RowDescription bytes), the others are pgwarden's documented decisions (lockcall.h).
 */
"""


def c_str(b):
    """A C string literal for bytes b (octal escapes, no trigraphs), split in chunks."""
    out, line = [], ""
    for i, ch in enumerate(b):
        if ch in (0x22, 0x5C):
            line += "\\" + chr(ch)
        elif ch == 0x3F:
            line += "\\?"
        elif 0x20 <= ch < 0x7F:
            line += chr(ch)
        else:
            line += "\\%03o" % ch
        if len(line) >= 70:
            out.append('"%s"' % line)
            line = ""
    if line or not out:
        out.append('"%s"' % line)
    return " ".join(out)


def c_list(xs):
    return "{%s}" % ", ".join(str(x) for x in xs) if xs else "{0}"


def c_row(c, ours, verdict):
    """One struct lc_case initializer."""
    f = ['.sql = %s' % c_str(bytes.fromhex(c["sql_hex"])), ".ext = %s" % ("true" if c["ext"] else "false")]
    if c["oids"]:
        f.append(".noids = %d, .oids = %s" % (len(c["oids"]), c_list(c["oids"])))
    if c["fmts"]:
        f.append(".nfmts = %d, .fmts = %s" % (len(c["fmts"]), c_list(c["fmts"])))
    if c["vals"]:
        f.append(".nvals = %d, .vals = {%s}" % (len(c["vals"]), ", ".join(
            "NULL" if v is None else '"%s"' % v for v in c["vals"])))
    if c["rfmts"]:
        f.append(".nrfmts = %d, .rfmts = %s" % (len(c["rfmts"]), c_list(c["rfmts"])))
    for k in ("stmt", "portal"):
        if c[k]:
            f.append('.%s = "%s"' % (k, c[k]))
    f.append(".lock = %s" % ("true" if ours["lock"] else "false"))
    if ours["lock"] and "err" in ours:
        e = ours["err"]
        f.append(".stage = '%s', .C = \"%s\", .M = %s" % (e["stage"][0], e["C"], c_str(e["M"].encode())))
        for k in ("D", "H", "W"):
            if k in e:
                f.append(".%s = %s" % (k, c_str(e[k].encode())))
        if "P" in e:
            f.append(".P = %d" % e["P"])
    if ours["lock"]:
        for k in ("t", "T"):
            if k in ours:
                f.append('.%s = "%s"' % (k, ours[k]))
        if ours.get("args"):
            f.append(".nargs = %d, .args = {%s}" % (len(ours["args"]), ", ".join(
                '"null"' if a is None else ('"int:%d"' % a["int"] if "int" in a else
                                            '"text:%d:%s"' % (a["len"], a["text"]))
                for a in ours["args"])))
        if ours.get("null_result"):
            f.append(".null_result = true")
    why = "PostgreSQL agrees" if verdict == "ok" else verdict.replace("*/", "* /")
    return "    /* %s */\n    {%s}," % (why[:300], ", ".join(f))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True, help="the pgcluster.sh directory")
    ap.add_argument("--oracle", required=True, help="the lockcall_oracle program")
    ap.add_argument("--cases", default=os.path.join(os.path.dirname(__file__), "lockcall_cases.py"))
    ap.add_argument("--emit-json", action="store_true", help="print case, PostgreSQL, ours")
    ap.add_argument("--emit-c", action="store_true",
                    help="print the cases and answers as lockcall_expected.h for test_lockcall.c")
    a = ap.parse_args()
    env = dict(l.strip().split("=", 1) for l in open(os.path.join(a.dir, "env")) if "=" in l)
    conn = Conn(os.path.join(env["PGCLUSTER_SOCKET_DIR"], ".s.PGSQL." + env["PGPORT"]))
    for r in conn.query(FUNCS):
        if r[:1] == b"E":
            sys.exit("creating functions: %s" % fields(r))
    scope = {}
    exec(open(a.cases).read(), scope)
    cases = [case_of(c) for c in scope["CASES"]]
    proc = subprocess.Popen([a.oracle], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    counts = {}
    rows = []
    try:
        for c in cases:
            proc.stdin.write(json.dumps(c) + "\n")
            proc.stdin.flush()
            ours = json.loads(proc.stdout.readline())
            pg = pg_run(conn, c)
            verdict = compare(c, pg, ours)
            kind = verdict.split(":")[0]
            counts[kind] = counts.get(kind, 0) + 1
            if a.emit_json:
                print(json.dumps({"case": c, "pg": pg, "ours": ours, "verdict": verdict}))
            elif a.emit_c:
                rows.append(c_row(c, ours, verdict))
            elif kind != "ok":
                print("%-9s %r %s\n          %s" % (kind, bytes.fromhex(c["sql_hex"]),
                      {k: c[k] for k in ("oids", "fmts", "vals", "rfmts") if c[k]}, verdict))
    finally:
        conn.query(DROP)
    if a.emit_c:
        ver = [m for m in conn.query("SELECT version()") if m[:1] == b"D"]
        print(C_HEAD % ver[0][11:].decode().split(" on ")[0] +
              "static const struct lc_case expected_cases[] = {\n" + "\n".join(rows) +
              "\n};\n/* clang-format on */")
    print("cases: %d  %s" % (len(cases), "  ".join("%s: %d" % kv for kv in sorted(counts.items()))),
          file=sys.stderr)
    sys.exit(1 if counts.get("differs") else 0)


if __name__ == "__main__":
    main()
