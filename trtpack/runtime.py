"""``load``: a .trtpack file -> a callable with the model's own calling convention.

The call path is: check the call against the manifest's contract (microseconds), then run
the TensorRT engines where a variant fits this machine, else the ExportedProgram.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal, TypeVar

import torch
from torch.export import ExportedProgram

from .contract import Contract, OutsideEngineProfile
from .errors import (
    ArgumentTypeError,
    DeviceError,
    InputMismatchError,
    ManifestError,
    NoUsableEngineError,
)
from .format.container import PackReader, PathLike
from .format.manifest import Manifest, profile_boxes
from .program.serialize import (
    LoadedProgram,
    example_inputs,
    load_program,
    load_runnable,
    read_checked_graph,
    runnable,
    weights_read,
)
from .reading import PackInfo, open_pack, with_program_guards

T = TypeVar("T")


def _verified(
    reader: PackReader,
    manifest: Manifest,
    verify: bool,
    build: Callable[[], T],
    *,
    read: str,
    graph_hashed: bool = False,
) -> T:
    """Run ``build`` with the program's members verified. The graph (small, and parsed) is
    checked first; then the weights, the way ``read`` (``serialize.weights_read``) says:

    - ``"owned"``: the weights hashed are the copy the load keeps (``build`` reads the same
      ``reader.owned`` buffer), each piece hashed while the next is read, on a second thread
      while the program is rebuilt;
    - ``"streamed"`` (a GPU): ``build`` reads the weights piece by piece into staging
      buffers, and each piece is hashed from the buffer it is copied on from
      (``program.staging``): no second read; ``build`` raises if a piece differs;
    - ``"mapped"``: the file's map is hashed on a second thread while the program is rebuilt.

    The result is returned only once that hash has matched; an IntegrityError wins over
    anything else ``build`` raised. ``graph_hashed``: ``build`` hashes the graph bytes it
    parses (``read_checked_graph`` with the record), so they are not hashed here first."""
    if not verify or manifest.program is None:
        return build()
    graph, weights = manifest.program.graph, manifest.program.weights
    member = manifest.members[weights]
    if not graph_hashed:
        reader.verify(graph, manifest.members[graph])
    if read == "streamed":
        reader.check_when_read(weights, member)
        try:
            result = build()
        except BaseException:
            if not reader.checked_when_read(weights, member):
                reader.verify(weights, member)  # a damaged member is named, whatever else broke
            raise
        if not reader.checked_when_read(weights, member):  # build did not stream it
            reader.verify(weights, member)
        return result
    owned = read == "owned"
    if owned:  # hashed piece by piece as it is read, whichever thread reads it first
        reader.check_when_read(weights, member)
    with ThreadPoolExecutor(1) as pool:
        check = pool.submit(reader.verify, weights, member, owned=owned)
        try:
            result = build()
        finally:
            check.result()  # an IntegrityError here wins over anything build() raised
    return result


@contextlib.contextmanager
def _open_any(path: PathLike) -> Iterator[tuple[PackReader, PackInfo]]:
    """A pack as it is, or any other known artifact migrated in memory (with a notice)."""
    try:
        first = _has_manifest(path)
    except OSError:
        first = False  # detect() says what is wrong with the path
    if not first:  # the migrations (and the writers they use) are imported only when needed
        from .migrations.legacy import TRTPACK, detect
    if first or detect(path) == TRTPACK:
        with open_pack(path, program_guards=False) as (reader, info):
            if info.upgraded_from is not None:
                old = ".".join(map(str, info.upgraded_from))
                new = ".".join(map(str, info.manifest.format_version))
                warnings.warn(
                    f"trtpack: {path} is format {old}, upgraded in memory to {new} "
                    f"(`trtpack migrate {path} OUT` writes it)",
                    stacklevel=4,
                )
            yield reader, info
        return
    from .migrations.legacy import convert, open_migrated

    converted = convert(path)
    warnings.warn(
        f"trtpack: {path} is a {converted.kind} without trtpack metadata; migrated in memory "
        f"(`trtpack migrate {path} OUT.trtpack` writes it)",
        stacklevel=4,
    )
    with open_migrated(converted, path) as opened:
        yield opened


def _has_manifest(path: PathLike) -> bool:
    """A cheap first look: a zip whose first member is manifest.json (the common case,
    answered without parsing the zip twice)."""
    with open(path, "rb") as f:
        head = f.read(30 + len("manifest.json"))
    return head[:4] == b"PK\x03\x04" and head[30:] == b"manifest.json"


def default_device() -> torch.device:
    return (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )


def _normalize(device: str | torch.device | None) -> torch.device:
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(device, str(e).splitlines()[0]) from None
    if dev.type == "cuda":
        # torch's own answer here is an AssertionError ("Torch not compiled with CUDA enabled")
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            raise DeviceError(device, f"this torch ({torch.__version__}) is a CPU-only "
                              "build; load with device='cpu' (--device cpu) or install a CUDA "
                              "build")  # fmt: skip
        if not torch.cuda.is_available():
            raise DeviceError(device, "no CUDA GPU is visible to this process; load with "
                              "device='cpu' (--device cpu)")  # fmt: skip
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        elif dev.index >= torch.cuda.device_count():
            raise DeviceError(device, f"this machine has {torch.cuda.device_count()} CUDA "
                              "device(s)")  # fmt: skip
    return dev


class LoadedPack:
    """A loaded pack. Call it like the model: ``pack(x, mask=m)``.

    ``backend`` is ``"tensorrt"`` when an engine variant runs, else ``"exported_program"``;
    ``fallback_reason`` says in one line why engines are not used (None when they are, or
    when the pack has none). ``variant`` is the engine variant that runs. ``manifest``,
    ``device`` and ``info`` (path, digest, size) describe the pack; ``exported_program`` is
    the portable program, deserialized by torch on first access: the program backend runs a
    module built straight from the pack's graph JSON when it can (``fast_path_reason`` is
    then None; otherwise it says why torch's deserializer built the module at load).
    ``cuda_graphs``: the entry point's captured CUDA graphs (``load(cuda_graphs=)``), or None.
    """

    def __init__(
        self,
        info: PackInfo,
        *,
        device: torch.device,
        module: Any,
        contract: Contract,
        backend: str,
        fallback_reason: str | None = None,
        variant: str | None = None,
        program: LoadedProgram | None = None,
        outside_profile: str = "error",
        inference_mode: bool = False,
        mmap: bool = False,
        allow_ops: Sequence[str] = (),
    ) -> None:
        self.info = info
        self._mmap = mmap
        #: the custom operators ``load(allow_ops=)`` allowed (the program read later uses them)
        self.allow_ops = tuple(allow_ops)
        self.manifest: Manifest = info.manifest
        self.device = device
        self.backend = backend
        self.fallback_reason = fallback_reason
        self.variant = variant
        self._module = module
        self._contract = contract
        self._program = program
        self._exported_program: ExportedProgram | None = None
        self._fallback_module: Any = None
        self._guard_fn: Callable[[list[Any]], None] | None = None
        self._outside_profile = outside_profile
        self.inference_mode = inference_mode
        #: what ``load(..., check=True)`` found (a ``samples.CheckReport``); None otherwise
        self.check_report: Any = None
        #: the options ``load`` was given besides ``device`` (what ``to`` loads again with)
        self.load_options: dict[str, Any] = {}
        #: format 1.4: every entry point of the pack (this one included), and the state they
        #: share: name -> (the tensor the modules use, its value at load)
        self._entries: dict[str, LoadedPack] = {}
        self._state: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        #: the names of the tensors this entry point writes in place (derived at load)
        self.mutates: frozenset[str] = frozenset()
        #: ``load(cuda_graphs=...)``: this entry point's captured CUDA graphs (a
        #: ``cuda_graphs.CudaGraphs``; its ``reason`` says why they do not run, if they
        #: do not); None when not asked for
        self.cuda_graphs: Any = None

    # -- entry points (format 1.4) ---------------------------------------------------------

    @property
    def entry_points(self) -> tuple[str, ...]:
        """The pack's entry point names, sorted (``("forward",)`` for a pack of one program)."""
        return tuple(sorted(self._entries)) or (self.manifest.default_entry_point,)

    def __getitem__(self, name: str) -> LoadedPack:
        """One entry point, called like its program; it shares the pack's weights and state."""
        if name in self._entries:
            return self._entries[name]
        if not self._entries and name == self.manifest.default_entry_point:
            return self
        raise ManifestError(
            f"{self.info.path.name} has no entry point {name!r} (entry points: "
            f"{list(self.entry_points)})", field="entry_points", got=name,
            expected=list(self.entry_points),
        )  # fmt: skip

    def reset_state(self) -> None:
        """Put every tensor an entry point writes in place (a KV cache) back to its value in
        the pack, for every entry point (they share it)."""
        with torch.no_grad():
            for tensor, saved in self._state.values():
                tensor.copy_(saved)

    @property
    def digest(self) -> str:
        return self.info.digest

    @property
    def module(self) -> Any:
        """The underlying runnable; calling it skips the input check."""
        return self._module

    @property
    def fast_path_reason(self) -> str | None:
        """Why torch's deserializer built the program's module at load (a construct the
        direct build from the graph JSON does not reproduce); None when that build did, or
        when engines run."""
        return None if self._program is None else self._program.fast_path_reason

    @property
    def exported_program(self) -> ExportedProgram | None:
        """The portable ExportedProgram (None for an engines-only pack)."""
        if self._exported_program is None and self._program is not None:
            # the loaded program's own graph and tensors (no second read, no second copy)
            self._exported_program = self._program.exported_program()
        elif self._exported_program is None and self.manifest.program is not None:
            with open_pack(self.info.path) as (reader, info):
                if info.digest != self.info.digest:
                    raise ManifestError(f"{self.info.path} changed on disk since it was loaded")
                self._exported_program = _verified(
                    reader, self.manifest, True,
                    lambda: load_program(reader, self.manifest, device=self.device,
                                         mmap=self._mmap, allow_ops=self.allow_ops),
                    read=weights_read(self.device, self._mmap),
                )  # fmt: skip
        return self._exported_program

    def call_of(self, leaves: Sequence[Any]) -> tuple[tuple, dict]:
        """``(args, kwargs)`` of a call from its flat leaves (manifest input order): nested by
        the manifest's tree, or — when it holds registered pytree classes (a cache), which only
        their Python types rebuild — by the program's own spec."""
        from .format.pytree import custom_type_names, unflatten_call

        tree = self.manifest.input_tree
        if not custom_type_names(tree):
            return unflatten_call(tree, leaves)
        # the program module's own spec (ep.module() and the direct build both keep it), so
        # that no ExportedProgram is deserialized for it; an engine runner has none
        spec = getattr(self._module, "_in_spec", None)
        if spec is None and self.exported_program is not None:
            spec = self.exported_program.call_spec.in_spec
        if spec is None:
            return unflatten_call(tree, leaves)
        import torch.utils._pytree as pytree

        args, kwargs = pytree.tree_unflatten(list(leaves), spec)
        return tuple(args), dict(kwargs)

    def to(self, device: str | torch.device) -> LoadedPack:
        """This pack on ``device`` (``"cuda:1"``, ``"cpu"``): loaded again from its file with
        the same options, as ``load`` would there (the engine variant chosen for that device;
        ``cuda_graphs`` dropped on the CPU);
        ``self`` when it is already there. The file must be the one loaded (same digest), else
        ManifestError."""
        dev = _normalize(device)
        if dev == self.device:
            return self
        options = dict(self.load_options)
        if dev.type != "cuda":
            options.pop("cuda_graphs", None)  # graphs replay on a CUDA device only
        moved = load(self.info.path, device=dev, **options)
        if moved.digest != self.digest:
            raise ManifestError(f"{self.info.path} changed on disk since it was loaded "
                                f"({self.digest} -> {moved.digest}); load it again")  # fmt: skip
        return moved

    def check_inputs(self, *args: Any, **kwargs: Any) -> None:
        """Check a call against the manifest without running it. Raises InputMismatchError."""
        self._contract(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # As ep.module(): the caller's grad mode, outputs ordinary tensors (in-place updates,
        # autograd); load(..., inference_mode=True) runs each call in torch.inference_mode().
        if self.inference_mode:
            with torch.inference_mode():
                return self._run(args, kwargs)
        return self._run(args, kwargs)

    def _run(self, args: tuple, kwargs: dict) -> Any:
        try:
            leaves = self._contract(args, kwargs)
        except OutsideEngineProfile:
            if self._outside_profile != "fallback":
                raise
            if self._fallback_module is None:
                program = self.exported_program
                if program is None:
                    raise
                self._fallback_module = runnable(program)
            # the profile was the only complaint; the unexpressed guards still hold the call
            self._check_unexpressed(self._contract.flatten(args, kwargs))
            return self._fallback_module(*args, **kwargs)
        self._check_unexpressed(leaves)
        if self.cuda_graphs is not None:
            return self.cuda_graphs.run(leaves, args, kwargs, self._module, self.call_of)
        return self._module(*args, **kwargs)

    def _check_unexpressed(self, leaves: list[Any]) -> None:
        if self._contract.unexpressed:
            self._program_guards()(leaves)

    def _program_guards(self) -> Callable[[list[Any]], None]:
        """The program's own guard check, for guards the manifest cannot express: torch's
        ``_guards_fn`` of ``ep.module()`` (torch builds it only for a program with example
        inputs, so inputs of the manifest's opt sizes are attached first)."""
        if self._guard_fn is None:
            ep = self.exported_program
            if ep is None:
                raise ManifestError(f"{self.info.path}: guards the manifest cannot express "
                                    "need the program, and the pack has none")  # fmt: skip
            if ep.example_inputs is None:  # a variant's program: the pack's call, rebuilt
                ep.example_inputs = example_inputs(self.manifest, ep.call_spec.in_spec)
            fn = getattr(ep.module(), "_guards_fn", None)
            if fn is None:
                raise ManifestError(f"{self.info.path}: torch built no guard check for the "
                                    "program's unexpressed guards")  # fmt: skip

            def check(leaves: list[Any]) -> None:
                try:
                    fn(*leaves)
                except AssertionError as e:
                    condition = str(e).removeprefix("Guard failed: ")
                    raise InputMismatchError(
                        f"the call breaks the program's guard {condition} (checked by the "
                        "program's own guard code: the manifest cannot express it)",
                        condition=condition,
                    ) from None

            self._guard_fn = check
        return self._guard_fn

    def __repr__(self) -> str:
        names = ", ".join(i.name for i in self.manifest.inputs)
        where = f"{self.backend}:{self.variant}" if self.variant else self.backend
        return (
            f"<LoadedPack {self.info.path.name} inputs=({names}) backend={where} "
            f"device={self.device}>"
        )


def load(
    path: PathLike,
    *,
    device: str | torch.device | None = None,
    verify: bool = True,
    require_engine: bool = False,
    variant: str | None = None,
    outside_profile: Literal["error", "fallback"] = "error",
    inference_mode: bool = False,
    require_signature: PathLike | None = None,
    signature: PathLike | None = None,
    check: bool = False,
    trust_engine_host_code: bool = False,
    mmap: bool = False,
    allow_ops: Sequence[str] = (),
    cuda_graphs: bool | Sequence[str] = False,
) -> LoadedPack:
    """Load a pack: its TensorRT engines where a variant can run here, else the ExportedProgram.

    ``device``: where to run (default: the current CUDA device if any, else CPU).
    ``verify``: check the SHA-256 of every member that is loaded, before it is used.
    ``require_engine``: raise NoUsableEngineError instead of falling back to the program.
    ``variant``: use only this engine variant.
    ``outside_profile``: for a call inside the exported ranges but outside the engines'
    optimization profiles, ``"error"`` (InputMismatchError naming both ranges) or
    ``"fallback"`` (run that call on the ExportedProgram).
    ``inference_mode``: False (default) runs each call in the caller's grad mode, as
    ``ep.module()`` does: outputs are ordinary tensors (``y.add_(1)`` works, they can enter
    autograd). True runs each call under ``torch.inference_mode()``: outputs are inference
    tensors (no in-place update outside inference mode, no autograd), the fastest serving mode;
    ``with torch.inference_mode():`` around the calls does the same.
    ``require_signature``: a PEM public key; the pack's signature (``signature``, default
    ``PATH.sig``) must verify with it before any member but the manifest is read
    (SignatureError / UnsignedPackError otherwise). The signature vouches for the manifest,
    and the manifest for each member through its SHA-256, so a required signature always
    hashes every member the load uses: ``verify=False`` is ignored with it (with a warning).

    ``trust_engine_host_code``: let TensorRT run host code a plan carries (a
    version-compatible plan with the lean runtime embedded, as the manifest records). Without
    it such a variant is used only when ``require_signature`` verified the pack. Either way
    such a plan is hashed before TensorRT sees it, even with ``verify=False``.

    ``allow_ops``: custom operators (``torch.library``) the program may call, by qualified
    name or pattern (``["mylib::twice"]``, ``["mylib::*"]``). A program that calls one is
    refused unless allowed here, naming the operators; an allowed one must be registered in
    this process (import its library first): nothing is imported by name from the file.

    ``check``: run the pack's reference samples (``save(..., samples=)``) on the backend just
    loaded and raise SampleMismatchError if an output is outside its tolerance; the report is
    ``pack.check_report``. A multi-entry pack: every entry point that has samples, each from
    the saved state, its report ``pack[name].check_report``.

    ``mmap``: on the CPU, let the weights view a private copy-on-write map of the file
    instead of memory of their own (the default reads them once, which is what is hashed):
    no copy at load, and pages shared with other processes mapping the same file. The risk
    is the file's: it must not change while the pack is in use. Truncating it or copying
    another file over it in place (``cp new.trtpack model.trtpack``) kills the process with
    SIGBUS at its next call, and writing into it silently changes the weights (the hash
    covered them at load only). Replace a mapped pack by renaming a new file over it (as
    ``trtpack.save`` does). No effect on a GPU: the weights are copied there either way.

    ``cuda_graphs``: on a CUDA device, replay captured CUDA graphs (trtpack/cuda_graphs.py):
    True for every entry point the program runs, or a list of entry point names
    (``["decode"]``: a static-shape step; a dynamic one captures one graph per input
    signature, at most ``cuda_graphs.MAX_SIGNATURES``). The contract check still runs every
    call; each new signature is warmed up and captured once; outputs are clones of the
    graph's buffers; no autograd through a replay. An entry point that runs engines, or whose
    program cannot be captured, runs without graphs, with a warning and the reason in
    ``pack[name].cuda_graphs.reason``. On the CPU: DeviceError.

    A file saved without trtpack (``torch.export.save``, ``torch_tensorrt.save``) or a pack of
    an older format is migrated in memory, with a one-line warning.
    """
    options = _LoadOptions(
        verify=verify, require_engine=require_engine, variant=variant,
        outside_profile=outside_profile, inference_mode=inference_mode,
        require_signature=require_signature, signature=signature,
        trust_engine_host_code=trust_engine_host_code, mmap=mmap,
        allow_ops=_allow_ops(allow_ops), cuda_graphs=_cuda_graphs(cuda_graphs),
    )  # fmt: skip
    pack = _load(path, _normalize(device), options)
    pack.load_options = {**dataclasses.asdict(options), "check": check}
    if check:  # every entry point's samples (each report is that entry point's check_report)
        from .samples import check_entry_points

        check_entry_points(pack)
    return pack


@dataclasses.dataclass(frozen=True)
class _LoadOptions:
    """``load``'s options besides ``device`` and ``check`` (see ``load``), normalized: what
    every entry point of one load is loaded with, and what ``LoadedPack.to`` loads again with."""

    verify: bool
    require_engine: bool
    variant: str | None
    outside_profile: Literal["error", "fallback"]
    inference_mode: bool
    require_signature: PathLike | None
    signature: PathLike | None
    trust_engine_host_code: bool
    mmap: bool
    allow_ops: tuple[str, ...]
    cuda_graphs: bool | tuple[str, ...]


def _load(path: PathLike, dev: torch.device, options: _LoadOptions) -> LoadedPack:
    if options.outside_profile not in ("error", "fallback"):
        raise ValueError("outside_profile must be 'error' or 'fallback', not "
                         f"{options.outside_profile!r}")  # fmt: skip
    if options.cuda_graphs and dev.type != "cuda":
        raise DeviceError(dev, "CUDA graphs (cuda_graphs=) replay on a CUDA device; load "
                          "without cuda_graphs= here")  # fmt: skip
    if options.require_signature is not None and not options.verify:
        # A signature covers the manifest; the manifest covers a member only through its
        # hash. Unhashed members would make the signature vouch for bytes nobody checked.
        warnings.warn(
            "trtpack: verify=False is ignored with require_signature=: a required signature "
            "hashes every member the load uses",
            stacklevel=3,
        )
        options = dataclasses.replace(options, verify=True)
    verify = options.verify
    with _open_any(path) as (reader, info):
        if options.require_signature is not None:
            from .signing import verify_reader

            verify_reader(reader, options.require_signature, options.signature)
        # a 1.0 pack: its guards, from its program's graph (hashed first when verifying)
        info = with_program_guards(reader, info, verify=verify)
        whole = info.manifest
        default = whole.default_entry_point
        names = [default, *sorted(n for n in whole.entry_points or {} if n != default)]
        manifests = {n: whole if n == default else whole.entry(n) for n in names}
        shared: dict[str, dict[str, torch.Tensor]] = {}
        packs: dict[str, LoadedPack] = {}
        # Every entry point's graph is read, hashed and checked on one thread, in load order,
        # while this one reads and moves the weights: pure Python beside I/O, hashing and
        # copies that leave the GIL (a second entry point's graph costs no wall time then).
        graphs = ThreadPoolExecutor(1)
        try:
            pending = {
                n: graphs.submit(read_checked_graph, reader, m.program, options.allow_ops,
                                 m.members.get(m.program.graph) if verify else None)
                for n, m in manifests.items() if m.program is not None
            }  # fmt: skip
            for name in names:
                entry_info = info if name == default else dataclasses.replace(
                    info, manifest=manifests[name]
                )  # fmt: skip
                packs[name] = _load_entry(reader, entry_info, name, shared, len(names) > 1,
                                          dev, options, pending.get(name))  # fmt: skip
        finally:  # an entry point that runs engines never asks for its graph
            graphs.shutdown(wait=True, cancel_futures=True)
    top = packs[default]
    state: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for pack in packs.values():
        tensors = pack._program.tensors if pack._program is not None else {}
        for t in sorted(pack.mutates):
            if t in tensors and t not in state:
                state[t] = (tensors[t], tensors[t].detach().clone())
        pack._state = state
        pack._entries = packs if len(packs) > 1 else {}
    if options.cuda_graphs:
        _attach_cuda_graphs(packs, default, options.cuda_graphs, dev)
    for pack in packs.values():
        if pack.fallback_reason is not None:
            warnings.warn(f"trtpack: running the ExportedProgram: {pack.fallback_reason}",
                          stacklevel=3)  # fmt: skip
    return top


def _load_entry(
    reader: PackReader,
    info: PackInfo,
    name: str,
    shared: dict[str, dict[str, torch.Tensor]],
    multi: bool,
    dev: torch.device,
    options: _LoadOptions,
    graph: Future[tuple[bytes, Any]] | None = None,
) -> LoadedPack:
    """One entry point of a pack (the only one, for a pack of one program). ``shared``
    collects the default program's loaded tensors, which the other entry points reference.
    ``graph``: its program's graph being read, hashed (when verifying) and checked."""
    from .writing.entry_points import check_loaded_state

    verify, mmap, require_engine = options.verify, options.mmap, options.require_engine
    manifest = info.manifest
    reason = manifest.state.engine_refusal(name) if manifest.engines and manifest.state else None
    if reason is not None:
        if require_engine:
            raise NoUsableEngineError(reason)
    elif manifest.engines or require_engine or options.variant is not None:
        from .engines.loading import load_engines

        # host code runs only from a pack whose signature was just verified (and whose
        # members are therefore hashed: verify is on), or if the caller trusts the pack
        trusted = options.trust_engine_host_code or (
            options.require_signature is not None and verify
        )
        loaded = load_engines(reader, manifest, dev, verify=verify,
                              require_engine=require_engine, variant=options.variant,
                              host_code_allowed=trusted)  # fmt: skip
        if loaded.runner is not None and loaded.variant is not None:
            v = loaded.variant
            if multi and manifest.program is not None and not shared:
                # the other entry points reference the default program's tensors
                shared[manifest.program.weights] = _verified(
                    reader, manifest, verify, lambda: _tensors(reader, manifest, dev, mmap),
                    read=weights_read(dev, mmap),
                )  # fmt: skip
            return LoadedPack(
                info,
                device=dev,
                module=loaded.runner,
                contract=Contract(
                    manifest,
                    device=dev,
                    engine_ranges=v.ranges,
                    variant=v.name,
                    profile_boxes=profile_boxes(v.engines, manifest.inputs, manifest.symbols),
                ),
                backend="tensorrt",
                variant=v.name,
                outside_profile=options.outside_profile,
                inference_mode=options.inference_mode,
            )
        reason = loaded.reason
    if manifest.program is None:
        raise NoUsableEngineError(
            f"{info.path} holds engines only, and none can run here: {reason}"
        )
    program = _verified(
        reader, manifest, verify,
        lambda: load_runnable(reader, manifest, device=dev, mmap=mmap,
                              allow_ops=options.allow_ops, shared=shared, graph=graph),
        read=weights_read(dev, mmap), graph_hashed=graph is not None,
    )  # fmt: skip
    if not shared and manifest.program is not None:
        shared[manifest.program.weights] = program.tensors  # the default entry point's
    pack = LoadedPack(
        info,
        device=dev,
        module=program.module,
        contract=Contract(manifest, device=dev),
        backend="exported_program",
        fallback_reason=reason if manifest.engines else None,
        program=program,
        inference_mode=options.inference_mode,
        mmap=mmap,
        allow_ops=options.allow_ops,
    )
    pack.mutates = frozenset(check_loaded_state(manifest, name, program.module))
    return pack


def _tensors(
    reader: PackReader, manifest: Manifest, device: torch.device, mmap: bool
) -> dict[str, Any]:
    from .program.serialize import load_state

    assert manifest.program is not None
    state_dict, constants = load_state(reader, manifest.program.weights, device, mmap)
    return {**state_dict, **constants}


def _cuda_graphs(value: Any) -> bool | tuple[str, ...]:
    """``cuda_graphs`` as True/False or a tuple of entry point names."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(n, str) for n in value):
        return tuple(sorted(value))
    raise ArgumentTypeError("cuda_graphs", "True, False or a list of entry point names", value)


def _attach_cuda_graphs(
    packs: dict[str, LoadedPack], default: str, which: bool | tuple[str, ...], dev: torch.device
) -> None:
    """Each chosen entry point's ``cuda_graphs``, sharing one pool (trtpack/cuda_graphs.py)."""
    from .cuda_graphs import CudaGraphs, GraphPool

    names = sorted(packs) if which is True else list(which)  # type: ignore[arg-type]
    unknown = [n for n in names if n not in packs]
    if unknown:
        raise ManifestError(
            f"cuda_graphs names entry point(s) {unknown} the pack does not have (entry points: "
            f"{sorted(packs)})", field="entry_points", got=unknown, expected=sorted(packs),
        )  # fmt: skip
    pool = GraphPool(dev)
    for name in names:
        pack = packs[name]
        where = f"{pack.info.path.name}" + (f" entry point {name!r}" if len(packs) > 1 else "")
        reason = None
        if pack.backend != "exported_program":
            reason = ("it runs TensorRT engines (which have CUDA graphs of their own: "
                      "torch_tensorrt's cudagraphs mode)")  # fmt: skip
        names_in = [i.name for i in pack.manifest.inputs]
        pack.cuda_graphs = CudaGraphs(pack._module, pool, where=where, reason=reason,
                                      input_names=names_in)  # fmt: skip


def _allow_ops(allow_ops: Any) -> tuple[str, ...]:
    """``allow_ops`` as a tuple of strings (a lone string is one pattern, not its letters)."""
    if isinstance(allow_ops, str):
        return (allow_ops,)
    if not isinstance(allow_ops, (list, tuple, set, frozenset)) or not all(
        isinstance(p, str) for p in allow_ops
    ):
        raise ArgumentTypeError("allow_ops", "a list of operator names or patterns", allow_ops)
    return tuple(allow_ops)
