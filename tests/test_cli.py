"""The command line. Its entry points (``python -m llmtrain``, the console script) run as a user
runs them, in a separate process; the rest calls ``cli.main`` in this process with stdout and
stderr captured — the same code, without a torch import per test (seconds each)."""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import hf_numel
from llmtrain.cost import params
from llmtrain.model import shapes

SCRIPT = Path(sys.executable).with_name("llmtrain")  # the console script in this venv


def run(*args, script=False, process=False):
    if script or process:
        cmd = [str(SCRIPT), *args] if script else [sys.executable, "-m", "llmtrain", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    from llmtrain import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(args))
        except SystemExit as e:  # argparse's own errors
            code = e.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_preset_human_readable():
    r = run("params", "llama-7b", process=True)
    assert r.returncode == 0, r.stderr
    assert "llama-7b: 6,738,415,616 parameters" in r.stdout
    assert "mlp" in r.stdout and "slides" not in r.stdout  # MHA: the slides' formula agrees


def test_gqa_preset_mentions_the_slides_formula():
    r = run("params", "llama3-8b")
    assert r.returncode == 0 and "8,030,261,248" in r.stdout and "8,835,567,616" in r.stdout


def test_console_script_json():
    assert SCRIPT.exists(), f"the console script {SCRIPT} is not installed: pip install -e ."
    r = run("params", "llama2-70b", "--json", script=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {"total": 68_976_648_192, "breakdown": params.breakdown(shapes.get("llama2-70b"))}


CONFIGS = {
    # not among the presets: a Llama-3.2-1B-like tied model, a Mistral with head_dim != H/N,
    # a Qwen2 with biases and tied embeddings, a Llama with attention and MLP biases
    "llama": {"model_type": "llama", "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
              "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
              "tie_word_embeddings": True, "max_position_embeddings": 131072},
    "mistral": {"model_type": "mistral", "vocab_size": 131072, "hidden_size": 5120, "intermediate_size": 14336,
                "num_hidden_layers": 4, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128},
    "qwen2": {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960,
              "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
              "tie_word_embeddings": True},
    "llama-bias": {"model_type": "llama", "vocab_size": 1000, "hidden_size": 256, "intermediate_size": 512,
                   "num_hidden_layers": 2, "num_attention_heads": 8, "attention_bias": True, "mlp_bias": True},
}


@pytest.mark.parametrize("kind", CONFIGS)
def test_hf_config_json_equals_transformers(kind, tmp_path):
    from transformers import AutoConfig

    cfg = CONFIGS[kind]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    r = run("params", "--hf-config", str(path), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    expected = hf_numel(AutoConfig.for_model(**cfg))
    assert out["total"] == expected
    assert sum(out["breakdown"].values()) == expected


def test_models_lists_presets():
    r = run("models")
    assert r.returncode == 0 and r.stdout.split() == shapes.names()


@pytest.mark.parametrize("args,needle", [
    (["params", "llama-8b"], "unknown model name 'llama-8b'"),
    (["params"], "one of the arguments"),
    (["params", "llama-7b", "--hf-config", "x.json"], "not allowed with"),
    (["params", "--hf-config", "/no/such/config.json"], "does not exist"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
])
def test_bad_input_one_line_exit_2(args, needle):
    r = run(*args, process=args == ["frobnicate"])  # one of them as a user meets it
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmtrain: error:") and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_impossible_config_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**CONFIGS["llama-bias"], "num_key_value_heads": 3}))
    r = run("params", "--hf-config", str(path))
    assert r.returncode == 2 and "num_kv_heads=3 must divide num_heads=8" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_config_file_that_is_not_text(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    r = run("params", "--hf-config", str(path))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr
    assert f"config file {str(path)!r} is not UTF-8 text" in lines[0]


@pytest.mark.parametrize("key,value", [("num_key_value_heads", 0), ("num_key_value_heads", -4),
                                       ("max_position_embeddings", 0), ("head_dim", 0),
                                       ("hidden_size", "256"), ("rms_norm_eps", 0)])
def test_config_zero_is_refused_not_defaulted(tmp_path, key, value):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**CONFIGS["llama-bias"], key: value}))
    r = run("params", "--hf-config", str(path))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert f"config['{key}'] must be a positive" in r.stderr, r.stderr


def test_params_unit_for_a_small_model():
    r = run("params", "tiny")
    assert r.returncode == 0 and "tiny: 125,248 parameters (125.25 K)" in r.stdout
    assert "(0.00 B)" not in r.stdout


def test_memory_slides_example_json():
    r = run("memory", "llama-7b", "--gpus", "2", "--batch", "8", "--seq", "2048", "--zero", "3",
            "--recompute", "full", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["total"] == sum(out["parts"].values())
    assert out["parts"]["model states"] == 8 * params.count(shapes.get("llama-7b"))  # 16P/N, N=2
    assert round(out["gib"]["total"]) == 66 and out["dp"] == 2


def test_memory_table_has_gb_and_gib():
    r = run("memory", "llama2-70b", "--gpus", "16", "--tp", "8", "--batch", "1", "--impl", "korthikanti",
            "--recompute", "selective", "--sp")
    assert r.returncode == 0, r.stderr
    assert "GB" in r.stdout and "GiB" in r.stdout and "total" in r.stdout


def test_memory_flags_build_the_layout():
    from llmtrain.cost import memory
    from llmtrain.cost.layout import ParallelDims

    r = run("memory", "llama2-70b", "--gpus", "64", "--tp", "8", "--pp", "4", "--zero", "1",
            "--impl", "korthikanti", "--recompute", "selective", "--sp", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    est = memory.estimate(shapes.get("llama2-70b"), ParallelDims(dp=2, tp=8, pp=4), zero=1,
                          impl="korthikanti", recompute="selective", sp=True)
    assert out["dp"] == 2 and out["parts"] == est.parts and out["total"] == est.total


@pytest.mark.parametrize("args,needle", [
    (["memory", "llama-7b", "--gpus", "3", "--tp", "2"], "gpus must be a multiple of tp·pp=2, got 3"),
    (["memory", "llama-7b", "--tp", "3", "--gpus", "3"], "tp must divide num_heads=32, got tp=3"),
    (["memory", "llama-7b", "--batch", "0"], "batch must be a positive integer"),
    (["memory", "llama-7b", "--impl", "textbook", "--recompute", "none"], "recompute='full'"),
    (["memory", "llama-7b", "--dtype", "int8"], "dtype must be fp32, bf16 or fp16"),
    (["memory", "llama-7b", "--zero", "5"], "invalid choice"),
    (["memory", "llama-7b", "--batch", "two"], "argument --batch: batch must be a positive integer, got 'two'"),
    # issue 10 §6: a zero degree divided by zero; a negative one was reported as dp
    (["memory", "llama-7b", "--pp", "0"], "argument --pp: pp must be a positive integer, got 0"),
    (["memory", "llama-7b", "--tp", "0"], "argument --tp: tp must be a positive integer, got 0"),
    (["memory", "llama-7b", "--tp", "-1"], "argument --tp: tp must be a positive integer, got -1"),
    (["memory", "llama-7b", "--pp", "-2", "--gpus", "2"], "argument --pp: pp must be a positive"),
    (["memory", "llama-7b", "--gpus", "0"], "argument --gpus: gpus must be a positive integer"),
    (["memory", "llama-7b", "--seq", "0"], "argument --seq: seq must be a positive integer"),
    (["memory", "llama-7b", "--impl", "texbook"], "impl must be one of"),
    (["memory", "llama-7b", "--precision", "fp8"], "precision must be one of"),
    (["memory", "llama-7b", "--optimizer", "lion"], "optimizer must be one of"),
    (["memory", "llama-7b", "--impl", "reference", "--attention", "flash"], "attention must be one of"),
])
def test_memory_bad_input(args, needle):
    r = run(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_flops_json_equals_library():
    from llmtrain.cost import flops

    r = run("flops", "llama-7b", "--seq", "2048", "--attention", "sdpa", "--recompute", "full", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    s = shapes.get("llama-7b")
    assert out["total"] == flops.training_flops(s, 1, 2048, attention="sdpa", recompute="full")
    assert out["total"] == sum(out["parts"].values())
    assert out["six_p_tokens"] == 6 * params.count(s) * 2048


@pytest.mark.parametrize("args,needle", [
    (["flops", "llama-7b", "--attention", "flash"], "attention must be one of"),
    (["flops", "llama-7b", "--recompute", "half"], "recompute"),
    (["flops", "llama-7b", "--seq", "-1"], "argument --seq: seq must be a positive integer"),
    (["flops", "llama-7b", "--batch", "0"], "argument --batch: batch must be a positive integer"),
    (["flops", "llama-7b", "--recompute", "every"], "k must be a positive integer"),
    (["flops", "llama-7b", "--recompute", "every", "--k", "0"], "argument --k: k must be a positive"),
])
def test_flops_bad_input(args, needle):
    r = run(*args)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1


# --- silently wrong answers, now refused (issue 21 §5; newcomer review B5, B6, B8, B51, B53) ---

@pytest.mark.parametrize("key", ["tie_word_embeddings", "attention_bias", "mlp_bias"])
def test_config_boolean_as_a_string_is_refused(tmp_path, key):
    path = tmp_path / "config.json"  # "false" is a non-empty string: truthy, was read as true
    path.write_text(json.dumps({**CONFIGS["llama-bias"], key: "false"}))
    r = run("params", "--hf-config", str(path))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and r.stdout == "" and len(lines) == 1, r.stderr
    assert f"config['{key}'] must be a JSON boolean (true or false, no quotes), got 'false'" in lines[0]


def test_config_booleans_false_and_null_are_read():
    cfg = {**CONFIGS["llama-bias"], "tie_word_embeddings": False, "attention_bias": None}
    s = shapes.ModelShape.from_hf_config(cfg)
    assert not s.tie_embeddings and not s.attention_bias and s.mlp_bias


MIXTRAL = {"architectures": ["MixtralForCausalLM"], "vocab_size": 32000, "hidden_size": 4096,
           "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2}


@pytest.mark.parametrize("cfg, needle", [
    (MIXTRAL, "model_type missing; MoE configs (num_local_experts) are not supported"),
    ({**MIXTRAL, "model_type": "mistral"}, "MoE configs (num_local_experts) are not supported"),
])
def test_moe_config_is_not_counted_as_dense(tmp_path, cfg, needle):
    path = tmp_path / "config.json"  # without model_type it was a dense 7.24 B "llama"
    path.write_text(json.dumps(cfg))
    r = run("params", "--hf-config", str(path))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and r.stdout == "" and len(lines) == 1 and needle in lines[0], r.stderr


def test_a_mixtral_config_is_counted_as_a_mixture_of_experts(tmp_path):
    """With its model_type, a Mixtral config is read as MoE: total and active parameters, the
    published 46.7B / 12.9B of Mixtral 8x7B (tests/test_moe_counts.py checks them exactly)."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**MIXTRAL, "model_type": "mixtral"}))
    r = run("params", "--hf-config", str(path), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert round(out["total"] / 1e9, 1) == 46.7 and round(out["active"] / 1e9, 1) == 12.9, out


@pytest.mark.parametrize("args, needle", [
    (["--galore-rank", "8"], "--galore-rank is only used with --optimizer galore or galore8bit, "
                             "got --galore-rank 8 with --optimizer adamw"),
    (["--optimizer", "adamw8bit", "--galore-rank", "8"], "with --optimizer adamw8bit"),
    (["--attention", "eager"], "--attention is only used with --impl reference"),
    (["--impl", "hf-eager", "--seq", "128", "--attention", "sdpa"], "with --impl hf-eager"),
])
def test_memory_flag_that_does_not_apply_is_an_error(args, needle):
    r = run("memory", "llama-7b", *args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and r.stdout == "" and len(lines) == 1 and needle in lines[0], r.stderr


def test_memory_flags_that_apply_change_the_answer():
    def total(*args):
        r = run("memory", "tiny", "--zero", "0", "--json", *args)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["total"]

    assert total("--optimizer", "galore", "--galore-rank", "4") != total("--optimizer", "galore",
                                                                         "--galore-rank", "8")
    ref = ("--impl", "reference", "--recompute", "none")
    assert total(*ref, "--attention", "eager") > total(*ref, "--attention", "sdpa")
    assert total(*ref) == total(*ref, "--attention", "sdpa")  # sdpa is the default


# --- the README's command lines, as written (issue 21 §5: they failed without .venv) -----------

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    """Every ``$ `` line of the README's code blocks (the prompt stripped), in order."""
    lines, inside = [], False
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            inside = not inside
        elif inside and line.startswith("$ "):
            lines.append(line[2:])
    return lines


def test_readme_says_how_to_reach_the_command():
    text = README.read_text(encoding="utf-8")
    assert ". .venv/bin/activate" in readme_commands()
    assert ".venv/bin/llmtrain" in text


def test_readme_command_lines_run_as_written(tmp_path):
    """Run each ``$`` line in a shell as after ``. .venv/bin/activate`` (this venv's bin first on
    PATH); only the placeholder path/to/config.json is replaced, by a real config file."""
    import os

    root = README.parent
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIGS["llama"]))
    commands = [c for c in readme_commands() if c != ". .venv/bin/activate"]  # PATH does it here
    assert len(commands) >= 8 and any("path/to/config.json" in c for c in commands)
    env = dict(os.environ, PATH=os.pathsep.join([str(SCRIPT.parent), os.environ.get("PATH", "")]))
    for command in commands:
        r = subprocess.run(["bash", "-c", command.replace("path/to/config.json", str(config))],
                           cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"$ {command}\n{r.stderr}"
        assert r.stdout.strip() and "error" not in r.stderr, f"$ {command}\n{r.stderr}"


def test_output_cut_short_by_a_pipe_is_not_an_error():
    """``llmtrain plan ... | head``: the reader leaves early; no BrokenPipeError traceback."""
    import os

    env = dict(os.environ, PATH=os.pathsep.join([str(SCRIPT.parent), os.environ.get("PATH", "")]))
    r = subprocess.run(["bash", "-o", "pipefail", "-c",  # 300 KB of JSON, more than a pipe holds
                        "llmtrain plan llama-70b --gpus 64 --gpu h100-80g --batch-tokens 4M "
                        "--top 1000 --json | head -c 10"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == '{"model": ' and r.stderr == "", r.stderr
