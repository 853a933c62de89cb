"""bert_jax.benchmark: a tiny end-to-end run (no timings asserted) and the FLOP formula."""

import math

import numpy as np
import pytest

from bert_jax import benchmark


def test_tiny_benchmark_runs():
    result = benchmark.run_benchmark(config="tiny", batch=2, seq=32, steps=2, warmup=1, modes=("train", "infer"),
                                     heads=("sparse",), torch=False, matmul_size=256, log=lambda *a: None)
    rows = result["rows"]
    assert {(r["framework"], r["mode"], r["head"]) for r in rows} == {("jax", "train", "sparse"),
                                                                      ("jax", "infer", "sparse")}
    for r in rows:
        assert r["step_s"] > 0 and r["seq_per_s"] > 0 and r["tokens_per_s"] > 0 and r["tflops"] > 0
        assert r["compile_s"] is not None and r["compile_s"] > 0
        assert r["flops_per_token"] > 0 and r["utilization"] is not None and r["utilization"] > 0
        assert len(r["step_times"]) == 2
    train = next(r for r in rows if r["mode"] == "train")
    assert train["loss"] is not None and math.isfinite(train["loss"])
    # The analytic non-embedding count is the one read off the real param tree.
    assert result["meta"]["n_non_embedding"] == benchmark.non_embedding_params(benchmark.make_config("tiny"))
    assert result["meta"]["masked_per_row"] == 5  # round(0.15 * 32)
    assert "| jax | train | sparse |" in result["markdown"]


def test_main_parses_argv_and_prints_the_report(capsys):
    """`main(argv)` (no parsed flags given) parses them itself and runs: what `python -m` runs, minus absl."""
    result = benchmark.main(["--config=tiny", "--batch=2", "--seq=32", "--steps=1", "--warmup=1", "--mode=infer",
                             "--mlm_head=sparse", "--notorch", "--matmul_size=128"])
    assert [(r["framework"], r["mode"], r["head"]) for r in result["rows"]] == [("jax", "infer", "sparse")]
    out = capsys.readouterr().out
    assert "python -m bert_jax.benchmark --config=tiny" in out and "| jax | infer | sparse |" in out


@pytest.mark.parametrize("name, expected_gflop", [("base", 0.67), ("large", 2.04)])
def test_flops_per_token_matches_design_note(name, expected_gflop):
    """Design note: BERT-base ~0.67 GFLOP/token at seq 128 with a dense MLM head, BERT-large ~2.04."""
    cfg = benchmark.make_config(name)
    got = benchmark.flops_per_token(cfg, seq=128, mlm_positions_fraction=1.0, training=True) / 1e9
    assert got == pytest.approx(expected_gflop, rel=0.02)
    # Hand computation: 6 * (12 L H^2 + head H^2) + 12 L H s + 6 H V (biases/LayerNorms are <0.2%).
    L, H, s, V = cfg.num_hidden_layers, cfg.hidden_size, 128, cfg.vocab_size
    by_hand = (6 * (12 * L * H * H + H * H) + 12 * L * H * s + 6 * H * V) / 1e9
    assert got == pytest.approx(by_hand, rel=0.002)
    forward = benchmark.flops_per_token(cfg, 128, 1.0, training=False)
    assert forward == pytest.approx(got * 1e9 / 3)


def test_flops_per_token_counts_sliding_windows_for_mfu():
    """The one count MFU, the benchmark and AOT reports use: ModernBERT's alternation (global every 3rd
    layer from layer 0, window 128 -> 129 keys) at seq 512 has 6 local layers of 9."""
    from bert_jax import flops
    cfg = benchmark.make_config("tiny").replace(num_hidden_layers=9, max_position_embeddings=512)
    local = cfg.replace(local_attention_window=128, global_attn_every_n_layers=3)
    assert [flops.attended_keys(local, layer, 512) for layer in range(4)] == [512, 129, 129, 512]
    for training in (True, False):
        full = flops.flops_per_token(cfg, 512, 0.15, training)
        windowed = flops.flops_per_token(local, 512, 0.15, training)
        assert full - windowed == pytest.approx(12 * cfg.hidden_size * 6 * (512 - 129) / (1 if training else 3))
    assert flops.flops_per_token(local, 64, 0.15) == flops.flops_per_token(cfg, 64, 0.15)  # window > seq


def test_synthetic_batch_is_deterministic_and_consistent():
    a = benchmark.synthetic_batch(3, 64, 0.15, seed=0)
    b = benchmark.synthetic_batch(3, 64, 0.15, seed=0)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    rows = np.arange(3)[:, None]
    pos = a["masked_positions"]
    assert pos.shape == (3, 10) and (pos >= 1).all() and (pos <= 62).all()
    assert (a["input_ids"][rows, pos] == benchmark.MASK_ID).all()
    assert (a["dense_labels"][rows, pos] == a["labels"]).all()
    assert (a["dense_labels"] != -100).sum() == pos.size


def _result_with_load(load):
    return {"rows": [{"background_cores": 0.01}, {"background_cores": load}, {"background_cores": None}]}


def test_output_refused_when_machine_loaded(tmp_path):
    """Figures taken while other processes keep > 0.3 cores busy are not results: no file is written."""
    path = tmp_path / "results.md"
    with pytest.raises(SystemExit, match=r"other processes kept 0\.75 cores busy"):
        benchmark.write_output(str(path), "| jax | train |\n", _result_with_load(0.75))
    assert not path.exists()
    benchmark.write_output(str(path), "| jax | train |\n", _result_with_load(0.75), allow_loaded=True)
    text = path.read_text()
    assert "Contaminated" in text and "0.75 cores" in text and "| jax | train |" in text


def test_output_written_when_quiet(tmp_path):
    path = tmp_path / "results.md"
    benchmark.write_output(str(path), "| jax | infer |\n", _result_with_load(0.2))
    text = path.read_text()
    assert "| jax | infer |" in text and "Contaminated" not in text


def test_command_line_is_absl():
    fv = benchmark.parse_args(["--config=tiny", "--mode=train", "--mlm_head=sparse,dense", "--notorch",
                               "--nodropout", "--batch=4"])
    assert (fv.config, fv.batch, fv.torch, fv.dropout) == ("tiny", 4, False, False)
    assert fv.mlm_head == ["sparse", "dense"] and fv.mode == ["train"]
    with pytest.raises(Exception, match="config"):
        benchmark.parse_args(["--config=huge"])
    with pytest.raises(Exception, match="mlm_head"):
        benchmark.parse_args(["--mlm_head=sparse,wide"])


def test_profile_traces_the_train_step_and_attributes_its_ops(tmp_path):
    """--profile: a trace lands in the directory, and its ops are joined with the compiled HLO: the
    encoder's matmuls are found by their source path, dropout is its own category, the category
    totals add up to the op total, and the markdown/JSON files are written."""
    import json

    from bert_jax.benchmark.report import write_profiles

    result = benchmark.run_benchmark(config="tiny", batch=2, seq=32, steps=1, warmup=1, modes=("train",),
                                     heads=("sparse",), torch=False, matmul_size=0, profile_dir=str(tmp_path),
                                     profile_steps=2, log=lambda *a: None)
    prof = result["profiles"]["train/sparse"]
    assert prof["op_ms"] > 0 and prof["n_ops"] > 20
    assert sum(prof["categories"].values()) == pytest.approx(prof["op_ms"], rel=1e-6)
    assert prof["categories"]["matmul"] > 0 and prof["categories"]["dropout"] > 0
    assert prof["categories"]["optimizer"] > 0
    sources = [r["source"] for r in prof["ops"] if r["category"] == "matmul"]
    assert any("bert/encoder/layer/" in s or "cls/predictions" in s for s in sources), sources
    assert [r["ms"] for r in prof["ops"]] == sorted((r["ms"] for r in prof["ops"]), reverse=True)
    write_profiles(str(tmp_path), result, "python -m bert_jax.benchmark --profile=X")
    text = (tmp_path / "profile.md").read_text()
    assert "| matmul |" in text and "### jax train/sparse" in text
    assert json.loads((tmp_path / "profile.json").read_text())["profiles"]["train/sparse"]["n_ops"] == prof["n_ops"]


def test_parse_hlo_reads_tuple_shapes_and_fused_bodies():
    from bert_jax.benchmark.profile import categorize, parse_hlo

    hlo = """HloModule m

%fused_computation.1 (param_0: f32[4,8], param_1: f32[8,2]) -> f32[4,2] {
  %param_0 = f32[4,8]{1,0} parameter(0)
  %param_1 = f32[8,2]{1,0} parameter(1)
  ROOT %dot.1 = f32[4,2]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_computation.2 (param_0.1: f32[4,2]) -> f32[2,4] {
  %param_0.1 = f32[4,2]{1,0} parameter(0)
  ROOT %transpose.1 = f32[2,4]{0,1} transpose(%param_0.1), dimensions={1,0}
}

ENTRY %main (a: f32[4,8], b: f32[8,2]) -> f32[2,4] {
  %a = f32[4,8]{1,0} parameter(0)
  %b = f32[8,2]{1,0} parameter(1)
  %loop = (s32[], /*index=1*/u32[4]{0}) while(%t), condition=%c, body=%w, metadata={op_name="jit(f)/jit(_bernoulli)/while"}
  %fusion.1 = f32[4,2]{1,0} fusion(%a, %b), kind=kCustom, calls=%fused_computation.1, metadata={op_name="jit(f)/bert/encoder/layer/0/intermediate/dense/dot_general"}
  ROOT %fusion.2 = f32[2,4]{0,1} fusion(%fusion.1), kind=kLoop, calls=%fused_computation.2, metadata={op_name="jit(f)/bert/encoder/transpose"}
}
"""
    ins = parse_hlo(hlo)
    assert ins["loop"]["opcode"] == "while" and ins["loop"]["shape"] == "(s32[], /*index=1*/u32[4])"
    assert ins["fusion.1"]["body"] == "parameter parameter dot" and ins["fusion.1"]["kind"] == "kCustom"
    assert [categorize(n, ins[n]) for n in ("loop", "fusion.1", "fusion.2")] == ["rng", "matmul", "layout"]
    assert categorize("unknown", None) == "other"
