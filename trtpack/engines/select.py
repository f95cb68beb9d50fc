"""Which engine variant can run here, and if none, why — decided from facts alone.

``Environment`` is what this machine offers (probed once by the torch_tensorrt glue);
``choose`` ranks the variants that fit and explains the ones that do not. No GPU, torch or
TensorRT is needed to run this, so every rule is tested on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..format.manifest import Target, Variant


@dataclass(frozen=True)
class Environment:
    """What the machine offers for running engines."""

    #: the CUDA GPU's compute capability, e.g. (9, 0); None: no CUDA GPU
    gpu: tuple[int, int] | None = None
    gpu_name: str = ""
    #: installed TensorRT runtimes by flavour: {"tensorrt": "10.13.3.9", "tensorrt_rtx": ...}
    runtimes: dict[str, str] = field(default_factory=dict)
    #: torch_tensorrt's version and the TensorRT flavour it was built for; None: not importable
    torch_tensorrt: str | None = None
    torch_tensorrt_flavor: str | None = None
    #: why torch_tensorrt is unusable, when it is
    torch_tensorrt_problem: str | None = None
    cuda_runtime: str | None = None
    platform: str = ""


@dataclass(frozen=True)
class Choice:
    """The ranked variants that fit, and one reason for each variant that does not."""

    fitting: tuple[Variant, ...]
    refused: dict[str, str]

    def summary(self) -> str:
        if not self.refused:
            return "the pack has no engine variant"
        parts = [f"{name}: {reason}" for name, reason in self.refused.items()]
        return "no engine variant can run here (" + "; ".join(parts) + ")"


#: Which TensorRT runtimes run a version-compatible engine, by (builder major, runtime major),
#: from NVIDIA's TensorRT 11.4.1 Support Matrix, "Engine Portability"
#: (https://docs.nvidia.com/deeplearning/tensorrt/11.4.1/getting-started/support-matrix.html):
#: "Two combinations are supported across major versions: TensorRT 10 version-compatible
#: engines can run with a TensorRT 11 runtime, and TensorRT 8 version-compatible engines can
#: run with a TensorRT 10 runtime. No other combination across major versions is supported."
#: Within one major, any runtime at least as new as the builder (TensorRT 11.1 "Engine
#: Compatibility": "built with ... 11.0 will be compatible with TensorRT 11.1 and later 11.x").
#: Version compatibility exists from 8.6 on, for the builder and the runtime (10.16 "Version
#: Compatibility"). A plain (not version-compatible) engine needs the exact version.
VERSION_COMPATIBLE_ACROSS_MAJORS: frozenset[tuple[int, int]] = frozenset({(10, 11), (8, 10)})
_FIRST_VERSION_COMPATIBLE = (8, 6)


def version_compatible_runtime_problem(built: str, runtime: str) -> str | None:
    """None if a version-compatible engine built with TensorRT ``built`` runs on the TensorRT
    ``runtime``, else why not (the rules above, one sentence each)."""
    b, r = _version(built), _version(runtime)
    if b[:2] < _FIRST_VERSION_COMPATIBLE or r[:2] < _FIRST_VERSION_COMPATIBLE:
        return (
            f"version compatibility starts at TensorRT 8.6 (built with {built}, this runtime is "
            f"{runtime})"
        )
    if b[:1] == r[:1]:
        if r < b:
            return (
                f"built version-compatible with TensorRT {built}: needs TensorRT {b[0]}.x at "
                f"least that new, this runtime is {runtime}"
            )
        return None
    if (b[0], r[0]) in VERSION_COMPATIBLE_ACROSS_MAJORS:
        return None
    runs_on = sorted(m for k, m in VERSION_COMPATIBLE_ACROSS_MAJORS if k == b[0])
    also = f" or {', '.join(f'{m}.x' for m in runs_on)}" if runs_on else ""
    return (
        f"built version-compatible with TensorRT {built}: runs on TensorRT {b[0]}.x (at least "
        f"that new){also}, not on this runtime {runtime} (NVIDIA's support matrix)"
    )


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def _cc(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


def why_not(target: Target, env: Environment) -> str | None:
    """None if engines built for ``target`` can run in ``env``, else the first reason why not.
    Facts about the engines and the GPU come first: they hold whatever is installed."""
    if env.gpu is None:
        return "no CUDA GPU on this machine"
    if env.platform and target.platform and target.platform != env.platform:
        return f"built for {target.platform}, this machine is {env.platform}"
    gpu = f"{env.gpu[0]}.{env.gpu[1]}"
    ccs = target.compute_capabilities
    if target.hardware_compatibility == "ampere_plus":
        if env.gpu < (8, 0):
            return f"built hardware-compatible for Ampere and newer; this GPU is {gpu}"
    elif ccs and gpu not in ccs and not (target.future_gpus and env.gpu > max(map(_cc, ccs))):
        return f"built for compute capability {', '.join(ccs)}; this GPU is {gpu}"
    if env.torch_tensorrt is None:
        return env.torch_tensorrt_problem or "torch_tensorrt is not installed"
    if env.torch_tensorrt_flavor and env.torch_tensorrt_flavor != target.flavor:
        return (
            f"built with {target.flavor}, but the installed torch_tensorrt "
            f"{env.torch_tensorrt} runs {env.torch_tensorrt_flavor} engines"
        )
    runtime = env.runtimes.get(target.flavor)
    if runtime is None:
        return f"built with {target.flavor} {target.trt_version}, which is not installed"
    built, have = _version(target.trt_version), _version(runtime)
    if target.flavor == "tensorrt_rtx":
        if built[:3] != have[:3]:  # the RTX runtime compares major.minor.patch
            return f"built with TensorRT-RTX {target.trt_version}, this runtime is {runtime}"
    elif target.version_compatible:
        problem = version_compatible_runtime_problem(target.trt_version, runtime)
        if problem is not None:
            return problem
    elif built[:3] != have[:3]:
        return f"built with TensorRT {target.trt_version}, this runtime is {runtime}"
    if target.cuda_runtime and env.cuda_runtime:
        if _version(env.cuda_runtime) < _version(target.cuda_runtime):
            return f"needs CUDA runtime {target.cuda_runtime}, this one is {env.cuda_runtime}"
    return None


def _rank(target: Target, env: Environment) -> tuple[int, int]:
    """Lower is better: an exact compute-capability match before a hardware-compatible one,
    an exact TensorRT version before a version-compatible one."""
    exact_gpu = env.gpu is not None and f"{env.gpu[0]}.{env.gpu[1]}" in target.compute_capabilities
    runtime = env.runtimes.get(target.flavor, "")
    exact_version = _version(runtime)[:3] == _version(target.trt_version)[:3]
    return (0 if exact_gpu else 1, 0 if exact_version else 1)


def choose(variants: tuple[Variant, ...], env: Environment, *, only: str | None = None) -> Choice:
    """The variants that can run in ``env``, best first (ties keep the pack's order)."""
    fitting: list[Variant] = []
    refused: dict[str, str] = {}
    for variant in variants:
        if only is not None and variant.name != only:
            continue
        reason = why_not(variant.target, env)
        if reason is None:
            fitting.append(variant)
        else:
            refused[variant.name] = reason
    fitting.sort(key=lambda v: _rank(v.target, env))
    return Choice(tuple(fitting), refused)
