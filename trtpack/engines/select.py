"""Which engine variant can run here, and if none, why — decided from facts alone.

``Environment`` is what this machine offers (probed once by the torch_tensorrt glue);
``choose`` ranks the variants that fit and explains the ones that do not. No GPU, torch or
TensorRT is needed to run this, so every rule is tested on any machine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import TargetSpecError
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
    #: the standard TensorRT lean runtime's version (``tensorrt_lean``), when installed: it
    #: runs version-compatible whole-graph engines without torch_tensorrt
    lean_runtime: str | None = None
    #: whether TensorRT may run host code embedded in a plan (a version-compatible plan that
    #: carries the lean runtime): only for a pack whose signature was verified at load, or
    #: when the caller trusts the pack explicitly (``load(trust_engine_host_code=True)``)
    host_code_allowed: bool = False


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
        if r < b[: len(r)]:  # a runtime named by a prefix ("10.13", preflight) is any 10.13.x
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


def _same_release(built: tuple[int, ...], have: tuple[int, ...]) -> bool:
    """major.minor.patch equal; a runtime named by a shorter prefix (a preflight target's
    ``trt=10.13``) matches every release under it. An installed runtime has all three."""
    n = min(3, len(have))
    return built[:n] == have[:n]


def _cc(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


#: why a plan with host code is not loaded (the remedy included)
HOST_CODE_REFUSED = (
    "its plans embed TensorRT's lean runtime, which is host code; trtpack lets TensorRT run it "
    "only for a pack whose signature is verified at load (require_signature=) or with "
    "trust_engine_host_code=True"
)

#: the runtimes that run engines, best first
TORCH_TENSORRT, TENSORRT_LEAN = "torch_tensorrt", "tensorrt_lean"


def why_not(target: Target, env: Environment, *, whole_graph: bool = False) -> str | None:
    """None if engines built for ``target`` can run in ``env``, else the first reason why not.
    Facts about the engines and the GPU come first: they hold whatever is installed."""
    problem = _engine_problem(target, env)
    if problem is not None:
        return problem
    via_torch_tensorrt = _torch_tensorrt_problem(target, env)
    if via_torch_tensorrt is None:
        return _cuda_problem(target, env)
    via_lean = _lean_problem(target, env, whole_graph)
    if via_lean is None:
        return _cuda_problem(target, env)
    return f"{via_torch_tensorrt}; {via_lean}" if target.version_compatible else via_torch_tensorrt


def runtime_for(target: Target, env: Environment, *, whole_graph: bool) -> str:
    """Which runtime runs a fitting variant: torch_tensorrt where it can, else the lean
    runtime (a version-compatible whole-graph engine: no program to wire it into)."""
    if _torch_tensorrt_problem(target, env) is None:
        return TORCH_TENSORRT
    return TENSORRT_LEAN


def _lean_problem(target: Target, env: Environment, whole_graph: bool) -> str | None:
    """None if the standard lean runtime runs these engines: version-compatible TensorRT
    plans, by the support matrix's rules, one whole-graph engine (a wired program calls its
    engines through torch_tensorrt's op)."""
    if env.lean_runtime is None:
        return "the TensorRT lean runtime is not installed"
    if target.flavor != "tensorrt" or not target.version_compatible:
        return "the lean runtime runs version-compatible TensorRT engines only"
    if not whole_graph:
        return "the lean runtime runs whole-graph engines only (this variant wires a program)"
    return version_compatible_runtime_problem(target.trt_version, env.lean_runtime)


def _engine_problem(target: Target, env: Environment) -> str | None:
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
    if target.embeds_lean_runtime and not env.host_code_allowed:
        return HOST_CODE_REFUSED
    return None


def _torch_tensorrt_problem(target: Target, env: Environment) -> str | None:
    if target.embeds_lean_runtime:  # torch_tensorrt 2.14 never sets engine_host_code_allowed
        return "torch_tensorrt cannot run plans with host code (the lean runtime can)"
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
        if not _same_release(built, have):  # the RTX runtime compares major.minor.patch
            return f"built with TensorRT-RTX {target.trt_version}, this runtime is {runtime}"
    elif target.version_compatible:
        problem = version_compatible_runtime_problem(target.trt_version, runtime)
        if problem is not None:
            return problem
    elif not _same_release(built, have):
        return f"built with TensorRT {target.trt_version}, this runtime is {runtime}"
    return None


def _cuda_problem(target: Target, env: Environment) -> str | None:
    if target.cuda_runtime and env.cuda_runtime:
        if _version(env.cuda_runtime) < _version(target.cuda_runtime):
            return f"needs CUDA runtime {target.cuda_runtime}, this one is {env.cuda_runtime}"
    return None


def _rank(target: Target, env: Environment) -> tuple[int, int]:
    """Lower is better: an exact compute-capability match before a hardware-compatible one,
    an exact TensorRT version before a version-compatible one."""
    exact_gpu = env.gpu is not None and f"{env.gpu[0]}.{env.gpu[1]}" in target.compute_capabilities
    runtime = env.runtimes.get(target.flavor) or env.lean_runtime or ""
    exact_version = _same_release(_version(target.trt_version), _version(runtime))
    return (0 if exact_gpu else 1, 0 if exact_version else 1)


def choose(variants: tuple[Variant, ...], env: Environment, *, only: str | None = None) -> Choice:
    """The variants that can run in ``env``, best first (ties keep the pack's order)."""
    fitting: list[Variant] = []
    refused: dict[str, str] = {}
    for variant in variants:
        if only is not None and variant.name != only:
            continue
        reason = why_not(variant.target, env, whole_graph=variant.whole_graph)
        if reason is None:
            fitting.append(variant)
        else:
            refused[variant.name] = reason
    fitting.sort(key=lambda v: _rank(v.target, env))
    return Choice(tuple(fitting), refused)


def load_choice(
    variants: tuple[Variant, ...],
    env: Environment,
    *,
    only: str | None = None,
    host_code_allowed: bool = False,
) -> Choice:
    """The decision ``trtpack.load`` makes before it reads an engine member: ``env`` with the
    pack's trust (a verified signature or ``trust_engine_host_code``) applied, the variants
    ranked. ``load`` and ``preflight`` both call this, so the two cannot disagree."""
    env = dataclasses.replace(env, host_code_allowed=host_code_allowed)
    return choose(variants, env, only=only)


# --- a described machine (preflight) ----------------------------------------------------------

#: the keys of a target description, with what each sets
TARGET_KEYS = {
    "name": "a label for the report",
    "sm": "the GPU's compute capability (8.9), or none",
    "trt": "the TensorRT version installed (10.13 matches every 10.13.x)",
    "rtx": "the TensorRT-RTX version installed",
    "torch_tensorrt": "torch_tensorrt's version, or no (default: present if trt or rtx is given)",
    "lean": "the standard TensorRT lean runtime's version (tensorrt_lean)",
    "cuda": "the CUDA runtime version",
    "os": "linux or win (with arch)",
    "arch": "x86_64 or aarch64 (with os)",
    "host_code": "yes: the pack is loaded signed or trusted (require_signature=), default no",
}
_MAX_TARGET_TEXT = 1_000


def parse_target(text: str) -> tuple[str, Environment, bool]:
    """``sm=8.9,trt=10.13,os=linux,arch=x86_64`` -> (name, the machine as an Environment,
    whether host code is allowed). Unknown keys and malformed values are a TargetSpecError."""
    if len(text) > _MAX_TARGET_TEXT:
        raise TargetSpecError(f"a target description of {len(text)} characters is over "
                              f"{_MAX_TARGET_TEXT}", text=text[:80])  # fmt: skip
    values: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or key not in TARGET_KEYS:
            known = ", ".join(TARGET_KEYS)
            raise TargetSpecError(f"target {text!r}: {part!r} is not KEY=VALUE with a key of "
                                  f"{known}", key=key, text=text)  # fmt: skip
        if key in values:
            raise TargetSpecError(f"target {text!r}: {key}= is given twice", key=key, text=text)
        values[key] = value

    def version(key: str) -> str | None:
        v = values.get(key)
        if v is None:
            return None
        if not v or not all(p.isdigit() for p in v.split(".")):
            raise TargetSpecError(f"target {text!r}: {key}={v!r} is not a version such as "
                                  "10.13 or 10.13.3.9", key=key, text=text)  # fmt: skip
        return v

    gpu: tuple[int, int] | None = None
    sm = values.get("sm", "none")
    if sm.lower() != "none":
        major, dot, minor = sm.partition(".")
        if len(sm) == 2 and sm.isdigit():  # sm=89
            major, dot, minor = sm[0], ".", sm[1]
        if not (dot and major.isdigit() and minor.isdigit()):
            raise TargetSpecError(f"target {text!r}: sm={sm!r} is not a compute capability "
                                  "such as 8.9 (or none)", key="sm", text=text)  # fmt: skip
        gpu = (int(major), int(minor))
    runtimes = {f: v for f, k in (("tensorrt", "trt"), ("tensorrt_rtx", "rtx"))
                if (v := version(k)) is not None}  # fmt: skip
    tt = values.get("torch_tensorrt")
    tt_version: str | None = None
    tt_problem: str | None = None
    if tt is not None and tt.lower() in ("no", "none"):
        tt_problem = "torch_tensorrt is not installed on this target"
    elif tt is not None:
        tt_version = version("torch_tensorrt")
    elif runtimes:
        tt_version = "(version not given)"
    else:
        tt_problem = "torch_tensorrt is not installed on this target"
    flavor = next(iter(runtimes)) if len(runtimes) == 1 else None
    os_, arch = values.get("os"), values.get("arch")
    if (os_ is None) != (arch is None):
        raise TargetSpecError(f"target {text!r}: os= and arch= go together (the platform is "
                              "both, e.g. linux_x86_64)", key="os" if os_ is None else "arch",
                              text=text)  # fmt: skip
    platform = f"{os_.lower()}_{arch.lower()}" if os_ and arch else ""
    host = values.get("host_code", "no").lower()
    if host not in ("yes", "no"):
        raise TargetSpecError(f"target {text!r}: host_code={host!r} is not yes or no",
                              key="host_code", text=text)  # fmt: skip
    env = Environment(
        gpu=gpu,
        runtimes=runtimes,
        torch_tensorrt=tt_version,
        torch_tensorrt_flavor=flavor if tt_version is not None else None,
        torch_tensorrt_problem=tt_problem,
        cuda_runtime=version("cuda"),
        platform=platform,
        lean_runtime=version("lean"),
    )
    return values.get("name") or text, env, host == "yes"
