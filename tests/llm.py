"""A small transformers Llama with a static KV cache, exported as two entry points of the same
module: ``prefill`` (a dynamic sequence) and ``decode`` (one token). Used by
tests/test_multi_entry.py, tools/bench_entry_points.py and tools/make_fixtures.py."""

from __future__ import annotations

from typing import Any

import torch

MAX_CACHE = 32


def llama(hidden: int = 32, layers: int = 2, vocab: int = 128, seed: int = 0) -> Any:
    """The eager model (seeded), and a fresh static-cache wrapper of it (``make()``)."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.integrations.executorch import TorchExportableModuleWithStaticCache

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=2 * MAX_CACHE)  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config = GenerationConfig(
        use_cache=True, cache_implementation="static",
        cache_config={"batch_size": 1, "max_cache_len": MAX_CACHE},
    )  # fmt: skip

    def make() -> torch.nn.Module:
        return TorchExportableModuleWithStaticCache(model, batch_size=1, max_cache_len=MAX_CACHE)

    return make


def export_entry_points(module: torch.nn.Module) -> dict[str, torch.export.ExportedProgram]:
    """prefill (sequence 2..16) and decode (one token), from the same module: they share its
    cache tensors, which the pack then shares."""
    seq = torch.export.Dim("seq", min=2, max=16)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        prefill = torch.export.export(
            module, (), {"input_ids": ids, "cache_position": torch.arange(4)},
            dynamic_shapes={"input_ids": {1: seq}, "cache_position": {0: seq}}, strict=False,
        )  # fmt: skip
        decode = torch.export.export(
            module, (), {"input_ids": ids[:, :1], "cache_position": torch.tensor([4])},
            strict=False,
        )  # fmt: skip
    return {"prefill": prefill, "decode": decode}


def generate(prefill: Any, decode: Any, prompt: list[int], steps: int) -> tuple[list[int], list]:
    """Greedy generation: the tokens and each step's last logits."""
    with torch.no_grad():
        ids = torch.tensor([prompt])
        logits = prefill(input_ids=ids, cache_position=torch.arange(len(prompt)))[:, -1]
        tokens, all_logits = [], [logits.clone()]
        for i in range(steps):
            tok = int(logits.argmax(-1))
            tokens.append(tok)
            pos = torch.tensor([len(prompt) + i])
            logits = decode(input_ids=torch.tensor([[tok]]), cache_position=pos)[:, -1]
            all_logits.append(logits.clone())
    return tokens, all_logits
