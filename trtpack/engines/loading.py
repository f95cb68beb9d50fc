"""Engines out of a pack: choose the variant that fits this machine, check its members,
and build the runner — or say, in one line, why the ExportedProgram runs instead."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import EngineError, NoUsableEngineError, TrtpackError
from ..format.container import PackReader
from ..format.manifest import Manifest, Variant
from .plan import check_variant_plans
from .select import TENSORRT_LEAN, Choice, Environment, load_choice, runtime_for


@dataclass
class EngineLoad:
    runner: Any | None
    variant: Variant | None
    reason: str | None  # why no engine runs (None when one does)


def load_engines(
    reader: PackReader,
    manifest: Manifest,
    device: torch.device,
    *,
    verify: bool,
    require_engine: bool,
    variant: str | None,
    environment: Environment | None = None,
    host_code_allowed: bool = False,
) -> EngineLoad:
    """Try the fitting variants, best first; the first that builds wins. ``host_code_allowed``:
    the pack's signature was verified, or the caller trusts it (see select.HOST_CODE_REFUSED)."""
    if variant is not None and variant not in {v.name for v in manifest.engines}:
        names = ", ".join(v.name for v in manifest.engines) or "none"
        raise NoUsableEngineError(
            f"{reader.path} has no engine variant {variant!r} (variants: {names})"
        )
    if not manifest.engines:
        reason = "the pack holds no TensorRT engine"
    elif device.type != "cuda" and torch.cuda.is_available():
        reason = f"the pack was loaded for {device}, and TensorRT engines run on CUDA devices"
    else:
        if environment is None:
            from .torchtrt import probe_environment

            environment = probe_environment()
        choice = load_choice(manifest.engines, environment, only=variant,
                             host_code_allowed=host_code_allowed)  # fmt: skip
        environment = dataclasses.replace(environment, host_code_allowed=host_code_allowed)
        refused = dict(choice.refused)
        for candidate in choice.fitting:
            # a plan allowed to run host code is hashed whatever ``verify`` says: trust in a
            # pack (signed or declared) never extends to bytes nobody compared with it
            host_code = environment.host_code_allowed and bool(candidate.target.embeds_lean_runtime)
            try:
                _check_members(reader, manifest, candidate, verify or host_code)
                runner = _build(reader, manifest, candidate, device, environment)
                return EngineLoad(runner, candidate, None)
            except TrtpackError as e:
                refused[candidate.name] = str(e)
            except Exception as e:  # TensorRT / CUDA refusing the engine: report, fall back
                refused[candidate.name] = (
                    f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                )
        reason = Choice(choice.fitting, refused).summary()
    if require_engine:
        raise NoUsableEngineError(f"{reader.path}: {reason}")
    return EngineLoad(None, None, reason)


def _check_members(reader: PackReader, manifest: Manifest, v: Variant, verify: bool) -> None:
    """Before TensorRT sees a byte: hashes match, and each plan's header agrees with the
    manifest (a swapped or damaged plan is caught here, not by TensorRT)."""
    names = [e.member for e in v.engines]
    if v.program is not None:
        names += [v.program.graph, v.program.weights]
    if verify:
        for name in names:
            m = manifest.members[name]
            reader.verify(name, m)
    check_variant_plans(reader.view, v, "")


def _build(
    reader: PackReader, manifest: Manifest, v: Variant, device: torch.device, env: Environment
) -> Any:
    from ..program.serialize import load_program, runnable

    if runtime_for(v.target, env, whole_graph=v.whole_graph) == TENSORRT_LEAN:
        from .lean import LeanEngineRunner

        (e,) = v.engines  # a whole-graph variant (select.py): its bindings are checked inside
        allowed = env.host_code_allowed and bool(v.target.embeds_lean_runtime)
        runner = LeanEngineRunner(bytes(reader.view(e.member)), e, device,
                                  host_code_allowed=allowed)  # fmt: skip
        return WholeGraphRunner(runner, manifest, [b.name for b in e.inputs])
    from .torchtrt import engine_io, engine_module

    if v.described:  # bindings from a description: confirm them before the first call
        from .plan import bindings_mismatch

        for e in v.engines:
            problem = bindings_mismatch(e, engine_io(bytes(reader.view(e.member)), v.target.flavor))
            if problem is not None:
                raise EngineError(f"engine {e.member}: {problem}", member=e.member,
                                  field="bindings")  # fmt: skip
    modules = {
        e.name: engine_module(
            bytes(reader.view(e.member)),
            [b.name for b in e.inputs],
            [b.name for b in e.outputs],
            name=e.name.removesuffix("_engine"),
            settings=e.settings or {},
            device=device,
        )
        for e in v.engines
    }
    for e in v.engines:  # several profiles: torch_tensorrt picks the one that fits each call
        if any(len(b.profiles) > 1 for b in e.inputs):
            modules[e.name].set_optimization_profile("auto")
    if v.program is None:
        (module,) = modules.values()
        return WholeGraphRunner(module, manifest, [b.name for b in v.engines[0].inputs])
    engines = {name: m.engine for name, m in modules.items()}
    ep = load_program(reader, manifest, device=device, ref=v.program, engines=engines)
    return runnable(ep)


class WholeGraphRunner:
    """One engine run directly: the call's tensors go in by binding name, the outputs come
    back nested as the manifest's output tree."""

    def __init__(self, module: Any, manifest: Manifest, binding_order: list[str]) -> None:
        from ..contract import Contract
        from ..program.treespec import to_treespec

        self.module = module
        positions = {spec.name: i for i, spec in enumerate(manifest.inputs)}
        self.order = [positions[name] for name in binding_order]
        self.flatten = Contract(manifest).flatten
        self.out_spec = to_treespec(manifest.output_tree)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch.utils._pytree as pytree

        leaves = self.flatten(args, kwargs)
        outputs = self.module(*(leaves[i] for i in self.order))
        if isinstance(outputs, torch.Tensor):
            outputs = [outputs]
        return pytree.tree_unflatten(list(outputs), self.out_spec)
