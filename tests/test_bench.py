"""The benchmark runs end to end (python -m bench --smoke: every step, the shortest runs) and writes the keys
README's table comes from."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, require_debian_package


def test_quick_benchmark_runs(tmp_path):
    require_debian_package(Path("/usr/bin/wrk"), "wrk")
    out = tmp_path / "latest.json"
    run = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    engines = result["ceiling"]["engines"]
    assert engines["litert fp32"]["allowed"] and engines["openvino fp32"]["allowed"]
    assert result["ceiling"]["default_img_s"] > 0 and "cat.jpeg" in result["decode"]
    assert any(name.endswith("_4032x3024.jpeg") for name in result["decode"])  # a camera-sized JPEG
    for server in ("service", "litserve", "naive"):
        for level in ("c1", "c16"):  # (and c64, but not in a smoke run)
            run_ = result[server][level]
            assert run_["requests"] > 0 and run_["non_2xx"] == 0 and run_["socket_errors"] == 0, (server, run_)
            assert 0 < run_["client_cpu_share"] < 0.5
        assert result[server]["pss_mb"] > 0 and result[server]["ready_rss_mb"] > 0 and result[server]["ready_s"] > 0
    for protocol in ("kserve", "tf_serving"):  # the gRPC rows, from the same server
        for level in ("c1", "c16"):
            run_ = result["grpc"][protocol][level]
            assert run_["requests"] > 0 and run_["failed"] == 0 and 0 < run_["client_cpu_share"] < 0.5, run_
            assert run_["server_core_ms"] > 0 and {"event loop", "model"} <= set(run_["server_core_ms_by_thread"])
    assert "| gRPC KServe v2 ModelInfer | 16 |" in run.stdout and "grpc_kserve_c16_over_rest_c16" in result["targets"]
    assert "grpc_kserve_c16_core_ms_over_rest" in result["targets"]
    # Each engine forced beside auto (a smoke run skips the one auto chose: the default's server is it).
    chosen = next(name for name, e in engines.items() if e["engine"] == result["ceiling"]["default_engine"])
    assert chosen not in result["service_engines"]
    assert set(result["service_engines"]) | {chosen} == {"litert fp32", "openvino fp32"}
    assert all(runs["c16"]["non_2xx"] == 0 for runs in result["service_engines"].values())
    assert "auto_c16_over_best_forced_engine_c16" in result["targets"]
    assert result["memory"]["non_2xx"] == 0 and result["memory"]["requests"] > 0
    assert result["gradio"]["c8"]["img_s"] > 0 and result["gradio_floor"]["c8"]["img_s"] > 0
    assert "c16_over_litserve" in result["targets"] and "| POST /service | 16 |" in run.stdout
    # KServe's ModelServer, in its own environment (bench/peers/kserve.txt), beside our Open Inference door: the
    # same JSON requests, the same top 5 answered.
    v2 = result["kserve"]
    assert "error" not in v2, v2.get("error")
    assert v2["same_top5"] is True
    for server in ("kserve", "ours"):
        for level in ("c1", "c16"):
            assert v2[server][level]["requests"] > 0 and v2[server][level]["non_2xx"] == 0, (server, v2[server])
    assert "v2_c16_over_kserve" in result["targets"] and "| KServe ModelServer (2 workers), same engine |" in run.stdout
    bentoml = result["bentoml"]  # BentoML, in its own environment too: its multipart forms, the same top 5
    assert "error" not in bentoml, bentoml.get("error")
    assert bentoml["same_top5"] is True and "c16_over_bentoml" in result["targets"]
    for level in ("c1", "c16"):
        assert bentoml["bentoml"][level]["requests"] > 0 and bentoml["bentoml"][level]["non_2xx"] == 0, bentoml
    assert 0 < result["explain"]["median_s"] <= result["explain"]["max_s"] and "POST /explain" in run.stdout
    floor = result["floor"]  # the stack's own cost: a model that costs nothing, on an 8×8 JPEG
    assert floor["photo_bytes"] < 1000 and floor["c16"]["non_2xx"] == 0 and floor["c16"]["requests"] > 0
    assert all(floor[level]["server_core_ms"] > 0 for level in ("c1", "c16"))
    # Ours split by thread (their names in the OS): the split adds up to the process's core time a request, give
    # or take the threads that ended and the main process's children; the peers have no such split.
    for runs in (floor, result["service"]):
        split = runs["c16"]["server_core_ms_by_thread"]
        assert {"event loop", "decode", "model"} <= set(split) and all(ms >= 0 for ms in split.values()), split
        assert sum(split.values()) <= runs["c16"]["server_core_ms"] * 1.05 + 0.05, (split, runs["c16"])
    assert "server_core_ms_by_thread" not in result["litserve"]["c16"]
    # The images per model call our batcher formed, from its /metrics; at least one, at most the batch limit.
    assert 1 <= result["service"]["c16"]["mean_batch"] <= 16 and "mean_batch" not in result["litserve"]["c16"]
    assert {f"b{size}" for size in (1, 2, 4, 8, 16)} <= set(engines["litert fp32"])
    assert result["ceiling"]["default_img_s"] == max(engines[chosen][f"b{size}"] for size in (1, 2, 4, 8, 16))
    shares = result["limit"]  # each served precision's share of what decoding plus the model allow
    precision = result["service_reduced"]["precision"]
    assert {label.split(" (")[0] for label in shares} == {"default", f"openvino {precision}"}
    for share in shares.values():  # the limit: the cores spent on nothing but the model and decoding
        limit = result["machine"]["cpus"] * 1000 / (share["model_core_ms"] + share["decode_ms"])
        assert 0 < share["share"] and share["decode_ms"] > 0 and abs(share["limit_img_s"] - limit) <= 0.1 * limit
        assert share["model_core_ms_at_c16_batch"] > 0 and 1 <= share["c16_mean_batch"] <= 16, share
    assert "| floor: null model" in run.stdout and "default_c16_share_of_limit" in result["targets"]
    many = result["many_models"]  # three models by name on one server; figures, not thresholds (a second's runs)
    assert set(many["three"]["by_model"]) == {"a", "b", "c"} and many["non_2xx"] == 0 and many["load_seconds"] > 0
    assert isinstance(many["rss_per_added_model_mb"], int) and "three_models_c16_over_one_c16" in result["targets"]
    assert "| /service c16 over three models by name |" in run.stdout


def test_the_model_cost_at_the_served_batch_is_read_between_the_ceiling_s_batch_sizes():
    from bench.limit import core_ms_at

    ceiling = {"engine": "x", "b1": 500.0, "b2": 1000.0, "b8": 2000.0}  # images/s → 4, 2 and 1 ms on 2 cores
    assert core_ms_at(ceiling, 2, 1) == 4.0 and core_ms_at(ceiling, 2, 1.5) == 3.0
    assert core_ms_at(ceiling, 2, 5) == 1.5 and core_ms_at(ceiling, 2, 8) == 1.0
    assert core_ms_at(ceiling, 2, 0.5) == 4.0 and core_ms_at(ceiling, 2, 16) == 1.0  # held at the ends
