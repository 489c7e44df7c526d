# one-off: the fuzz test with many more examples and no derandomize (not committed)
from __future__ import annotations
import json, pytest
from tests.test_serve_cluster import cluster, _bounded  # noqa: F401

pytestmark = pytest.mark.serve

@pytest.mark.timeout(3000)
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"])
def test_fuzz_many(cluster, path):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    base = str(cluster.base_url).rstrip("/")
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    op = schema[path]["POST"]
    failures = []
    for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
        @settings(max_examples=250, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=mode))
        def run(case):
            body = _bounded(case.body) if not isinstance(case.body, type(schemathesis.core.NOT_SET)) else None
            try:
                raw = json.dumps(body).encode() if body is not None else b""
            except (TypeError, ValueError):
                return
            r = cluster.post(path, content=raw, headers={"content-type": "application/json"})
            if r.status_code >= 500:
                failures.append((mode.value, r.status_code, raw.decode(), r.text))
                with open("/tmp/fuzz/failures.jsonl", "a") as f:
                    f.write(json.dumps({"path": path, "mode": mode.value, "status": r.status_code, "body": raw.decode(), "answer": r.text}) + "\n")
        run()
    assert not failures, len(failures)
