"""redis-py against a corekv node's Redis port: the connection handshake, every supported
command with its edge cases, and pipelining. Run by tests/it/resp.rs: python3 resp_client.py PORT.
Exits non-zero (an AssertionError with the failing check) on any difference from Redis."""
import sys

import redis

# The checks are asserts: under -O (or PYTHONOPTIMIZE) they would all pass unseen.
if not __debug__:
    sys.exit("run without -O: every check here is an assert")

port = int(sys.argv[1])
r = redis.Redis(host="127.0.0.1", port=port, decode_responses=True, client_name="py-test")

assert r.ping() is True
assert r.echo("hi") == "hi"
assert r.client_getname() == "py-test"
assert isinstance(r.client_id(), int)
assert r.info("server")["redis_version"]
assert r.execute_command("COMMAND COUNT") > 30
# Key positions, as cluster-aware clients read them (first, last, step), Redis's values.
info = r.execute_command("COMMAND", "INFO", "get", "mset", "msetnx", "del", "scan", "ping")
spec = {n: (c["first_key_pos"], c["last_key_pos"], c["step_count"]) for n, c in info.items()}
assert spec == {"get": (1, 1, 1), "mset": (1, -1, 2), "msetnx": (1, -1, 2), "del": (1, -1, 1),
                "scan": (0, 0, 0), "ping": (0, 0, 0)}, spec

# SET and its options.
assert r.set("k", "v") is True
assert r.set("k", "w", nx=True) is None
assert r.set("k", "w", xx=True, get=True) == "v"
assert r.get("k") == "w"
assert r.set("k", "x", ex=100) is True and 99 <= r.ttl("k") <= 100
assert r.set("k", "y", keepttl=True) is True and r.ttl("k") > 0
assert r.set("k", "z", px=50_000) is True and 0 < r.pttl("k") <= 50_000
assert r.set("k", "z") is True and r.ttl("k") == -1
assert r.setnx("k", "no") is False and r.setnx("new", "yes") is True
assert r.set("tmp", "t", ex=100) is True and r.ttl("tmp") > 0
assert r.execute_command("PSETEX", "tmp2", 100_000, "t") is True and r.pttl("tmp2") > 0
assert r.getset("k", "g") == "z"
assert r.getdel("k") == "g" and r.get("k") is None
assert r.getex("tmp", persist=True) == "t" and r.ttl("tmp") == -1
assert r.getex("tmp", ex=200) == "t" and r.ttl("tmp") > 100

# Deleting and counting.
r.mset({"a": "1", "b": "2", "c": "3"})
assert r.mget("a", "b", "zz") == ["1", "2", None]
assert r.exists("a", "b", "zz") == 2
assert r.delete("a", "b", "zz") == 2
assert r.unlink("c") == 1
assert r.type("new") == "string" and r.type("zz") == "none"

# SCAN across every core: each key once, MATCH and COUNT honoured.
r.mset({f"scan:{i}": "v" for i in range(120)})
found = list(r.scan_iter(match="scan:1*", count=7))
assert sorted(found) == sorted(f"scan:{i}" for i in range(120) if str(i).startswith("1")), found
cursor, page = r.scan(0, match="scan:*", count=5)
assert cursor != 0 and 0 < len(page) <= 5
assert r.delete(*[f"scan:{i}" for i in range(120)]) == 120

# Expiry.
assert r.ttl("zz") == -2 and r.pttl("zz") == -2
assert r.expire("zz", 10) is False
r.set("e", "1")
assert r.expire("e", 100, nx=True) is True
assert r.expire("e", 50, gt=True) is False
assert r.expire("e", 500, xx=True) is True and r.ttl("e") > 400
assert r.pexpire("e", 300_000, lt=True) is True and r.ttl("e") <= 300
assert r.persist("e") is True and r.persist("e") is False
assert r.expireat("e", 1) is True and r.get("e") is None
assert r.pexpireat("new", 1) is True and r.exists("new") == 0

# Numbers and strings.
assert r.incr("n") == 1 and r.incrby("n", 41) == 42 and r.decr("n") == 41
assert r.decrby("n", 40) == 1
assert r.incrbyfloat("f", 0.5) == 0.5 and r.incrbyfloat("f", 2) == 2.5
r.set("s", "abc")
try:
    r.incr("s")
    raise AssertionError("INCR on a non-integer succeeded")
except redis.ResponseError as e:
    assert "not an integer" in str(e), e
assert r.append("s", "def") == 6 and r.strlen("s") == 6 and r.strlen("zz") == 0
assert r.getrange("s", 1, -2) == "bcde"
assert r.setrange("s", 8, "!") == 9 and r.get("s") == "abcdef\x00\x00!"
try:
    r.execute_command("GET")
    raise AssertionError("GET without a key succeeded")
except redis.ResponseError as e:
    assert "wrong number of arguments" in str(e), e

# Binary values survive.
rb = redis.Redis(host="127.0.0.1", port=port)
blob = bytes(range(256)) * 4
assert rb.set(b"bin\x00key", blob) is True and rb.get(b"bin\x00key") == blob

# Pipelining: many commands, one round trip, replies in order.
p = r.pipeline(transaction=False)
for i in range(1000):
    p.set(f"p{i}", i)
    p.incr(f"p{i}")
results = p.execute()
assert results == [x for i in range(1000) for x in (True, i + 1)], results[:10]
assert r.dbsize() == len([k for k in ["tmp", "tmp2", "n", "f", "s"]]) + 1 + 1000

# The same client library on RESP2 (redis-py 8 speaks RESP3 by default, via HELLO 3).
r2 = redis.Redis(host="127.0.0.1", port=port, protocol=2, decode_responses=True)
assert r2.ping() is True and r2.get("zz") is None and r2.mget("zz", "s") == [None, "abcdef\x00\x00!"]

print("redis-py: all checks passed")
