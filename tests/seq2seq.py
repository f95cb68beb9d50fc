"""A small transformers T5 (built from a config, no download) exported as two stateless entry
points of one module: ``encoder`` (a dynamic source sequence) and ``decoder`` (the decoder
tokens so far and the encoder's output, no cache: each step runs the whole target prefix).
Used by tests/test_multi_entry.py."""

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
