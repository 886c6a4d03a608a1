"""GGUF files load as plain fp models through both loaders, and bad ones fail in one sentence.

A tiny random Llama is exported here to GGUF the way llama.cpp's ``convert_hf_to_gguf.py`` does
(rows of the Q and K projections permuted for its RoPE layout, llama.cpp tensor names, a
byte-level BPE vocabulary) with quantized linear weights. Its oracle is the same HF model with
each weight replaced by its quantize-dequantize round trip (computed with the gguf package), so
the loaded GGUF must give its logits. The real SmolLM2-135M-Instruct GGUF is compared with its
converted HF directory when `moa assets` has fetched them.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from moa_plan import ModelFingerprint, Plan, assets, fingerprint_from_gguf, read_gguf_header

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

LAYERS, HEADS, KV_HEADS, HIDDEN, FFN, CONTEXT = 2, 4, 2, 64, 128, 256
# The attention projections are stored as Q4_1, the MLP as Q8_0 (blocks of 32 along the input dim).
QUANT = {"attn": gguf.GGMLQuantizationType.Q4_1, "ffn": gguf.GGMLQuantizationType.Q8_0}


def _byte_symbols() -> list[str]:
    """GPT-2's byte-to-unicode table: the symbol a byte-level BPE vocabulary uses for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: b for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = 256 + extra
            extra += 1
    return [chr(table[b]) for b in range(256)]


# Every byte is a token (its id is the byte value), then one merge "h e", then the specials.
TOKENS = [*_byte_symbols(), "he", "<s>", "</s>"]
BOS, EOS = 257, 258


def _permute(w: Any, heads: int) -> Any:
    """llama.cpp's row order for Q/K projections (convert_hf_to_gguf.py LlamaModel.permute)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _round_trip(w: Any, qtype: Any) -> Any:
    return gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype)


def _tiny_model() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(TOKENS), hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=CONTEXT,
        bos_token_id=BOS, eos_token_id=EOS, tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 2 and ".layers." in name:
                qtype = QUANT["attn" if "self_attn" in name else "ffn"]
                param.copy_(torch.from_numpy(_round_trip(param.numpy(), qtype)))
    return model


def _write_gguf(model: Any, path: Path, architecture: str = "llama") -> None:
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    cfg = model.config
    w = gguf.GGUFWriter(str(path), architecture)
    w.add_name("tiny")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(len(TOKENS))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(TOKENS)
    w.add_token_types([1] * 257 + [3, 3])
    w.add_token_merges(["h e"])
    w.add_bos_token_id(BOS)
    w.add_eos_token_id(EOS)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    names = {
        "attn_q": ("self_attn.q_proj", HEADS), "attn_k": ("self_attn.k_proj", KV_HEADS),
        "attn_v": ("self_attn.v_proj", None), "attn_output": ("self_attn.o_proj", None),
        "ffn_gate": ("mlp.gate_proj", None), "ffn_up": ("mlp.up_proj", None), "ffn_down": ("mlp.down_proj", None),
    }  # fmt: skip
    for i in range(LAYERS):
        hf = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[hf + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[hf + "post_attention_layernorm.weight"])
        for gguf_name, (hf_name, heads) in names.items():
            weight = sd[f"{hf}{hf_name}.weight"]
            if heads is not None:
                weight = _permute(weight, heads)
            qtype = QUANT[gguf_name.split("_")[0]]
            w.add_tensor(f"blk.{i}.{gguf_name}.weight", gguf.quants.quantize(weight, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The oracle model, its safetensors directory and its GGUF export."""
    out = tmp_path_factory.mktemp("tiny-gguf")
    model = _tiny_model()
    model.save_pretrained(out / "hf")
    _write_gguf(model, out / "tiny.Q4_1.gguf")
    return {"model": model, "dir": out / "hf", "gguf": out / "tiny.Q4_1.gguf", "root": out}


PROMPT_BYTES = "hello, world"


def _ids() -> Any:
    # The byte-level vocabulary: "he" is the one merge (id 256), every other byte is its own id.
    return torch.tensor([[256, *PROMPT_BYTES[2:].encode()]])


def _logits(model: Any, ids: Any) -> Any:
    with torch.no_grad():
        return model(ids.to(model.device)).logits.float().cpu()


def test_the_gguf_is_what_the_reference_reader_sees(tiny: dict[str, Any]) -> None:
    header = read_gguf_header(tiny["gguf"])
    types = {t.name: t.type_name for t in header.tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_1"
    assert types["blk.1.ffn_down.weight"] == "Q8_0"
    assert types["token_embd.weight"] == "F32"
    reader = gguf.GGUFReader(str(tiny["gguf"]))
    assert sorted(types) == sorted(t.name for t in reader.tensors)


def test_fingerprint_of_gguf_equals_the_directory(tiny: dict[str, Any]) -> None:
    from moa_runtime import model_fingerprint

    from_gguf = ModelFingerprint.from_model_path(tiny["gguf"])
    from_dir = ModelFingerprint.from_model_path(tiny["dir"])
    assert from_gguf.differences(from_dir) == []
    assert from_gguf.model_dump(exclude={"architecture"}) == from_dir.model_dump(exclude={"architecture"})
    assert model_fingerprint(tiny["gguf"]) == from_gguf


def test_runtime_loader_gives_the_oracle_logits(tiny: dict[str, Any]) -> None:
    from moa_runtime import load_model, load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(tiny["gguf"])
    assert tokenizer(PROMPT_BYTES, add_special_tokens=False)["input_ids"] == _ids()[0].tolist()
    assert not hasattr(model.config, "quantization_config")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not model.training
    torch.testing.assert_close(_logits(model, _ids()), _logits(tiny["model"], _ids()), rtol=1e-5, atol=1e-5)
    from_dir = load_model(tiny["dir"])
    torch.testing.assert_close(_logits(model, _ids()), _logits(from_dir, _ids()), rtol=1e-5, atol=1e-5)
    fp = ModelFingerprint.from_config(model.config)
    assert fp == ModelFingerprint.from_config(from_dir.config)


def test_profiler_loader_gives_the_oracle_logits(tiny: dict[str, Any]) -> None:
    from moa_profiler.models import fingerprint_of, load_model, load_tokenizer

    model = load_model(tiny["gguf"])
    tokenizer = load_tokenizer(tiny["gguf"])
    assert tokenizer(PROMPT_BYTES, add_special_tokens=False)["input_ids"] == _ids()[0].tolist()
    assert not hasattr(model.config, "quantization_config")
    torch.testing.assert_close(_logits(model, _ids()), _logits(tiny["model"], _ids()), rtol=1e-5, atol=1e-5)
    assert fingerprint_of(model).differences(ModelFingerprint.from_model_path(tiny["dir"])) == []


def test_evaluate_loader_pads_left(tiny: dict[str, Any]) -> None:
    from moa.evaluate import load_model

    model, tokenizer = load_model(tiny["gguf"])
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token_id is not None
    torch.testing.assert_close(_logits(model, _ids()), _logits(tiny["model"], _ids()), rtol=1e-5, atol=1e-5)


def test_an_architecture_transformers_cannot_dequantize(tiny: dict[str, Any]) -> None:
    from moa_plan import MoaError
    from moa_profiler.models import load_model as profiler_load
    from moa_runtime import load_model

    path = tiny["root"] / "odd.gguf"
    _write_gguf(tiny["model"], path, architecture="moaodd")
    for loader in (load_model, profiler_load):
        with pytest.raises(MoaError) as info:
            loader(path)
        assert str(info.value).startswith(f"{path}: transformers cannot load GGUF architecture 'moaodd'")


def _one_line(proc: Any, *fragments: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return str(lines[0])


def _bad_files(tiny: dict[str, Any]) -> dict[str, Path]:
    root = tiny["root"]
    bad = root / "bad.gguf"
    bad.write_bytes(b"PK\x03\x04 a zip file, not a gguf")
    blob = tiny["gguf"].read_bytes()
    truncated = root / "truncated.gguf"
    truncated.write_bytes(blob[: len(blob) // 2])
    short_header = root / "short.gguf"
    short_header.write_bytes(blob[:100])
    version = root / "version.gguf"
    version.write_bytes(blob[:4] + struct.pack("<I", 7) + blob[8:])
    return {"bad": bad, "truncated": truncated, "short": short_header, "version": version}


@pytest.mark.parametrize(
    ("command", "options", "file", "fragment"),
    [
        (["generate"], ["--plan", "{plan}", "--prompt", "hi"], "bad", "not a GGUF file (bad magic"),
        (["generate"], ["--plan", "{plan}", "--prompt", "hi"], "truncated", "is truncated: tensor"),
        (["calibrate"], ["--task", "rewrite", "--out", "{root}/c.parquet"], "truncated", "is truncated: tensor"),
        (["calibrate"], ["--task", "rewrite", "--out", "{root}/c.parquet"], "short", "is truncated"),
        (["plan", "dense"], ["-o", "{root}/d.json"], "bad", "not a GGUF file (bad magic"),
        (["plan", "uniform"], ["--fraction", "0.5", "-o", "{root}/u.json"], "version", "unsupported GGUF version 7"),
        (["eval", "ppl"], ["--data", "{root}/none.parquet"], "truncated", "is truncated"),
        (["compress"], ["--density", "0.5", "--out", "{root}/o"], "bad", "bad magic"),
    ],
    ids=[
        "generate-bad",
        "generate-truncated",
        "calibrate-truncated",
        "calibrate-short-header",
        "plan-dense-notgguf",
        "plan-uniform-version",
        "eval-ppl-truncated",
        "compress-bad",
    ],
)
def test_bad_gguf_through_the_cli(tiny: dict[str, Any], moa_cli, command, options, file, fragment) -> None:  # type: ignore[no-untyped-def]
    files = _bad_files(tiny)
    plan = Plan.dense(ModelFingerprint.from_model_path(tiny["dir"])).save(tiny["root"] / "plan.json")
    options = [a.format(plan=plan, root=tiny["root"]) for a in options]
    proc = moa_cli(*command, "--model", files[file], *options, check=False, timeout=300)
    _one_line(proc, fragment, str(files[file]))


def test_generate_from_a_gguf(tiny: dict[str, Any], moa_cli) -> None:  # type: ignore[no-untyped-def]
    plan = Plan.uniform(fingerprint_from_gguf(read_gguf_header(tiny["gguf"]).metadata), 0.5)
    plan_path = plan.save(tiny["root"] / "uniform.json")
    args = ["--model", tiny["gguf"], "--plan", plan_path, "--prompt", "hello", "--max-new-tokens", "4"]
    proc = moa_cli("generate", *args, "--device", "cpu", "--dtype", "float32", check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


# The real SmolLM2-135M-Instruct GGUF (Q4_1) and its converted fp32 HF directory.
REAL_GGUF, REAL_DIR = assets.gguf_path(), assets.model_dir()
needs_assets = pytest.mark.skipif(
    not (REAL_GGUF.is_file() and (REAL_DIR / "config.json").is_file()),
    reason=f"the real-model assets are not fetched ({REAL_GGUF}, {REAL_DIR}); run `make assets`",
)
REAL_PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def real_gguf_model() -> tuple[Any, Any]:
    """The GGUF loaded once for the module (it takes about half a minute to dequantize)."""
    from moa_runtime import load_model_and_tokenizer

    return load_model_and_tokenizer(REAL_GGUF)


@needs_assets
def test_real_gguf_fingerprint_equals_its_directory() -> None:
    from_gguf = ModelFingerprint.from_model_path(REAL_GGUF)
    from_dir = ModelFingerprint.from_model_path(REAL_DIR)
    assert from_gguf.differences(from_dir) == []
    assert (from_gguf.num_layers, from_gguf.num_attention_heads, from_gguf.num_key_value_heads) == (30, 9, 3)


@needs_assets
def test_real_gguf_logits_equal_its_directory(real_gguf_model: tuple[Any, Any]) -> None:
    from moa_runtime import load_model_and_tokenizer

    model, tokenizer = real_gguf_model
    dir_model, dir_tokenizer = load_model_and_tokenizer(REAL_DIR)
    ids = tokenizer(REAL_PROMPT, return_tensors="pt")["input_ids"]
    assert ids.tolist() == dir_tokenizer(REAL_PROMPT, return_tensors="pt")["input_ids"].tolist()
    assert not hasattr(model.config, "quantization_config")
    assert ModelFingerprint.from_config(model.config).differences(ModelFingerprint.from_config(dir_model.config)) == []
    torch.testing.assert_close(_logits(model, ids), _logits(dir_model, ids), rtol=1e-5, atol=1e-5)


@needs_assets
@pytest.mark.slow
def test_real_gguf_through_the_profiler_loader(real_gguf_model: tuple[Any, Any]) -> None:
    from moa_profiler.models import load_model

    model, tokenizer = real_gguf_model
    ids = tokenizer(REAL_PROMPT, return_tensors="pt")["input_ids"]
    torch.testing.assert_close(_logits(load_model(REAL_GGUF), ids), _logits(model, ids), rtol=1e-5, atol=1e-5)
