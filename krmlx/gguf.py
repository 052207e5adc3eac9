"""GGUF files as mlx-lm model folders.

Contract: :func:`convert_gguf` reads a llama-architecture GGUF file with MLX's own reader
(``mlx.core.load(path, return_metadata=True)``) and writes a normal mlx-lm model folder
(``config.json``, ``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``)
that ``mlx_lm.load`` loads. mlx-lm itself does not read GGUF.

- Weights: GGUF names map to mlx-lm's llama names (``blk.N.attn_q`` ->
  ``model.layers.N.self_attn.q_proj``, ``token_embd`` -> ``model.embed_tokens`` ...).
  MLX reads Q4_0, Q4_1 and Q8_0 blocks as its own affine quantization (group size 32:
  ``uint32`` weights with ``scales`` and ``biases``); F32, F16 and BF16 tensors as they are.
  ``dtype=None`` keeps the weights as stored; ``"float32"`` / ``"bfloat16"`` / ``"float16"``
  dequantizes every quantized tensor and casts every tensor to that type.
- Attention: llama.cpp's converter permutes the Q and K rows for interleaved RoPE, so the
  folder says ``rope_traditional: true`` instead of permuting them back.
- Tokenizer: GPT-2 byte-level BPE (``tokenizer.ggml.model == "gpt2"``) from the vocab and
  merges in the metadata, built with ``tokenizers``; control tokens (type 3) are special.
  The pre-tokenizer follows ``tokenizer.ggml.pre`` (table :data:`PRE_TOKENIZERS`).
- Errors: a :class:`~krmlx.errors.ModelError` naming what can't be taken: the architecture,
  the tokenizer model or pre-tokenizer, a tensor type MLX does not read, a tensor with no
  mlx-lm name, RoPE scaling.

Stats: none; :func:`describe` gives the file's architecture, file type and sizes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import ModelError

SUPPORTED_ARCHITECTURES = ("llama",)
# llama.cpp's general.file_type values (LLAMA_FTYPE_*): the ones MLX reads, and names for the rest
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 32: "BF16",
              8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L",
              14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
              19: "IQ2_XXS", 20: "IQ2_XS", 24: "IQ1_S", 25: "IQ4_NL", 30: "IQ4_XS"}
READABLE_FILE_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0")
CONVERT_VERSION = 1  # bump when the conversion changes, so cached folders are rebuilt
GROUP_SIZE = 32  # every GGUF block format MLX reads has 32 weights per block

_LAYER = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
          "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
          "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
          "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
                 r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> (split digits one by one first, the split regex or None for GPT-2's)
PRE_TOKENIZERS = {"default": (False, None), "gpt2": (False, None),
                  "smollm": (True, None), "starcoder": (True, None), "refact": (True, None),
                  "llama-bpe": (False, _LLAMA3_SPLIT), "llama3": (False, _LLAMA3_SPLIT)}


def read_gguf(path: Path) -> tuple[dict, dict]:
    """(weights, metadata) of a GGUF file, as MLX reads them; ModelError if it can't."""
    import mlx.core as mx

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"GGUF file {path} does not exist")
    try:
        weights, meta = mx.load(str(path), return_metadata=True)
    except Exception as e:
        raise ModelError(f"could not read GGUF file {path} ({type(e).__name__}: {e}); MLX reads "
                         f"GGUF tensors of types {', '.join(READABLE_FILE_TYPES)} only") from None
    return weights, meta


def _scalar(meta: dict, key: str, default=None):
    v = meta.get(key, default)
    return v.item() if hasattr(v, "item") else v


def describe(meta: dict) -> dict:
    """Architecture and file type named, for messages and the folder's config."""
    ftype = _scalar(meta, "general.file_type")
    return {"architecture": meta.get("general.architecture"),
            "file_type": FILE_TYPES.get(ftype, f"type {ftype}") if ftype is not None else None,
            "name": meta.get("general.name")}


def check_supported(path: Path, meta: dict) -> None:
    info = describe(meta)
    arch = info["architecture"]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelError(f"GGUF file {path}: architecture {arch!r} is not supported (krmlx "
                         f"converts {', '.join(SUPPORTED_ARCHITECTURES)} only)")
    if info["file_type"] is not None and info["file_type"] not in READABLE_FILE_TYPES:
        raise ModelError(f"GGUF file {path}: quantization {info['file_type']} is not supported "
                         f"(MLX reads {', '.join(READABLE_FILE_TYPES)})")
    scaling = meta.get("llama.rope.scaling.type")
    if scaling not in (None, "none"):
        raise ModelError(f"GGUF file {path}: RoPE scaling {scaling!r} is not supported")


def mlx_name(gguf_name: str) -> str:
    """The mlx-lm llama name of a GGUF tensor name; ModelError for one with none."""
    stem, _, suffix = gguf_name.rpartition(".")
    if suffix not in ("weight", "scales", "biases"):
        stem, suffix = gguf_name, ""
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)", stem)
    if m and m[2] in _LAYER:
        out = f"model.layers.{m[1]}.{_LAYER[m[2]]}"
    elif stem in _TOP:
        out = _TOP[stem]
    else:
        raise ModelError(f"GGUF tensor {gguf_name!r} has no llama counterpart in mlx-lm")
    return f"{out}.{suffix}" if suffix else out


def convert_weights(weights: dict, dtype: str | None) -> tuple[dict, dict | None]:
    """(mlx-lm weights, quantization config or None). Quantized tensors come as
    ``X.weight`` (uint32) + ``X.scales`` + ``X.biases``; their bits follow from the
    packed width (32 / bits weights per uint32)."""
    import mlx.core as mx

    out = {mlx_name(k): v for k, v in weights.items()}
    quantized = {k[: -len(".scales")] for k in out if k.endswith(".scales")}
    bits = {q: out[f"{q}.weight"].shape[-1] * 32 // (out[f"{q}.scales"].shape[-1] * GROUP_SIZE)
            for q in quantized}
    if dtype is not None:
        target = getattr(mx, dtype)
        for q in quantized:
            w = out.pop(f"{q}.weight")
            out[f"{q}.weight"] = mx.dequantize(w, out.pop(f"{q}.scales"), out.pop(f"{q}.biases"),
                                               group_size=GROUP_SIZE, bits=bits[q])
        return {k: v.astype(target) for k, v in out.items()}, None
    if not quantized:
        return out, None
    common = max(set(bits.values()), key=list(bits.values()).count)
    config: dict = {"group_size": GROUP_SIZE, "bits": common}
    config.update({q: {"group_size": GROUP_SIZE, "bits": b} for q, b in bits.items() if b != common})
    return out, config


def model_config(meta: dict, weights: dict, quantization: dict | None, dtype: str | None) -> dict:
    def get(key, default=None):
        return _scalar(meta, f"llama.{key}", default)

    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    tokens = meta["tokenizer.ggml.tokens"]
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": int(get("block_count")),
        "intermediate_size": int(get("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "head_dim": int(get("rope.dimension_count", hidden // heads)),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        "vocab_size": int(get("vocab_size", len(tokens))),
        "max_position_embeddings": int(get("context_length", 4096)),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "rope_traditional": True,  # Q/K rows are stored permuted for interleaved RoPE
        "tie_word_embeddings": "lm_head.weight" not in weights,
        "torch_dtype": dtype or "float16",
        "bos_token_id": _scalar(meta, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _scalar(meta, "tokenizer.ggml.eos_token_id"),
    }
    if quantization:
        config["quantization"] = config["quantization_config"] = quantization
    return {k: v for k, v in config.items() if v is not None}


def build_tokenizer(path: Path, meta: dict):
    """A ``tokenizers.Tokenizer`` (byte-level BPE) from the GGUF metadata."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "default")
    if kind != "gpt2":
        raise ModelError(f"GGUF file {path}: tokenizer model {kind!r} is not supported "
                         "(krmlx builds GPT-2 byte-level BPE tokenizers only)")
    if pre not in PRE_TOKENIZERS:
        raise ModelError(f"GGUF file {path}: pre-tokenizer {pre!r} is not supported "
                         f"(known: {', '.join(PRE_TOKENIZERS)})")
    tokens = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    tok = Tokenizer(BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    digits, split = PRE_TOKENIZERS[pre]
    steps = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
    if split is None:
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    else:
        steps += [pre_tokenizers.Split(Regex(split), behavior="isolated"),
                  pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    types = meta.get("tokenizer.ggml.token_type")
    types = types.tolist() if types is not None else [1] * len(tokens)
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i, t in enumerate(types) if t == 3])
    return tok


def tokenizer_config(meta: dict) -> dict:
    tokens = meta["tokenizer.ggml.tokens"]

    def token(key):
        i = _scalar(meta, f"tokenizer.ggml.{key}_token_id")
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": token("bos"),
              "eos_token": token("eos"), "unk_token": token("unknown"), "pad_token": token("padding"),
              "add_bos_token": bool(_scalar(meta, "tokenizer.ggml.add_bos_token", False)),
              "clean_up_tokenization_spaces": False,
              "model_max_length": int(_scalar(meta, "llama.context_length", 4096))}
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    return config


def convert_gguf(path: Path, dest: Path, *, dtype: str | None = None, extra: dict | None = None) -> None:
    """Write the mlx-lm folder for GGUF file ``path`` into ``dest`` (which must not exist).
    ``extra`` goes into config.json under ``"krmlx"`` (where the folder came from)."""
    import mlx.core as mx

    if dtype not in (None, "float32", "bfloat16", "float16"):
        raise ModelError(f"GGUF conversion: dtype must be float32, bfloat16, float16 or None "
                         f"(as stored), got {dtype!r}")
    path = Path(path)
    weights, meta = read_gguf(path)
    check_supported(path, meta)
    tokenizer = build_tokenizer(path, meta)
    out, quantization = convert_weights(weights, dtype)
    config = model_config(meta, out, quantization, dtype)
    config["krmlx"] = {"gguf": {**describe(meta), "source": path.name},
                       **(extra or {}), "build_version": CONVERT_VERSION}
    dest.mkdir(parents=True)
    mx.save_safetensors(str(dest / "model.safetensors"), out, metadata={"format": "mlx"})
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save(str(dest / "tokenizer.json"))
    (dest / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(meta), indent=2))
