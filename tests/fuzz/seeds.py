#!/usr/bin/env python3
# seeds.py: writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<name>/), in the
# input layout each fuzz_<name>.c documents.  The files are committed; run this again
# after changing a target's layout or to add seeds:
#     python3 tests/fuzz/seeds.py            (rewrites corpus/*/ from scratch)
# Sources: hand-written packets and messages below, the SQL of tests/proxy/test_sqlscan.c
# and tests/proxy/lockcall_cases.py, conf/*.ini and conf/userlist.example.txt.
import codecs
import os
import re
import shutil
import struct
import sys

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "proxy"))
import lockcall_cases  # noqa: E402

CORPUS = os.path.join(HERE, "corpus")


def u16(v):
    return struct.pack(">H", v & 0xFFFF)


def u32(v):
    return struct.pack(">I", v & 0xFFFFFFFF)


def part(b):
    """A length-prefixed part (fuzz_part in fuzz_common.c)."""
    return u16(len(b)) + b


def msg(t, body):
    return t + u32(len(body) + 4) + body


def b(s):
    return s if isinstance(s, bytes) else s.encode()


def write(name, seeds):
    d = os.path.join(CORPUS, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for label, data in seeds:
        with open(os.path.join(d, label), "wb") as f:
            f.write(data)


# ---- startup ---------------------------------------------------------------------------

SSL = u32(8) + u32(80877103)
GSS = u32(8) + u32(80877104)


def startup(params, version=196608, terminator=True):
    body = u32(version) + b"".join(b(k) + b"\0" + b(v) + b"\0" for k, v in params)
    if terminator:
        body += b"\0"
    return u32(len(body) + 4) + body


APP = [("user", "alice"), ("database", "app"), ("application_name", "psql")]
startup_seeds = [
    ("plain", startup(APP)),
    ("ssl_then_startup", SSL + startup(APP)),
    ("gss_ssl_startup", GSS + SSL + startup(APP + [("client_encoding", "UTF8")])),
    ("ssl_twice", SSL + SSL),
    ("gss_twice", GSS + GSS + startup(APP)),
    ("cancel", u32(16) + u32(80877102) + u32(4242) + u32(0xDEADBEEF)),
    ("options", startup([("user", "u"), ("options", "-c search_path=x"), ("replication", "database")])),
    ("protocol_3_1", startup(APP + [("_pq_.x", "1")], version=196609)),
    ("protocol_2", startup(APP, version=131072)),
    ("no_terminator", startup(APP, terminator=False)),
    ("no_params", startup([])),
    ("duplicate_user", startup([("user", "a"), ("user", "b"), ("database", "")])),
    ("many_params", startup([("p%d" % i, "v" * (i % 7)) for i in range(120)] + APP)),
    ("ssl_bad_length", u32(12) + u32(80877103) + u32(0)),
]

# ---- relay -----------------------------------------------------------------------------

FORWARD, DROP, STOP, HOLD, DROP_STOP, REPLACE_HEAD, CLOSE = range(7)
NONE, TYPE, BODY, HEAD = range(4)
EXPAND = 8  # flag: 0xFE k in the stream is (k + 1) KiB of filler (fuzz_relay.c)


def relay(flags, ntake, maxsel, seed, see, acts, stream):
    see = (see + [(0, 0)] * 6)[:6]
    acts = (acts + [FORWARD] * 8)[:8]
    head = bytes([flags, ntake, maxsel]) + u32(seed)
    head += b"".join(bytes([ord(t) if isinstance(t, str) else t, m]) for t, m in see)
    return head + bytes(acts) + stream


LOGIN = msg(b"p", b"SCRAM-SHA-256\0" + u32(20) + b"n,,n=,r=abcdefghijkl") + msg(b"p", b"c=biws,r=x,p=y")
EXTENDED = (msg(b"P", b"s1\0SELECT $1\0" + u16(1) + u32(25)) + msg(b"B", b"\0s1\0" + u16(0) + u16(1) + u32(1) + b"x" + u16(0))
            + msg(b"D", b"P\0") + msg(b"E", b"\0" + u32(0)) + msg(b"S", b""))
SIMPLE = msg(b"Q", b"BEGIN\0") + msg(b"Q", b"SELECT 1\0") + msg(b"Q", b"COMMIT\0") + msg(b"X", b"")
COPY = msg(b"Q", b"COPY t FROM STDIN\0") + b"".join(msg(b"d", b"row %d\n" % i) for i in range(20)) + msg(b"c", b"")
BIG = msg(b"d", b"z" * 9000) + msg(b"Q", b"SELECT 2\0")


def huge(t, head, kib):
    """A message whose body is head then kib KiB of filler, written with F_EXPAND's escapes
    (0xFE k: (k + 1) KiB); longer than PX_RELAY_HEAD_MAX (64 KiB) for kib > 64."""
    length = 4 + len(head) + kib * 1024
    out = t + u32(length) + head
    while kib > 0:
        k = min(kib, 256)
        out += b"\xfe" + bytes([k - 1])
        kib -= k
    assert b"\xfe" not in (t + u32(length) + head)
    return out


HUGE_BIND = huge(b"B", b"\0s1\0" + u16(0) + u16(1) + u32(100 * 1024), 100) + msg(b"S", b"")
HUGE_QUERY = huge(b"Q", b"SELECT '", 70) + msg(b"Q", b"SELECT 3\0")
relay_seeds = [
    ("simple_forward", relay(0, 0, 255, 1, [("Q", BODY)], [FORWARD], SIMPLE)),
    ("simple_drop_inject", relay(2, 0, 255, 2, [("Q", BODY), ("X", TYPE)], [DROP, FORWARD, STOP], SIMPLE)),
    ("extended_hold", relay(0x10, 0, 255, 3, [("P", BODY), ("B", BODY), ("S", TYPE), ("E", TYPE)],
                            [HOLD, FORWARD, STOP, DROP_STOP], EXTENDED)),
    ("login_then_relay", relay(0x20, 2, 255, 4, [("Q", BODY)], [FORWARD], LOGIN + SIMPLE)),
    ("copy_chunks", relay(0x30, 0, 255, 5, [("d", NONE), ("c", TYPE), ("Q", BODY)], [FORWARD], COPY)),
    ("direct_big", relay(0x31, 0, 252, 6, [("Q", BODY), ("d", TYPE)], [FORWARD, STOP], BIG + SIMPLE)),
    ("direct_lazy", relay(0x25, 0, 252, 7, [("Q", BODY)], [DROP, HOLD, FORWARD], COPY + BIG)),
    ("too_large", relay(0x10, 0, 20, 8, [("Q", BODY)], [FORWARD], SIMPLE + EXTENDED)),
    ("short_length", relay(0, 0, 255, 9, [], [], msg(b"Q", b"x\0")[:1] + u32(3) + b"junk")),
    ("close", relay(0x10, 1, 255, 10, [("P", BODY), ("S", TYPE)], [FORWARD, CLOSE], EXTENDED + SIMPLE)),
    ("take_bad", relay(0, 3, 10, 11, [], [], LOGIN)),
    ("head_small", relay(0x12, 0, 20, 12, [("Q", HEAD), ("B", HEAD), ("P", BODY), ("S", TYPE)],
                         [DROP, FORWARD, HOLD, STOP, DROP_STOP], EXTENDED + SIMPLE)),
    ("head_replace", relay(EXPAND | 0x31, 0, 20, 13, [("B", HEAD), ("S", TYPE)],
                           [REPLACE_HEAD, FORWARD], HUGE_BIND + SIMPLE)),
    ("head_drop", relay(EXPAND | 0x22, 0, 255, 14, [("Q", HEAD), ("B", HEAD)],
                        [DROP, HOLD, DROP_STOP, FORWARD], HUGE_QUERY + HUGE_BIND + SIMPLE)),
    ("head_hold_stop", relay(EXPAND | 0x35, 0, 255, 15, [("Q", HEAD), ("X", TYPE)],
                             [HOLD, STOP, REPLACE_HEAD], HUGE_QUERY + HUGE_QUERY + SIMPLE)),
    ("head_cut", relay(EXPAND | 0x10, 0, 255, 16, [("B", HEAD)], [REPLACE_HEAD],
                       HUGE_BIND[:40] + b"\xfe\x50")),
]

# ---- sqlscan ---------------------------------------------------------------------------


def c_strings(path):
    """First string literal of every test-case row ({"...", ...}) of a C file."""
    out = []
    lit = re.compile(r'^\s*\{\s*"((?:[^"\\]|\\.)*)"')
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = lit.match(line)
            if m:
                try:
                    out.append(codecs.decode(m.group(1), "unicode_escape").encode("latin-1"))
                except (UnicodeDecodeError, UnicodeEncodeError):
                    pass
    return out


def case_sql(c):
    s = c["sql"] if isinstance(c, dict) else c
    return b(s)


sql_seeds = c_strings(os.path.join(ROOT, "tests", "proxy", "test_sqlscan.c"))
sql_seeds += [
    b"SET search_path TO app, public",
    b"SET LOCAL statement_timeout = 5",
    b"RESET ALL; LISTEN ch",
    b"DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    b"CREATE TEMP TABLE t (x int)",
    b"SELECT * INTO TEMP t2 FROM t",
    b"SELECT pg_advisory_lock(1); SELECT \"pg_catalog\".pg_try_advisory_lock_shared(2)",
    b"DEALLOCATE PREPARE \"Mixed\"\"Name\"",
    b"DEALLOCATE " + "\u00e9".encode() * 40,
    b"SELECT $tag$ ; BEGIN $tag$; E'\\' ; ' -- /* */",
    b"PREPARE p AS SELECT 1; EXECUTE p",
    b"WITH x AS (SELECT 1) SELECT * FROM x",
    b"SET SESSION AUTHORIZATION DEFAULT",
    b"SET TIME ZONE 'UTC'",
]
sql_seeds += [case_sql(c) for c in lockcall_cases.CASES[::6]]
sql_seeds = [s for s in dict.fromkeys(sql_seeds) if len(s) <= 2048]

# ---- lockcall ----------------------------------------------------------------------------


def bind_rest(fmts, vals, rfmts):
    r = u16(len(fmts)) + b"".join(u16(f) for f in fmts) + u16(len(vals))
    for v in vals:
        r += u32(-1) if v is None else u32(len(b(v))) + b(v)
    return r + u16(len(rfmts)) + b"".join(u16(f) for f in rfmts)


def lockcall(c, i):
    if isinstance(c, dict):
        oids = c.get("oids", [])
        ext = c.get("ext", "oids" in c or "vals" in c or "fmts" in c)
        flags = 1 if ext else 0
        types = b"".join(u32(o) for o in oids)
        vals = [None if v is None else b(v) for v in c.get("vals", [])]
        rest = bind_rest(c.get("fmts", []), vals, c.get("rfmts", []))
        stmt, portal = b(c.get("stmt", "")), b(c.get("portal", ""))
    else:
        flags, types, rest, stmt, portal, oids = 0, b"", b"", b"", b"", []
    sql = b(c["sql"] if isinstance(c, dict) else c)
    head = bytes([flags | (2 if i % 5 == 0 else 0), len(oids)]) + struct.pack(">q", 1000 + i) + bytes([i % 8])
    return head + part(sql) + part(types) + part(stmt) + part(portal) + rest


lockcall_seeds = [("case-%03d" % i, lockcall(c, i)) for i, c in enumerate(lockcall_cases.CASES)]

# ---- scram -------------------------------------------------------------------------------

NONCE = b"fyko+d2lbbFgONRv9qkxdawL"
VERIFIER = (b"SCRAM-SHA-256$4096:4sJfy+OqkRS6wqPM7TS+FQ==$XMWc8YalQf0Ux0qjjsWKXdKjZ8AzvYXxIvbSYZNB47I="
            b":UJiUA8LJscRntNkW7FUBl3zwAks8di/hK4C/qZNJ+0E=")
PROOF = b",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
scram_seeds = [
    ("server_plain", bytes([0]) + part(b"") + part(b"n,,n=,r=" + NONCE) + b"c=biws,r=" + NONCE * 2 + PROOF),
    ("server_prefix_verifier", bytes([8]) + part(VERIFIER) + part(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO") + PROOF),
    ("server_y_ext", bytes([12]) + part(b"x") + part(b"y,,n=,r=abc,x=ext") + b",e=1" + PROOF),
    ("server_authzid", bytes([0]) + part(b"") + part(b"n,a=bob,n=,r=abc")),
    ("server_cbind", bytes([0]) + part(b"") + part(b"p=tls-server-end-point,,n=,r=abc")),
    ("server_extension", bytes([0]) + part(b"") + part(b"n,,m=ext,n=,r=abc")),
    ("server_mock", bytes([4]) + part(b"SCRAM-SHA-256$1:AA==$AA==:AA==") + part(b"n,,n=x,r=\x7f") + b"c=biws"),
    ("client_plain", bytes([1]) + part(b"r=" + NONCE + b"3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096")
     + b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ="),
    ("client_prefix", bytes([9]) + part(b"3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096")
     + b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
    ("client_password", bytes([13]) + part(b"xyz,s=c2FsdA==,i=3") + b"e=invalid-proof"),
    ("round_trip", bytes([2]) + bytes(16)),
    ("round_trip_password", bytes([6]) + bytes(16)),
    ("round_trip_tamper", bytes([3, 2, 5, ord("x"), 0, 0, 0, 3, 9, ord(","), 4, 0, 0, 0, 4]) + b"junk"),
]

# ---- userlist ----------------------------------------------------------------------------

with open(os.path.join(ROOT, "conf", "userlist.example.txt"), "rb") as f:
    example_userlist = f.read()
userlist_seeds = [
    ("example", example_userlist),
    ("kinds", b'; comment\n# comment\n\n   \t \n"alice" "secret"\n\t"bob"\t"md54d45974e13472b5a0be3533de4666414"  \r\n'
     b'"carol" "' + VERIFIER + b'"\r\n"we""ird name"   "pa ss""word;#"\n"md5only" "md5ABCDEF"\n"last" "no newline"'),
    ("errors", b'"a" "b" junk\n'),
    ("duplicate", b'"a" "1"\n"b" "2"\n"a" "3"\n'),
    ("unterminated", b'"a" "b\n'),
    ("bad_verifier", b'"a" "SCRAM-SHA-256$0:AA==$AA==:AA=="\n'),
    ("nul", b'"a" "b\0c"\n'),
    ("donated", b'"alice" "secret"\n'),
]

# ---- config ------------------------------------------------------------------------------

config_seeds = []
for name in ("pgwarden.ini", "minimal.ini"):
    with open(os.path.join(ROOT, "conf", name), "rb") as f:
        config_seeds.append((name.replace(".ini", ""), f.read()))
config_seeds += [
    ("databases", b"[pgwarden]\npool_mode = transaction\n[databases]\n"
     b"app = host=db1 port=5433 dbname=app_prod user='it''s' password='a\\'b c' pool_size=5 pool_mode=session\n"
     b"* = host=/var/run/postgresql\n"),
    ("quoted", b'\xef\xbb\xbf[pgwarden]\nadmin_token = "a \\"quoted\\" \\\\ token"\nserver_reset_query =\n'),
    ("tls", b"[pgwarden]\nclient_tls_mode = require\nclient_tls_cert_file = c.pem\nclient_tls_key_file = /k.pem\n"
     b"server_tls_mode = verify-full\nserver_tls_ca_file = ca.pem\n"),
    ("locks", b"[locks]\nlock_timeout_ms = 100\ndeadlock_timeout_ms = 5\nmax_locks = 0\nstate_file = tokens\n"),
    ("errors", b"[pgwarden]\nlisten_port = 70000\n"),
    ("duplicate", b"[pgwarden]\nlog_level = debug\nlog_level = info\n"),
    ("same_port", b"[pgwarden]\nlisten_port = 6480\n"),
    ("retry", b"[retry]\nretryable_sqlstates = 40001, 40P01, 08, 55P03\nmax_attempts = 3\nbase_ms = 1\n"
     b"cap_ms = 50\nmultiplier = 1.5\njitter = decorrelated\nbudget_pct = 0\nbudget_window_ms = 100\n"
     b"budget_min_retries = 0\nretry_buffer_bytes = 0\nretry_checkpoint_bytes = 64\n"),
    ("retry_errors", b"[retry]\nretryable_sqlstates = 4000, 40p01, ,\nbase_ms = 10\ncap_ms = 5\n"
     b"multiplier = 1e400\njitter = some\n"),
    ("breaker", b"[breaker]\nfailure_rate_pct = 100\nmin_requests = 1\nwindow_ms = 100\n"
     b"consecutive_failures = 0\nopen_ms = 5000\nopen_max_ms = 4000\nprobe_timeout_ms = 1\n"),
    ("chaos", b"[chaos]\nslow = inject=latency latency_ms=250 lock_key=ledger\n"
     b"lost = inject=disconnect when=commit every_n=10 max_count=5 database=orders\n"
     b"err = inject=error sqlstate=40001 message='it''s \\'injected\\'' probability=0.3 seed=42 "
     b"application_name=billing user=u\nslow = inject=latency\n[databases]\n* = host=h\n"),
]

# ---- prepared ----------------------------------------------------------------------------

prepared_seeds = [
    ("parse", b"s1\0SELECT $1, $2\0" + u16(2) + u32(25) + u32(23)),
    ("parse_unnamed", b"\0BEGIN\0" + u16(0)),
    ("bind", b"p\0s1\0" + bind_rest([0, 1], [b"abc", None], [1])),
    ("bind_unnamed", b"\0\0" + bind_rest([], [], [])),
    ("bind_negative", b"\0s\0" + u16(0x8000) + u16(0) + u16(0)),
    ("describe", b"Ss1\0"),
    ("close_portal", b"P\0"),
    ("error", b"SERROR\0VERROR\0C42P01\0Mrelation \"t\" does not exist\0P15\0\0"),
]

# ---- tokenstate --------------------------------------------------------------------------


def crc32c(data):
    crc = 0xFFFFFFFF
    for x in data:
        crc ^= x
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def token_line(epoch):
    head = b"pgwarden token state v1 epoch=%d" % epoch
    return head + b" crc32c=%08x\n" % crc32c(head)


tokenstate_seeds = [("epoch-%d" % e, token_line(e)) for e in (0, 1, 42, (1 << 23) - 1)]
tokenstate_seeds += [
    ("too_big", token_line(1 << 23)),
    ("flipped", token_line(7).replace(b"=7", b"=8")),
    ("no_newline", token_line(3)[:-1]),
    ("empty", b""),
]

# ---- admin -------------------------------------------------------------------------------


def admin(flags, n, value, db, user, app):
    return bytes([flags]) + u32(n) + struct.pack(">d", value) + part(b(db)) + part(b(user)) + b(app)


admin_seeds = [
    ("ascii", admin(0, 1, 0.25, "app", "alice", "psql")),
    ("same", admin(1, 7, 1.0, "x", "x", "")),
    ("escapes", admin(2, 3, float("nan"), 'a"b\\c\nd', "u\\\"", "app\nname\t\"q\"")),
    ("utf8", admin(3, 9, float("inf"), "d\u00e9j\u00e0", "\U0001F600", "\u00fc")),
    ("invalid_utf8", admin(0, 1, -1.5, b"\xff\xfe", b"\xc3", b"\xed\xa0\x80\xf4\x90\x80\x80")),
    ("long", admin(1, 2, 1e300, "\u00e9" * 200, "u" * 300, "a" * 1000)),
]

# ---- chaos -------------------------------------------------------------------------------

ADD_JSON, ADD_CONFIG, DECIDE, REMOVE, CLEAR, CONFIG = 0, 1, 2, 4, 5, 6


def decide(when, db=b"", user=b"", app=b"", null=0, mask=0xFF):
    """A decision: when 0 statement, 1 commit, 2 connect; null: bits 8/16/32 pass NULL for
    database / user / application_name, 64 no holds_lock."""
    return bytes([DECIDE, when | null, mask]) + part(b(db)) + part(b(user)) + part(b(app))


def add_json(j):
    return bytes([ADD_JSON]) + part(b(j))


def add_config(name, params):
    return bytes([ADD_CONFIG]) + part(b(name)) + part(b(params))


chaos_seeds = [
    ("json_error", add_json('{"inject":"error","sqlstate":"40001","probability":0.3,"seed":42,'
                            '"application_name":"billing"}')
     + decide(0, "app", "u", "billing") * 4 + decide(1, "app", "u", "billing")),
    ("json_every_n", add_json('{"inject":"disconnect","when":"commit","every_n":2,"max_count":3,'
                              '"database":"orders"}')
     + decide(1, "orders") * 8 + decide(1, "other")),
    ("json_latency_lock", add_json('{"inject":"latency","latency_ms":250,"lock_key":"ledger"}')
     + add_json('{"inject":"error","sqlstate":"57P01","message":"bye \\u00e9"}')
     + decide(0, mask=0) + decide(0, mask=0xFF) + decide(0, null=64)),
    ("json_refused", add_json('{"inject":"error"}') + add_json('{"inject":"latency","latency_ms":-1}')
     + add_json('{"inject":"error","sqlstate":"00000"}') + add_json('[1]')
     + add_json('{"inject":"error","sqlstate":"40001","probability":1e-320}')
     + add_json('{"inject":"disconnect","when":"connect","user":"x","user":"y"}')),
    ("config_params", add_config("slow", "inject=latency latency_ms=250 lock_key=ledger")
     + add_config("lost", "inject=disconnect when=commit every_n=10 max_count=5 database=orders")
     + add_config("err", "inject=error sqlstate=40001 message='it''s \\'quoted\\'' probability=0.3 "
                  "seed=42 application_name=billing user=u")
     + add_config("lost", "inject=disconnect") + decide(1, "orders", null=32) * 3),
    ("config_refused", add_config("a", "inject=error sqlstate=4000") + add_config("", "inject=disconnect")
     + add_config("b", "inject=latency latency_ms=-0") + add_config("c", "inject='error")
     + add_config("d", "probability=1e-320 inject=disconnect")),
    ("remove_clear", add_json('{"inject":"disconnect"}') * 3 + bytes([REMOVE, 2, REMOVE, 2, REMOVE, 9])
     + decide(0) + bytes([CLEAR]) + add_json('{"inject":"disconnect"}') + decide(2)),
    ("config_file", add_json('{"inject":"disconnect","when":"connect"}')
     + bytes([CONFIG]) + part(b"a = inject=error sqlstate=40P01 every_n=2\nb = inject=latency latency_ms=1\n")
     + decide(0) * 2
     + bytes([CONFIG]) + part(b"a = inject=error sqlstate=40P01 every_n=2\nc = \"inject=disconnect\"\n")
     + decide(0) * 2 + bytes([CONFIG]) + part(b"a = inject=error\n")),
]


def main():
    write("startup", startup_seeds)
    write("relay", relay_seeds)
    write("sqlscan", [("sql-%03d" % i, s) for i, s in enumerate(sql_seeds)])
    write("lockcall", lockcall_seeds)
    write("scram", scram_seeds)
    write("userlist", userlist_seeds)
    write("config", config_seeds)
    write("prepared", prepared_seeds)
    write("tokenstate", tokenstate_seeds)
    write("admin", admin_seeds)
    write("chaos", chaos_seeds)


if __name__ == "__main__":
    main()
