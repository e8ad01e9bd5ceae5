"""umT5 text encoder (transformers `UMT5EncoderModel`), prompt cleaning and the on-disk prompt-embedding cache.

Wan's original `models_t5_umt5-xxl-enc-bf16.pth` uses its own key names; `convert_wan_t5_state_dict` renames them
to transformers' names (docs/spec.md#text-encoder, table in docs/models.md). Embeddings are `[B, text_len,
d_model]` with the rows past each prompt's tokens (EOS included) set to zero, not trimmed.
"""

from __future__ import annotations

import gc
import hashlib
import html
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from tokentrim.errors import UserError, shorten
from tokentrim.wan.loading import read_torch_file

if TYPE_CHECKING:  # transformers is imported where an encoder is built: importing this module stays cheap
    from transformers import UMT5Config, UMT5EncoderModel

logger = logging.getLogger(__name__)

# umT5-XXL encoder as shipped with Wan2.1 (docs/spec.md#text-encoder); written out so no config is fetched from
# the Hub.
UMT5_XXL_CONFIG = dict(
    vocab_size=256384, d_model=4096, d_kv=64, num_heads=64, d_ff=10240, num_layers=24,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6, dropout_rate=0.0,
)  # fmt: skip

# Per-block key suffixes, Wan -> transformers. Wan's FFN is fc2(fc1(x) * gelu_tanh(gate(x))); transformers' gated
# FFN is wo(gelu_new(wi_0(x)) * wi_1(x)) with gelu_new the tanh approximation, so gate -> wi_0 and fc1 -> wi_1.
_BLOCK_KEYS = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_BLOCK_KEYS_INV = {v: k for k, v in _BLOCK_KEYS.items()}
_WAN_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_HF_BLOCK = re.compile(r"^encoder\.block\.(\d+)\.(.+)$")

OffloadMode = Literal["none", "cpu", "free"]
OFFLOAD_MODES = ("none", "cpu", "free")


def convert_wan_t5_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Wan's umT5 encoder keys to `UMT5EncoderModel` keys (the token embedding fills both tied names)."""
    out, unknown = {}, []
    for key, value in sd.items():
        block = _WAN_BLOCK.match(key)
        if key == "token_embedding.weight":
            out["shared.weight"] = out["encoder.embed_tokens.weight"] = value
        elif key == "norm.weight":
            out["encoder.final_layer_norm.weight"] = value
        elif block and block.group(2) in _BLOCK_KEYS:
            out[f"encoder.block.{block.group(1)}.{_BLOCK_KEYS[block.group(2)]}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise UserError(
            f"not a Wan umT5 encoder state dict: unexpected keys {unknown[:5]} ({len(unknown)} in all)"
        )
    return out


def to_wan_t5_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `convert_wan_t5_state_dict`: `UMT5EncoderModel` keys -> Wan's names."""
    out = {}
    for key, value in sd.items():
        block = _HF_BLOCK.match(key)
        if key == "shared.weight":
            out["token_embedding.weight"] = value
        elif key == "encoder.embed_tokens.weight":
            continue  # tied to shared.weight
        elif key == "encoder.final_layer_norm.weight":
            out["norm.weight"] = value
        elif block and block.group(2) in _BLOCK_KEYS_INV:
            out[f"blocks.{block.group(1)}.{_BLOCK_KEYS_INV[block.group(2)]}"] = value
        else:
            raise ValueError(f"no Wan name for UMT5 key {key!r}")
    return out


def clean_prompt(text: str) -> str:
    """ftfy `fix_text`, HTML-unescape twice, strip, collapse whitespace runs to one space (docs/spec.md#text-encoder)."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text)


def warn_truncated(prompt: str, tokens: int | None, text_len: int) -> None:
    if tokens is not None and tokens > text_len:
        logger.warning(
            "prompt %s has %d tokens; the text encoder keeps the first %d", shorten(prompt), tokens, text_len
        )


class TextEncoder:
    """A `UMT5EncoderModel` with its tokenizer and sequence length; device and dtype are the model's."""

    def __init__(self, model: UMT5EncoderModel, tokenizer, text_len: int):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.text_len = text_len

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.shared.weight.dtype

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    def to(self, device: torch.device | str) -> TextEncoder:
        self.model.to(device)
        return self

    def token_counts(self, prompts: list[str]) -> list[int]:
        """Tokens of each cleaned prompt, EOS included (more than `text_len` are truncated)."""
        cleaned = [clean_prompt(p) for p in prompts]
        return [len(ids) for ids in self.tokenizer(cleaned, add_special_tokens=True)["input_ids"]]

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> embeddings `[B, text_len, d_model]`, rows past each prompt's tokens (EOS included) zeroed."""
        cleaned = [clean_prompt(p) for p in prompts]
        for prompt, count in zip(cleaned, self.token_counts(cleaned), strict=True):
            warn_truncated(prompt, count, self.text_len)  # truncated as the reference does; say so
        tokens = self.tokenizer(
            cleaned,
            padding="max_length",
            truncation=True,
            max_length=self.text_len,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids, mask = tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, D)
        lengths = mask.sum(dim=1)  # real tokens per prompt
        keep = torch.arange(self.text_len, device=self.device)[None, :] < lengths[:, None]  # (B, L)
        return hidden * keep[..., None].to(hidden.dtype)


def _umt5_on_meta(
    config: UMT5Config, state_dict: dict[str, torch.Tensor], dtype: torch.dtype
) -> UMT5EncoderModel:
    """Build on the meta device and load `state_dict` with `assign=True` (strict), tying the two embeddings."""
    from transformers import UMT5EncoderModel

    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    state_dict = {k: v.to(dtype) for k, v in state_dict.items()}
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as err:
        raise UserError(
            f"the text-encoder weights do not fit umT5-XXL ({str(err).splitlines()[0]}); "
            "is this Wan2.1's models_t5_umt5-xxl-enc-bf16.pth? Download it again."
        ) from err
    model.set_input_embeddings(model.shared)  # one embedding tensor, as in the checkpoint
    return model


def load_original_text_encoder(
    weights: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    *,
    text_len: int,
    device: torch.device | str,
    dtype: torch.dtype,
    config: dict | None = None,
) -> TextEncoder:
    """Wan's `models_t5_umt5-xxl-enc-bf16.pth` + the `google/umt5-xxl/` tokenizer folder (`config`: umT5-XXL)."""
    from transformers import AutoTokenizer, UMT5Config

    state_dict = read_torch_file(weights)
    umt5 = UMT5Config(**(config or UMT5_XXL_CONFIG))
    model = _umt5_on_meta(umt5, convert_wan_t5_state_dict(state_dict), dtype).to(device)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    return TextEncoder(model, tokenizer, text_len)


def load_diffusers_text_encoder(
    text_encoder_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    *,
    text_len: int,
    device: torch.device | str,
    dtype: torch.dtype,
) -> TextEncoder:
    """A Diffusers-layout `text_encoder/` + `tokenizer/` pair, read from disk only."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    model = UMT5EncoderModel.from_pretrained(str(text_encoder_dir), dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    return TextEncoder(model.to(device), tokenizer, text_len)


# Prompt-embedding cache ------------------------------------------------------------------------------------------
class TextEncoderFactory:
    """Loads a `TextEncoder` on first use and keeps it between calls, subject to an offload mode.

    `identity` names the weights and dtype (it is part of every cache key), so cached embeddings are found without
    loading the encoder at all. `loads` counts how many times `load` ran.
    """

    def __init__(
        self, load: Callable[[], TextEncoder], *, identity: str, text_len: int, device: torch.device | str
    ):
        self._load = load
        self.identity = identity
        self.text_len = text_len
        self.device = torch.device(device)
        self.loads = 0
        self._encoder: TextEncoder | None = None

    def get(self) -> TextEncoder:
        if self._encoder is None:
            self._encoder = self._load()
            self.loads += 1
        return self._encoder.to(self.device)

    def offload(self, mode: OffloadMode) -> None:
        """Release the encoder: `none` keeps it on device, `cpu` moves it to host memory, `free` drops it."""
        assert mode in OFFLOAD_MODES, mode
        if self._encoder is None or mode == "none":
            return
        if mode == "cpu":
            self._encoder.to("cpu")
        else:
            self._encoder = None
            gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def default_cache_dir() -> Path:
    """`$TOKENTRIM_CACHE/prompt_embeds`, or `~/.cache/tokentrim/prompt_embeds`."""
    root = os.environ.get("TOKENTRIM_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "tokentrim") / "prompt_embeds"


def prompt_cache_key(identity: str, text_len: int, prompt: str) -> str:
    """sha256 over (encoder identity, text_len, cleaned prompt)."""
    payload = json.dumps([identity, text_len, clean_prompt(prompt)], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _read_cached(path: Path, text_len: int) -> tuple[torch.Tensor, int | None] | None:
    """A cached row and the prompt's token count (None: an encoder that does not count tokens). A file written
    without the count by an encoder that counts is treated as missing and rewritten once."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            embeds, meta = f.get_tensor("prompt_embeds"), f.metadata() or {}
    except Exception as err:  # a truncated or foreign file: recompute it
        logger.warning("ignoring unreadable prompt cache file %s (%s)", path, err)
        return None
    tokens = meta.get("tokens", "")
    if embeds.ndim != 2 or embeds.shape[0] != text_len or not (tokens.isdigit() or tokens == "uncounted"):
        return None
    return embeds, int(tokens) if tokens.isdigit() else None


def _write_cached(path: Path, embeds: torch.Tensor, identity: str, prompt: str, tokens: int | None) -> None:
    from safetensors.torch import save_file

    from tokentrim.video import atomic_path

    meta = {"encoder": identity, "prompt": prompt, "tokens": "uncounted" if tokens is None else str(tokens)}
    try:
        with atomic_path(path) as tmp:
            save_file({"prompt_embeds": embeds.cpu().contiguous()}, str(tmp), metadata=meta)
    except UserError as err:  # a full disk, another run writing the same entry: the cache is only a cache
        logger.warning("prompt cache entry not written: %s", err)


def encode_prompts(
    prompts: list[str],
    encoder_factory: TextEncoderFactory,
    cache_dir: str | os.PathLike | None = None,
    *,
    offload: OffloadMode = "none",
) -> torch.Tensor:
    """Embeddings `[B, text_len, D]` on the factory's device, read from the cache where possible.

    The encoder is loaded only if some prompt misses the cache; misses are encoded in one batch, written atomically
    as `<key>.safetensors` under `cache_dir` (default `default_cache_dir()`), then the encoder is offloaded.
    """
    if offload not in OFFLOAD_MODES:
        raise UserError(f"offload must be one of {OFFLOAD_MODES}, got {offload!r}")
    factory = encoder_factory
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    keys = [prompt_cache_key(factory.identity, factory.text_len, p) for p in prompts]
    found, missing = {}, {}
    for key, prompt in zip(keys, prompts, strict=True):
        if key in found or key in missing:
            continue
        cached = _read_cached(folder / f"{key}.safetensors", factory.text_len)
        if cached is None:
            missing[key] = prompt
        else:
            found[key] = cached[0]
            warn_truncated(clean_prompt(prompt), cached[1], factory.text_len)  # as when it was encoded
    if missing:
        logger.info("encoding %d prompt(s) not in the cache %s", len(missing), folder)
        encoder = factory.get()
        embeds = encoder.encode(list(missing.values()))
        counts = getattr(encoder, "token_counts", lambda p: [None] * len(p))(list(missing.values()))
        for (key, prompt), row, count in zip(missing.items(), embeds, counts, strict=True):
            found[key] = row.cpu()
            _write_cached(folder / f"{key}.safetensors", row, factory.identity, clean_prompt(prompt), count)
        factory.offload(offload)
    return torch.stack([found[k] for k in keys]).to(factory.device)


# Tiny preset -----------------------------------------------------------------------------------------------------
# Word-level vocabulary of the tiny tokenizer; ids 0..2 follow the umT5 convention (<pad>=0, </s>=1, <unk>=2).
TINY_VOCAB = (
    "<pad>", "</s>", "<unk>", ",", ".", "a", "an", "the", "of", "in", "on", "at", "with", "and", "to", "from",
    "is", "are", "cat", "dog", "bird", "fish", "horse", "person", "man", "woman", "child", "car", "boat", "train",
    "tree", "flower", "house", "city", "street", "road", "river", "lake", "sea", "ocean", "beach", "mountain",
    "forest", "field", "sky", "cloud", "clouds", "sun", "sunset", "moon", "night", "day", "rain", "snow", "water",
    "fire", "light", "red", "green", "blue", "yellow", "white", "black", "small", "big", "old", "young", "slow",
    "fast", "walks", "runs", "flies", "swims", "drives", "jumps", "dances", "sits", "looks", "camera", "shot",
    "close", "up", "wide", "view", "cinematic", "slowly", "quickly", "under", "over", "through", "along", "into",
)  # fmt: skip


def build_tiny_tokenizer():
    """A word-level tokenizer over `TINY_VOCAB` (lower-cased, whitespace/punctuation split, `</s>` appended),
    built offline with `tokenizers` and wrapped in transformers' fast-tokenizer class."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(TINY_VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def tiny_umt5_config(d_model: int) -> UMT5Config:
    """2 layers, 2 heads, d_ff 2*d_model; 8 buckets / max distance 16 so a 16-token prompt uses log buckets too."""
    from transformers import UMT5Config

    heads = 2
    return UMT5Config(
        vocab_size=len(TINY_VOCAB), d_model=d_model, d_kv=d_model // heads, num_heads=heads, d_ff=2 * d_model,
        num_layers=2, relative_attention_num_buckets=8, relative_attention_max_distance=16,
        feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0,
    )  # fmt: skip


def build_tiny_text_encoder(
    seed: int = 0, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> TextEncoder:
    """Random-weight umT5 sized for the `tiny` DiT preset (d_model = text_dim, text_len from the preset)."""
    from transformers import UMT5EncoderModel

    from tokentrim.wan.config import get_preset

    preset = get_preset("tiny")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UMT5EncoderModel(tiny_umt5_config(preset.text_dim))
    return TextEncoder(model.to(device=device, dtype=dtype), build_tiny_tokenizer(), preset.text_len)
