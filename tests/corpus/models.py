"""Real model families, built from small configs (no downloads): transformers (core env) and
torchvision / timm (the .venv-trt env, where a torchvision build matching its torch exists).

Each builder returns (model, args, kwargs, dynamic_shapes, dims) where ``dims`` maps each
dynamic Dim's name to (example size, other sizes inside its range): the corpus test calls at
each, and one past the range's max, which must be refused.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.export import Dim

Built = tuple[torch.nn.Module, tuple, dict, Any, dict[str, tuple[int, list[int]]]]


def _ids(b: int, s: int, vocab: int = 99) -> torch.Tensor:
    return torch.randint(0, vocab, (b, s))


def bert() -> Built:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=37, max_position_embeddings=64)  # fmt: skip
    model = BertModel(cfg)
    b, s = Dim("batch", min=1, max=8), Dim("seq", min=2, max=32)
    kwargs = {"input_ids": _ids(2, 7), "attention_mask": torch.ones(2, 7, dtype=torch.long),
              "token_type_ids": torch.zeros(2, 7, dtype=torch.long)}  # fmt: skip
    dyn = {k: {0: b, 1: s} for k in kwargs}
    return model, (), kwargs, dyn, {"batch": (2, [1, 5]), "seq": (7, [3, 16])}


def gpt2() -> Built:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                     use_cache=False)  # fmt: skip
    model = GPT2LMHeadModel(cfg)
    b, s = Dim("batch", min=1, max=8), Dim("seq", min=2, max=32)
    kwargs = {"input_ids": _ids(2, 7), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    dyn = {k: {0: b, 1: s} for k in kwargs}
    return model, (), kwargs, dyn, {"batch": (2, [1, 4]), "seq": (7, [2, 20])}


def _llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                       use_cache=False)  # fmt: skip


def llama() -> Built:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(_llama_config())
    b, s = Dim("batch", min=1, max=8), Dim("seq", min=2, max=32)
    kwargs = {"input_ids": _ids(2, 7), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    dyn = {k: {0: b, 1: s} for k in kwargs}
    return model, (), kwargs, dyn, {"batch": (2, [1, 3]), "seq": (7, [4, 12])}


class _LlamaStep(torch.nn.Module):
    """One decoding step with a DynamicCache of past keys/values as a keyword input."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import LlamaForCausalLM

        self.inner = LlamaForCausalLM(_llama_config())

    def forward(self, input_ids, *, cache):
        out = self.inner(input_ids=input_ids, past_key_values=cache, use_cache=True)
        return out.logits


def llama_cache() -> Built:
    from transformers import DynamicCache
    from transformers.integrations.executorch import register_dynamic_cache_export_support

    register_dynamic_cache_export_support()  # DynamicCache as a pytree (transformers' own)
    model = _LlamaStep()
    cfg = model.inner.config
    heads, dim = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads

    def cache(b: int, past: int) -> Any:
        c = DynamicCache()
        for layer in range(cfg.num_hidden_layers):
            c.update(torch.randn(b, heads, past, dim), torch.randn(b, heads, past, dim), layer)
        return c

    # the past length as Dim.AUTO: a named Dim fails export (a min(...) guard sympy cannot
    # prove); AUTO lets torch.export record the guard, which the pack then checks
    b = Dim("batch", min=1, max=4)
    kwargs = {"cache": cache(2, 5)}
    per_layer = [{0: b, 2: Dim.AUTO}] * cfg.num_hidden_layers
    dyn = {"input_ids": {0: b}, "cache": [per_layer, per_layer]}  # key_cache, value_cache
    return model, (_ids(2, 1),), kwargs, dyn, {"batch": (2, [1, 3])}


def t5_encoder() -> Built:
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=99, d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8)
    model = T5EncoderModel(cfg)
    b, s = Dim("batch", min=1, max=8), Dim("seq", min=2, max=32)
    kwargs = {"input_ids": _ids(2, 7), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    dyn = {k: {0: b, 1: s} for k in kwargs}
    return model, (), kwargs, dyn, {"batch": (2, [1, 3]), "seq": (7, [3, 15])}


def whisper_encoder() -> Built:
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    cfg = WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=4,
                        encoder_ffn_dim=64, num_mel_bins=8, max_source_positions=16)  # fmt: skip
    model = WhisperEncoder(cfg)
    b = Dim("batch", min=1, max=8)
    args = (torch.randn(2, 8, 32),)  # (batch, mel bins, 2 * max_source_positions)
    return model, args, {}, ({0: b},), {"batch": (2, [1, 5])}


def vit() -> Built:
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=37)  # fmt: skip
    model = ViTModel(cfg)
    b = Dim("batch", min=1, max=8)
    return model, (torch.randn(2, 3, 32, 32),), {}, ({0: b},), {"batch": (2, [1, 6])}


def clip() -> Built:
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config={"vocab_size": 99, "hidden_size": 32, "intermediate_size": 37,
                     "num_hidden_layers": 2, "num_attention_heads": 4,
                     "max_position_embeddings": 32},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32,
                       "intermediate_size": 37, "num_hidden_layers": 2,
                       "num_attention_heads": 4},
        projection_dim=16,
    )  # fmt: skip
    model = CLIPModel(cfg)
    b, s = Dim("batch", min=1, max=8), Dim("seq", min=2, max=16)
    kwargs = {"input_ids": _ids(2, 7), "pixel_values": torch.randn(2, 3, 32, 32),
              "attention_mask": torch.ones(2, 7, dtype=torch.long)}  # fmt: skip
    dyn = {"input_ids": {0: b, 1: s}, "pixel_values": {0: b}, "attention_mask": {0: b, 1: s}}
    return model, (), kwargs, dyn, {"batch": (2, [1, 3]), "seq": (7, [2, 12])}


TRANSFORMERS = {
    "transformers/bert": bert,
    "transformers/gpt2": gpt2,
    "transformers/llama": llama,
    "transformers/llama_dynamic_cache": llama_cache,
    "transformers/t5_encoder": t5_encoder,
    "transformers/whisper_encoder": whisper_encoder,
    "transformers/vit": vit,
    "transformers/clip": clip,
}


def _image(name: str, make, size: int = 64) -> Any:
    def build() -> Built:
        model = make()
        b = Dim("batch", min=1, max=8)
        return model, (torch.randn(2, 3, size, size),), {}, ({0: b},), {"batch": (2, [1, 3])}

    return build


def _tv(name: str, **kw):
    def make():
        import torchvision

        return getattr(torchvision.models, name)(weights=None, **kw)

    return make


def _tv_vit():
    import torchvision

    return torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2,
                                                num_heads=2, hidden_dim=32, mlp_dim=64)  # fmt: skip


def _seg():
    import torchvision

    return torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None
    )


def _timm(name: str):
    def make():
        import timm

        return timm.create_model(name, pretrained=False, num_classes=10)

    return make


VISION = {
    "torchvision/resnet18": _image("resnet18", _tv("resnet18")),
    "torchvision/mobilenet_v3_small": _image("mobilenet_v3_small", _tv("mobilenet_v3_small")),
    "torchvision/efficientnet_b0": _image("efficientnet_b0", _tv("efficientnet_b0")),
    "torchvision/vit": _image("vit", _tv_vit, size=32),
    "torchvision/convnext_tiny": _image("convnext_tiny", _tv("convnext_tiny")),
    "torchvision/lraspp_mobilenet_v3": _image("lraspp", _seg),
    "timm/resnet10t": _image("resnet10t", _timm("resnet10t")),
    "timm/vit_tiny_patch16_224": _image("vit_tiny", _timm("vit_tiny_patch16_224"), size=224),
    "timm/convnext_atto": _image("convnext_atto", _timm("convnext_atto")),
}
