"""A small transformers T5 (built from a config, no download) exported as two entry points of
one module: ``encoder`` (a dynamic source sequence) and ``decoder``, either stateless (the
decoder tokens so far and the encoder's output, no cache: each step runs the whole target
prefix) or stateful (one token per step, a static self-attention cache written in place:
``export_cached_entry_points``). Used by tests/test_multi_entry.py."""

from __future__ import annotations

from typing import Any

import torch

START = 0  # T5's decoder_start_token_id (the pad token)


def t5(seed: int = 1) -> Any:
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                   num_decoder_layers=2, num_heads=4, decoder_start_token_id=START,
                   pad_token_id=0, eos_token_id=1, dropout_rate=0.0)  # fmt: skip
    model = T5ForConditionalGeneration(cfg).eval()
    # T5's own init makes a model this small repeat one token; a wider draw (seen: seed 1, std
    # 0.3) gives a varied greedy sequence, so equal tokens are a real check
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


class Encoder(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model  # the whole model under one name: both entry points name weights alike

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.encoder(input_ids=input_ids).last_hidden_state


class Decoder(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, decoder_input_ids: torch.Tensor, encoder_hidden_states: torch.Tensor) -> Any:
        return self.model(encoder_outputs=(encoder_hidden_states,), use_cache=False,
                          decoder_input_ids=decoder_input_ids).logits  # fmt: skip


def export_entry_points(model: torch.nn.Module) -> dict[str, torch.export.ExportedProgram]:
    """encoder (source 2..32) and decoder (target 1..16 against source 2..32)."""
    src = torch.export.Dim("src", min=2, max=32)
    tgt = torch.export.Dim("tgt", min=1, max=16)
    ids = torch.tensor([[5, 17, 42, 7, 99]])
    with torch.no_grad():
        hidden = Encoder(model)(ids)
        encoder = torch.export.export(Encoder(model), (), {"input_ids": ids},
                                      dynamic_shapes={"input_ids": {1: src}}, strict=False)  # fmt: skip
        decoder = torch.export.export(
            Decoder(model), (),
            {"decoder_input_ids": torch.tensor([[START, 3]]), "encoder_hidden_states": hidden},
            dynamic_shapes={"decoder_input_ids": {1: tgt}, "encoder_hidden_states": {1: src}},
            strict=False,
        )  # fmt: skip
    return {"encoder": encoder, "decoder": decoder}


def generate(encoder: Any, decoder: Any, source: list[int], steps: int) -> tuple[list[int], list]:
    """Greedy generation through the two entry points: the tokens and each step's logits."""
    with torch.no_grad():
        hidden = encoder(input_ids=torch.tensor([source]))
        target, all_logits = [START], []
        for _ in range(steps):
            logits = decoder(decoder_input_ids=torch.tensor([target]),
                             encoder_hidden_states=hidden)[:, -1]  # fmt: skip
            all_logits.append(logits.clone())
            target.append(int(logits.argmax(-1)))
    return target[1:], all_logits


def eager_generate(model: Any, source: list[int], steps: int) -> tuple[list[int], list]:
    """transformers' own greedy generate (with its KV cache): the reference."""
    with torch.no_grad():
        out = model.generate(torch.tensor([source]), max_new_tokens=steps, min_new_tokens=steps,
                             do_sample=False, num_beams=1, output_logits=True,
                             return_dict_in_generate=True)  # fmt: skip
    return out.sequences[0, 1:].tolist(), [logits.clone() for logits in out.logits]


MAX_TARGET = 16  # the static self-attention cache's length: the most decoder steps


class CachedDecoder(torch.nn.Module):
    """One decoder step (one token at ``cache_position``) with a static self-attention cache,
    the layout of transformers' ``Seq2SeqLMDecoderExportableModuleWithStaticCache`` (a
    ``StaticCache`` for self-attention in an ``EncoderDecoderCache``), but through the whole
    model's forward under ``self.model``: the weights are named as the encoder's are (so the
    pack stores them once), and T5's tied-embedding output scaling (``d_model ** -0.5`` before
    ``lm_head``) is applied, which transformers' wrapper, calling ``lm_head`` directly, skips.

    The cache tensors are written in place by ``index_copy_`` (torch.export lifts them as
    constants): the entry point's state. Cross-attention keys/values are recomputed from
    ``encoder_hidden_states`` each step: T5 decides whether to read its cross-attention cache
    by a Python flag (``EncoderDecoderCache.is_updated``), fixed when the graph is traced, so
    one exported step graph cannot both fill that cache on the first step and read it later."""

    def __init__(self, model: torch.nn.Module) -> None:
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache, StaticCache

        super().__init__()
        self.model = model
        cfg = model.config
        self.static_cache = StaticCache(config=cfg, max_cache_len=MAX_TARGET)
        self.static_cache.early_initialization(1, cfg.num_heads, cfg.d_kv, torch.float32,
                                               torch.device("cpu"))  # fmt: skip
        self.cache = EncoderDecoderCache(self.static_cache, DynamicCache(config=cfg))

    def reset(self) -> None:
        for layer in self.static_cache.layers:
            layer.keys.zero_()
            layer.values.zero_()

    def forward(self, decoder_input_ids: torch.Tensor, encoder_hidden_states: torch.Tensor,
                cache_position: torch.Tensor) -> Any:  # fmt: skip
        return self.model(encoder_outputs=(encoder_hidden_states,), use_cache=True,
                          decoder_input_ids=decoder_input_ids, past_key_values=self.cache,
                          cache_position=cache_position).logits  # fmt: skip


def export_cached_entry_points(model: torch.nn.Module) -> dict[str, torch.export.ExportedProgram]:
    """encoder (source 2..32) and a one-token decoder step with its static cache (state)."""
    src = torch.export.Dim("src", min=2, max=32)
    ids = torch.tensor([[5, 17, 42, 7, 99]])
    decoder = CachedDecoder(model)
    with torch.no_grad():
        hidden = Encoder(model)(ids)
        encoder = torch.export.export(Encoder(model), (), {"input_ids": ids},
                                      dynamic_shapes={"input_ids": {1: src}}, strict=False)  # fmt: skip
        step = torch.export.export(
            decoder, (),
            {"decoder_input_ids": torch.tensor([[START]]), "encoder_hidden_states": hidden,
             "cache_position": torch.tensor([0])},
            dynamic_shapes={"decoder_input_ids": None, "encoder_hidden_states": {1: src},
                            "cache_position": None},
            strict=False,
        )  # fmt: skip
    decoder.reset()  # the saved state: an empty cache
    return {"encoder": encoder, "decoder": step}


def generate_cached(
    encoder: Any, decoder: Any, source: list[int], steps: int
) -> tuple[list[int], list]:
    """Greedy generation, one token per decoder call (the cache holds the prefix)."""
    with torch.no_grad():
        hidden = encoder(input_ids=torch.tensor([source]))
        token, tokens, all_logits = START, [], []
        for i in range(steps):
            logits = decoder(decoder_input_ids=torch.tensor([[token]]), encoder_hidden_states=hidden,
                             cache_position=torch.tensor([i]))[:, -1]  # fmt: skip
            all_logits.append(logits.clone())
            token = int(logits.argmax(-1))
            tokens.append(token)
    return tokens, all_logits
