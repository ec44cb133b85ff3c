"""The server as one object, built in-process by the factory app.py uses, on a tiny model: no port, no process."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest
from starlette.testclient import TestClient

from classifier.serving.server import Settings, build_server
from conftest import ROOT, encode, solid, write_colour_graph, write_conf


@pytest.fixture(scope="module")
def tiny_settings(tmp_path_factory) -> Settings:
    folder = tmp_path_factory.mktemp("tiny")
    write_colour_graph(folder / "model")
    return Settings(conf=write_conf(folder), flagging_dir=folder / "flagged", train_dir=folder / "trained",
                    allowed_hosts=["testserver"])


def test_importing_app_loads_nothing_binds_nothing_and_prints_nothing():
    code = ("import sys, app; heavy = [m for m in ('tensorflow', 'gradio', 'uvicorn', 'classifier.serving') "
            "if m in sys.modules]; print(heavy)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "[]" and run.stderr == "", (run.stdout, run.stderr)


def test_two_servers_in_one_process_each_serve_their_own_model(tiny_settings, tmp_path):
    """The whole server (guard, routes, page, lifespan with its warm-up) answers through Starlette's TestClient;
    a second one in the same process, on another model, answers with its own."""
    write_colour_graph(tmp_path / "model")
    (tmp_path / "model" / "label_map.txt").write_text("rouge\nvert\nbleu\n")  # COLOURS, in French
    other = replace(tiny_settings, conf=write_conf(tmp_path), flagging_dir=tmp_path / "flagged")
    first, second = build_server(tiny_settings), build_server(other)
    red = encode(solid("red"))
    with TestClient(first.app) as one, TestClient(second.app) as two:
        assert one.get("/readyz").json() == {"status": "ready"}  # the lifespan warmed the model up
        assert one.post("/service", content=red).json()[0][0] == "red"
        assert two.post("/service", content=red).json()[0][0] == "rouge"
        assert one.post("/service", content=b"not a photo").status_code == 400
        assert "Image classifier" in one.get("/").text  # the page, mounted on the same app
        assert one.post("/admin/reload").status_code == 403  # no --auth: admin actions are refused
        assert one.get("/healthz", headers={"Host": "rebind.example"}).status_code == 400
    assert first.core.health.ready and first.core.batcher is not second.core.batcher


def test_the_installed_gradio_has_every_internal_the_server_reaches():
    import gradio

    from classifier.serving import gradio_internals

    lacking = gradio_internals.missing()
    assert not lacking, (f"Gradio {gradio.__version__} lacks {', '.join(lacking)}, which "
                         f"classifier/serving/gradio_internals.py reaches (written against "
                         f"{gradio_internals.WRITTEN_AGAINST}): adapt that module")


def test_no_module_but_gradio_internals_reaches_into_gradio():
    """Gradio's internals (anything imported from gradio's submodules, or the mounted app's attributes) are
    reached from serving/gradio_internals.py alone; the rest uses `gr.` public API."""
    import ast

    reaching = []
    for path in sorted((ROOT / "classifier").rglob("*.py")):
        if path.name == "gradio_internals.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gradio."):
                reaching.append(f"{path.relative_to(ROOT)}: from {node.module}")
    assert reaching == []


def test_the_model_contract_and_the_one_adapter_for_a_uai_class(default_model, photo_bytes):
    """classifier.contract: a RetrainedClassificationModel is served as it is; a UAI class with only execute() is
    wrapped once (UaiClass), its missing facts given their defaults, and served through the same batcher."""
    import asyncio

    from classifier.contract import ServableModel, UaiClass, servable
    from classifier.serving.batching import Batcher, NoProbabilities

    assert isinstance(default_model, ServableModel) and servable(default_model) is default_model

    class OwnCode:  # as a UAI user writes it: conf in, execute() out
        conf = {"http_server": {"exec": {"model_name": "mine"}}}

        def execute(self, data, batch_size):
            return [[["mine", 1.0]] for _ in data]

    wrapped = servable(OwnCode())
    assert isinstance(wrapped, UaiClass) and servable(wrapped) is wrapped
    assert (wrapped.top_k, wrapped.labels, wrapped.version, wrapped.gives_probabilities) == (5, [], None, False)
    batcher = Batcher(OwnCode())

    async def run():
        try:
            answer = await batcher.classify(photo_bytes["cat.jpeg"])
            with pytest.raises(NoProbabilities):
                await batcher.classify(photo_bytes["cat.jpeg"], probabilities=True)
            return answer
        finally:
            await batcher.close()

    assert asyncio.run(run()) == [["mine", 1.0]] and isinstance(batcher.model, UaiClass)


def test_a_classified_photo_is_typed_data_and_uais_shapes_are_made_from_it(tiny_settings):
    """model.classify() gives a Classified (or the ImageError of a bad item) per item; execute() and
    execute_with_verdicts() are UAI's JSON shapes made from it."""
    import classifier
    from classifier.images import ImageError
    from classifier.results import Classified

    model = classifier.load(tiny_settings.conf)
    red, junk = encode(solid("red")), b"not a photo"
    answer, refused = model.classify([red, junk])
    assert isinstance(answer, Classified) and answer.labels[0][0] == "red" and answer.none_of_these is None
    assert isinstance(refused, ImageError)
    assert model.execute([red, junk], 2) == [answer.labels, {"error": str(refused)}]
    assert model.execute_with_verdicts([red], 1) == [{"labels": answer.labels, "none_of_these": None}]


def test_the_openapi_document_names_each_operation_once(tiny_settings):
    """Clients generated from /openapi.json need one operationId per operation (POST and PUT /service included)."""
    with TestClient(build_server(tiny_settings).app) as client:
        paths = client.get("/openapi.json").json()["paths"]
    ids = [operation["operationId"] for methods in paths.values() for operation in methods.values()]
    assert len(ids) == len(set(ids)) and {"post", "put"} <= set(paths["/service"]), ids
