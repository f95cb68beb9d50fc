"""Registered pytree classes as users have them (a dataclass output, a transformers-style KV
cache as a keyword input), for tests/test_pytrees.py and the subprocesses it starts."""

from __future__ import annotations

import dataclasses

import torch
import torch.utils._pytree as pytree


@dataclasses.dataclass
class Output:
    logits: torch.Tensor
    hidden: torch.Tensor


torch.export.register_dataclass(Output, serialized_type_name="pytree_models.Output")


class Cache:
    """Shaped like transformers' DynamicCache of 4.x: per-layer key and value tensors."""

    def __init__(self, keys, values) -> None:
        self.key_cache, self.value_cache = list(keys), list(values)


pytree.register_pytree_node(
    Cache,
    lambda c: ([c.key_cache, c.value_cache], ["key_cache", "value_cache"]),
    lambda children, _: Cache(*children),
    serialized_type_name="pytree_models.Cache",
    flatten_with_keys_fn=lambda c: (
        [
            (pytree.MappingKey("key_cache"), c.key_cache),
            (pytree.MappingKey("value_cache"), c.value_cache),
        ],
        ["key_cache", "value_cache"],
    ),
)


class Decoder(torch.nn.Module):
    def forward(self, x, *, cache: Cache) -> Output:
        k = torch.cat([x, cache.key_cache[0]], dim=1)
        v = torch.cat([x, cache.value_cache[0]], dim=1)
        return Output(logits=(k * v).sum(-1), hidden=k + cache.key_cache[1].mean())


def example(seq: int = 3, past: int = 5) -> tuple[tuple, dict]:
    torch.manual_seed(0)
    kv = lambda: torch.randn(2, past, 4)  # noqa: E731
    return (torch.randn(2, seq, 4),), {"cache": Cache([kv(), kv()], [kv(), kv()])}


class GuardedDecoder(Decoder):
    """A cache input and shape-dependent Python (a guard beyond the ranges): the call's
    structure must be rebuilt with the registered class when the program checks its guards."""

    def forward(self, x, *, cache: Cache) -> Output:
        if x.shape[1] % 2 == 0:
            x = x * 2
        return super().forward(x, cache=cache)
