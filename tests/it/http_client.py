"""The HTTP admin API of a corekv node, with urllib as the client and prometheus-client's parser
for /metrics. Run by tests/it/http.rs: python3 http_client.py PORT. Exits non-zero on any failed
check (an AssertionError saying which)."""
import base64
import json
import sys
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

# The checks are asserts: under -O (or PYTHONOPTIMIZE) they would all pass unseen.
if not __debug__:
    sys.exit("run without -O: every check here is an assert")

base = f"http://127.0.0.1:{sys.argv[1]}"


def call(method, path, body=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def call_json(method, path, body=None, raw=None):
    status, text = call(method, path, body, raw)
    return status, json.loads(text)


# Writes, reads, TTLs, deletes.
s, j = call_json("POST", "/api/set", {"key": "greeting", "value": "hello", "ttl": 100})
assert (s, j["success"]) == (200, True) and j["version"] > 0, (s, j)
s, j = call_json("GET", "/api/get/greeting")
assert s == 200 and j["value"] == "hello" and j["encoding"] == "utf8" and 90 <= j["ttl"] <= 100, j
s, j = call_json("GET", "/api/get/absent")
assert s == 404 and j["success"] is False, (s, j)
# A key with characters that need escaping in a path.
s, j = call_json("POST", "/api/set", {"key": "a b/c", "value": "x"})
assert s == 200, (s, j)
s, j = call_json("GET", "/api/get/a%20b%2Fc")
assert s == 200 and j["key"] == "a b/c" and j["value"] == "x", (s, j)
# Binary values travel as base64.
blob = bytes(range(256))
s, j = call_json("POST", "/api/set", {"key": "Ymlu", "value": base64.b64encode(blob).decode(), "encoding": "base64"})
assert s == 200, (s, j)
s, j = call_json("GET", "/api/get/bin")
assert s == 200 and j["encoding"] == "base64" and base64.b64decode(j["value"]) == blob, j
# Compare-and-set.
s, j = call_json("POST", "/api/compare_and_set", {"key": "greeting", "old_value": "nope", "new_value": "x"})
assert s == 200 and j["success"] is False, (s, j)
s, j = call_json("POST", "/api/compare_and_set", {"key": "greeting", "old_value": "hello", "new_value": "bye"})
assert s == 200 and j["success"] is True, (s, j)
assert call_json("GET", "/api/get/greeting")[1]["value"] == "bye"
s, j = call_json("DELETE", "/api/delete/greeting")
assert (s, j["success"]) == (200, True), (s, j)
s, j = call_json("DELETE", "/api/delete/greeting")
assert s == 404, (s, j)

# Bad input: clear 4xx answers, and the node keeps serving.
for raw, want in [(b"{bad json", "malformed JSON"), (b"[1, 2]", "JSON object")]:
    s, j = call_json("POST", "/api/set", raw=raw)
    assert s == 400 and want in j["error"], (s, j)
s, j = call_json("POST", "/api/set", {"key": "k"})
assert s == 400 and "'value'" in j["error"], (s, j)
s, j = call_json("POST", "/api/set", {"key": "k", "value": "v", "ttl": -1})
assert s == 400, (s, j)
s, j = call_json("POST", "/api/set", {"key": "k", "value": "%%%", "encoding": "base64"})
assert s == 400 and "base64" in j["error"], (s, j)
assert call("GET", "/api/nope")[0] == 404
assert call("PUT", "/api/set", {})[0] == 405

# Node, cluster and health routes.
s, j = call_json("GET", "/api/nodes/status")
assert s == 200 and j["cores"] == 2 and j["health"] == "ok" and j["keys"] >= 3, j
assert j["disk"]["free_bytes"] > 0 and j["memory"]["resident_bytes"] > 0, j
s, j = call_json("GET", "/api/replication/status")
assert s == 200 and j["replication"] == "off", j
s, j = call_json("POST", "/api/nodes/add", {"id": "n2", "addr": "127.0.0.1:1"})
assert s == 409 and "without a cluster" in j["error"], (s, j)
s, j = call_json("DELETE", "/api/nodes/remove/n2")
assert s == 409, (s, j)
assert call_json("GET", "/healthz") == (200, {"status": "ok"})
assert call_json("GET", "/readyz")[0] == 200

# JSON metrics: the native traffic of the test (50 sets, 50 gets) and this script's.
s, j = call_json("GET", "/api/metrics")
ops = j["operations"]
assert s == 200 and ops["get"]["count"] >= 50 and ops["set"]["count"] >= 50, ops
assert ops["get"]["p99_us"] > 0 and ops["get"]["miss"] >= 1, ops["get"]
assert j["log"]["fsyncs"] > 0 and j["bytes_in"] > 0 and j["bytes_out"] > 0, j

# Prometheus text, through a real parser.
s, text = call("GET", "/metrics")
assert s == 200, s
families = {f.name: f for f in text_string_to_metric_families(text)}
for name in ["corekv_requests", "corekv_request_duration_seconds", "corekv_keys",
             "corekv_log_fsync_duration_seconds", "corekv_received_bytes", "corekv_disk_free_bytes"]:
    assert name in families, (name, sorted(families))
requests = {(x.labels["op"], x.labels["result"]): x.value for x in families["corekv_requests"].samples
            if x.name == "corekv_requests_total"}
assert requests[("set", "ok")] >= 50 and requests[("get", "miss")] >= 1, requests
quantiles = [x for x in families["corekv_request_duration_seconds"].samples
             if x.labels.get("op") == "get" and "quantile" in x.labels]
assert len(quantiles) == 4 and all(0 < x.value < 10 for x in quantiles), quantiles
keys = [x.value for x in families["corekv_keys"].samples]
assert keys and keys[0] >= 50, keys

print("http: all checks passed")
