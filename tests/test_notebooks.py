"""The notebooks in notebooks/.

Default run (cheap, reads JSON only): every notebook is committed without outputs, has an install
cell that skips installing when bert_jax imports, and a papermill-style `parameters` cell.

`-m notebooks` (also marked slow, so the default `-m "not slow"` run skips them): each notebook is
executed end to end with nbclient in a kernel on this interpreter (a kernelspec written to a temp
dir, so no `ipykernel install` is needed), with tiny parameters injected after its `parameters`
cell as papermill does. Any cell error fails the test; then a last cell appended here reports the
notebook's own results as JSON, which are checked against references (PyTorch logits, the
single-device step, the majority-class baseline, ...).
"""

import glob
import importlib.util
import json
import os
import time

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(ROOT, "notebooks")
NOTEBOOKS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb")))
EXPECTED = ["01_quickstart.ipynb", "02_finetune_own_csv.ipynb", "03_pretrain_from_scratch.ipynb",
            "04_sharding_explained.ipynb"]
CELL_TIMEOUT_S = 300
REPORT_MARKER = "NOTEBOOK_REPORT "


def _read(name):
    return nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)


def _parameters_index(nb) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


# --------------------------------------------------------------------------------- committed form
def test_every_notebook_is_here():
    assert NOTEBOOKS == EXPECTED


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs_with_install_and_parameters_cells(name):
    nb = _read(name)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    dirty = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
    assert not dirty, f"{name}: code cells {dirty} have outputs; run `python notebooks/strip_outputs.py`"
    assert 'find_spec("bert_jax")' in code[0].source, f"{name}: the first code cell must be the install cell"
    params = nb.cells[_parameters_index(nb)]
    assert params.cell_type == "code"
    compile(params.source, "parameters", "exec")  # plain assignments, no shell magics


def _load_strip_outputs():
    spec = importlib.util.spec_from_file_location("strip_outputs", os.path.join(NOTEBOOK_DIR, "strip_outputs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_strip_outputs_removes_outputs_and_counts(tmp_path):
    strip_outputs = _load_strip_outputs()
    nb = _read(EXPECTED[0])
    index = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    cell = nb.cells[index]
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
    cell.execution_count = 3
    cell.metadata["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00"}
    path = str(tmp_path / "dirty.ipynb")
    nbformat.write(nb, path)

    assert strip_outputs.main(["--check", path]) == 1
    assert strip_outputs.main([path]) == 0
    assert strip_outputs.main(["--check", path]) == 0
    cleaned = nbformat.read(path, as_version=4)
    assert all(not c.outputs and c.execution_count is None for c in cleaned.cells if c.cell_type == "code")
    assert "execution" not in cleaned.cells[index].metadata
    assert [c.source for c in cleaned.cells] == [c.source for c in nb.cells]


# ------------------------------------------------------------------------------------- execution
def _kernel_manager(tmp_path):
    """An async kernel manager whose kernel runs on this interpreter (the repo's venv in CI)."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    kernels = tmp_path / "kernels"
    write_kernel_spec(kernels / "bert_jax_test")  # argv: [sys.executable, "-m", "ipykernel_launcher", ...]
    specs = KernelSpecManager(kernel_dirs=[str(kernels)], ensure_native_kernel=False)
    return AsyncKernelManager(kernel_name="bert_jax_test", kernel_spec_manager=specs)


def execute(name, parameters: dict, report_expression: str, tmp_path):
    """Runs notebook `name` with `parameters` injected; returns (report dict, executed notebook, seconds).

    `report_expression` is evaluated in the notebook's namespace after its last cell and must give a
    JSON-serialisable dict."""
    from nbclient import NotebookClient

    nb = _read(name)
    injected = nbformat.v4.new_code_cell("# Parameters (injected by tests/test_notebooks.py)\n" + "\n".join(
        f"{key} = {value!r}" for key, value in parameters.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(_parameters_index(nb) + 1, injected)
    nb.cells.append(nbformat.v4.new_code_cell(
        f"import json as _json\nprint({REPORT_MARKER!r} + _json.dumps({report_expression}))"))
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"

    env = dict(os.environ, PYTHONHASHSEED="0")
    # The 8-device flag is the sharding notebook's own business: the others run on the default devices.
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if not f.startswith("--xla_force_host_platform_device_count"))
    client = NotebookClient(nb, km=_kernel_manager(tmp_path), timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": NOTEBOOK_DIR}})
    start = time.perf_counter()
    client.execute(env=env)  # raises CellExecutionError naming the cell on any error
    seconds = time.perf_counter() - start
    print(f"{name}: executed in {seconds:.1f} s")
    text = "".join(o.text for o in nb.cells[-1].outputs if o.output_type == "stream")
    line = next(l for l in text.splitlines() if l.startswith(REPORT_MARKER))
    return json.loads(line[len(REPORT_MARKER):]), nb, seconds


def _images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.slow
@pytest.mark.notebooks
def test_quickstart(tmp_path):
    report, nb, _ = execute("01_quickstart.ipynb", dict(WORK_DIR=str(tmp_path / "work"), TOP_K=4), """{
        "guesses": [[t for t, _ in g] for _, g in fill_mask_results],
        "probabilities": [[p for _, p in g] for _, g in fill_mask_results],
        "vocab": tokenizer.vocab_size, "pytorch_max_abs_diff": pytorch_max_abs_diff,
        "similarity": similarity.tolist(), "attention_shape": list(attentions.shape),
        "attention_row_sums": attentions.sum(-1).tolist(), "tokens": len(tokens),
        "heads": config.num_attention_heads}""", tmp_path)
    assert len(report["guesses"]) == 2 and all(len(g) == 4 for g in report["guesses"])
    assert all(isinstance(t, str) and t and t != "[UNK]" for g in report["guesses"] for t in g)
    for probs in report["probabilities"]:  # softmax over the vocab: top-k descending, below 1 in total
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    # transformers' PyTorch BertForMaskedLM on the same checkpoint and batch (fp32).
    assert report["pytorch_max_abs_diff"] is not None and report["pytorch_max_abs_diff"] < 1e-5
    sim = report["similarity"]
    n = len(sim)
    assert all(abs(sim[i][i] - 1) < 1e-5 and all(abs(sim[i][j] - sim[j][i]) < 1e-6 for j in range(n))
               for i in range(n))
    assert report["attention_shape"] == [report["heads"], report["tokens"], report["tokens"]]
    assert all(abs(s - 1) < 1e-5 for head in report["attention_row_sums"] for s in head)
    assert _images(nb) == 2  # similarity matrix, attention heads


@pytest.mark.slow
@pytest.mark.notebooks
def test_finetune_own_csv(tmp_path):
    report, nb, _ = execute("02_finetune_own_csv.ipynb", dict(WORK_DIR=str(tmp_path / "work"), EPOCHS=3), """{
        "accuracy": validation_accuracy, "majority": majority_baseline, "matrix": matrix.tolist(),
        "validation_rows": len(gold), "labels": label_names, "eval_logs": len(eval_log),
        "train_logs": len(train_log), "best": result["best"]["validation"]["accuracy"]}""", tmp_path)
    assert report["labels"] == ["negative", "neutral", "positive"]
    assert report["validation_rows"] == 120  # 20% of the 600 generated rows
    matrix = report["matrix"]
    assert sum(map(sum, matrix)) == report["validation_rows"]
    assert abs(sum(matrix[i][i] for i in range(3)) / report["validation_rows"] - report["accuracy"]) < 1e-9
    # The keyword task is learnable: well above always answering the most frequent class (0.49).
    assert report["accuracy"] > report["majority"] + 0.2, report
    assert report["best"] > report["majority"] + 0.2, report
    assert report["eval_logs"] == 3  # one evaluation per epoch
    assert report["train_logs"] >= 10
    assert _images(nb) == 2  # training curves, confusion matrix


@pytest.mark.slow
@pytest.mark.notebooks
def test_pretrain_from_scratch(tmp_path):
    steps = 40
    report, nb, _ = execute("03_pretrain_from_scratch.ipynb", dict(
        WORK_DIR=str(tmp_path / "work"), TOTAL_STEPS=steps, BATCH_SIZE=16, VOCAB_SIZE=2000, LOG_EVERY=10,
        EVAL_EVERY=20, EVAL_BATCHES=2), """{
        "step": result["step"], "train_steps": [r["step"] for r in train_log],
        "train_loss": [r["loss"] for r in train_log], "eval_steps": [r["step"] for r in eval_log],
        "eval_accuracy": [r["mlm_accuracy"] for r in eval_log], "fill_mask": fill_mask_predictions}""", tmp_path)
    assert report["step"] == steps
    assert report["train_steps"] == [10, 20, 30, 40] and report["eval_steps"] == [20, 40]
    assert report["train_loss"][-1] < report["train_loss"][0] - 0.3, report["train_loss"]  # ln(2000) = 7.6 at init
    assert all(0 <= a <= 1 for a in report["eval_accuracy"])
    assert len(report["fill_mask"]) == 2 and all(len(p) == 5 and all(isinstance(t, str) for t in p)
                                                 for p in report["fill_mask"])
    assert _images(nb) == 1


@pytest.mark.slow
@pytest.mark.notebooks
def test_sharding_explained(tmp_path):
    report, nb, _ = execute("04_sharding_explained.ipynb", dict(HIDDEN=32, BATCH=8, SEQ=16), """{
        "devices": len(jax.devices()), "mesh": dict(mesh.shape), "loss_difference": loss_difference,
        "param_difference": param_difference, "loss": float(single_metrics["loss"]),
        "ffn_spec": [str(a) for a in ffn_kernel.sharding.spec],
        "ffn_shard": list(ffn_kernel.sharding.shard_shape(ffn_kernel.shape)),
        "batch_shard": list(batch["input_ids"].sharding.shard_shape(batch["input_ids"].shape)),
        "all_gathers": hlo.count("all-gather")}""", tmp_path)
    assert report["devices"] == 8 and report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    assert report["ffn_spec"] == ["fsdp", "tensor"] and report["ffn_shard"] == [16, 64]  # [32, 128] / (2, 2)
    assert report["batch_shard"] == [2, 16]  # 8 rows over data x fsdp = 4
    assert report["all_gathers"] > 0  # fsdp-sharded weights are gathered before use
    assert report["loss"] > 0
    # The same step on one device: loss and updated params agree up to fp32 reduction order.
    assert report["loss_difference"] <= 1e-5 and report["param_difference"] <= 1e-5, report
