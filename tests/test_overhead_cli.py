import json

from typer.testing import CliRunner

from cluster.cli.main import app


def test_overhead_benchmark_writes_one_row_per_policy_and_size(tmp_path):
    out = tmp_path / "overhead.json"
    result = CliRunner().invoke(app, ["bench", "overhead", "--sizes", "16,64", "--repeats", "10", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert {(r["policy"], r["requests"]) for r in rows} == {
        (p, n) for p in ("fairbatching", "vllm", "vllm-priority", "sarathi") for n in (16, 64)
    }
    assert all(0 < r["median_ms"] <= r["p99_ms"] for r in rows)


def test_overhead_benchmark_rejects_bad_sizes():
    result = CliRunner().invoke(app, ["bench", "overhead", "--sizes", "10,x"])
    assert result.exit_code != 0
    assert "--sizes" in result.output
