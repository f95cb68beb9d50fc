"""A small transformers T5 (built from a config, no download) exported as two entry points of
one module: ``encoder`` (a dynamic source sequence) and ``decoder``, either stateless (the
decoder tokens so far and the encoder's output, no cache: each step runs the whole target
prefix) or stateful (``export_cached_entry_points``: the encoder writes each decoder layer's
cross-attention keys/values into buffers, the decoder takes one token per step, reads them
and writes its static self-attention cache). Used by tests/test_multi_entry.py."""

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
MAX_SOURCE = 32  # the cross-attention cache's length: the longest source


class Caches(torch.nn.Module):
    """The model and its decoder's caches, held by both entry points under one name (so both
    programs name every tensor alike): a transformers ``StaticCache`` for self-attention (as
    ``Seq2SeqLMDecoderExportableModuleWithStaticCache`` in transformers 4.57 makes it) and,
    for cross-attention, one registered buffer per layer for keys and for values, of
    ``MAX_SOURCE`` positions (the source is padded to that and masked)."""

    def __init__(self, model: torch.nn.Module) -> None:
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache, StaticCache

        super().__init__()
        self.model = model
        cfg = model.config
        self.self_cache = StaticCache(config=cfg, max_cache_len=MAX_TARGET)
        self.self_cache.early_initialization(1, cfg.num_heads, cfg.d_kv, torch.float32,
                                             torch.device("cpu"))  # fmt: skip
        cross = DynamicCache(config=cfg)
        for i in range(cfg.num_decoder_layers):
            k = torch.zeros(1, cfg.num_heads, MAX_SOURCE, cfg.d_kv)
            cross.update(k, torch.zeros_like(k), i)
            self.register_buffer(f"cross_k{i}", cross.layers[i].keys, persistent=False)
            self.register_buffer(f"cross_v{i}", cross.layers[i].values, persistent=False)
        self.cache = EncoderDecoderCache(self.self_cache, cross)

    def reset(self) -> None:
        for t in (*self.buffers(), *(x for layer in self.self_cache.layers
                                     for x in (layer.keys, layer.values))):  # fmt: skip
            t.zero_()


class CachingEncoder(torch.nn.Module):
    """The encoder entry point: the source's hidden states, and (state written in place) each
    decoder layer's cross-attention keys and values of them, at positions 0..n-1."""

    def __init__(self, caches: Caches) -> None:
        super().__init__()
        self.t5 = caches

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        model = self.t5.model
        cfg = model.config
        hidden = model.encoder(input_ids=input_ids).last_hidden_state
        n = hidden.shape[1]
        where = torch.arange(n)
        for i, block in enumerate(model.decoder.block):
            attention = block.layer[1].EncDecAttention
            for proj, name in ((attention.k, "cross_k"), (attention.v, "cross_v")):
                x = proj(hidden).view(1, n, cfg.num_heads, cfg.d_kv).transpose(1, 2)
                getattr(self.t5, f"{name}{i}").index_copy_(2, where, x)
        return hidden


class CachedDecoder(torch.nn.Module):
    """One decoder step (one token at ``cache_position``) through the whole model's forward
    (so T5's tied-embedding output scaling, ``d_model ** -0.5`` before ``lm_head``, is applied,
    which transformers' ``Seq2SeqLMDecoderExportableModuleWithStaticCache``, calling
    ``lm_head`` directly, skips): the self-attention cache written in place (``index_copy_``:
    torch.export lifts its tensors as constants), the cross-attention keys and values read
    from the encoder's buffers, masked by ``encoder_attention_mask`` (1 for the source's
    positions of the ``MAX_SOURCE``).

    T5 reads its cross-attention cache when ``EncoderDecoderCache.is_updated[layer]`` is set
    (a Python flag, fixed when the graph is traced): set here, with each layer's cache
    pointed at the registered buffers inside ``forward``, so the graph reads them by their
    buffer names, the names the encoder writes (reached through the cache object alone,
    torch.export would lift them as constants of other names, and the pack would refuse)."""

    def __init__(self, caches: Caches) -> None:
        super().__init__()
        self.t5 = caches

    def forward(self, decoder_input_ids: torch.Tensor, encoder_attention_mask: torch.Tensor,
                cache_position: torch.Tensor) -> Any:  # fmt: skip
        t5 = self.t5
        for i, layer in enumerate(t5.cache.cross_attention_cache.layers):
            t5.cache.is_updated[i] = True
            layer.keys, layer.values = getattr(t5, f"cross_k{i}"), getattr(t5, f"cross_v{i}")
        unused = torch.zeros(1, MAX_SOURCE, t5.model.config.d_model)  # keys/values are cached
        return t5.model(encoder_outputs=(unused,), attention_mask=encoder_attention_mask,
                        decoder_input_ids=decoder_input_ids, past_key_values=t5.cache,
                        use_cache=True, cache_position=cache_position).logits  # fmt: skip


def export_cached_entry_points(model: torch.nn.Module) -> dict[str, torch.export.ExportedProgram]:
    """encoder (source 2..MAX_SOURCE; writes the cross-attention cache) and a one-token
    decoder step (reads it; writes its self-attention cache), from one ``Caches``."""
    caches = Caches(model)
    src = torch.export.Dim("src", min=2, max=MAX_SOURCE)
    ids = torch.tensor([[5, 17, 42, 7, 99]])
    with torch.no_grad():
        encoder = torch.export.export(CachingEncoder(caches), (), {"input_ids": ids},
                                      dynamic_shapes={"input_ids": {1: src}}, strict=False)  # fmt: skip
        step = torch.export.export(
            CachedDecoder(caches), (),
            {"decoder_input_ids": torch.tensor([[START]]),
             "encoder_attention_mask": source_mask(len(ids[0])),
             "cache_position": torch.tensor([0])},
            strict=False,
        )  # fmt: skip
    caches.reset()  # the saved state: empty caches
    return {"encoder": encoder, "decoder": step}


def source_mask(n: int) -> torch.Tensor:
    mask = torch.zeros(1, MAX_SOURCE, dtype=torch.long)
    mask[:, :n] = 1
    return mask


def generate_cached(
    encoder: Any, decoder: Any, source: list[int], steps: int
) -> tuple[list[int], list]:
    """Greedy generation through the stateful entry points: the encoder fills the
    cross-attention cache, then one token per decoder call (the self-attention cache holds the
    prefix)."""
    with torch.no_grad():
        encoder(input_ids=torch.tensor([source]))
        mask = source_mask(len(source))
        token, tokens, all_logits = START, [], []
        for i in range(steps):
            logits = decoder(decoder_input_ids=torch.tensor([[token]]),
                             encoder_attention_mask=mask,
                             cache_position=torch.tensor([i]))[:, -1]  # fmt: skip
            all_logits.append(logits.clone())
            token = int(logits.argmax(-1))
            tokens.append(token)
    return tokens, all_logits
