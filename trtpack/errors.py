"""Every error trtpack raises on purpose is a :class:`TrtpackError`.

One hierarchy, so that a caller can ``except trtpack.TrtpackError`` and a test can
name the exact failure. Messages say what was found and what was expected.
"""

from __future__ import annotations


class TrtpackError(Exception):
    """Base class of every trtpack error."""


class ArgumentTypeError(TrtpackError, TypeError):
    """A function was given an argument of a type it does not take (a ``TypeError`` too)."""

    def __init__(self, argument: str, expected: str, got: object) -> None:
        self.argument, self.expected, self.got = argument, expected, type(got).__name__
        super().__init__(f"{argument} must be {expected}, got a {self.got}")


# --- the file itself -------------------------------------------------------------------


class NotAPackError(TrtpackError):
    """The file is not a .trtpack (not a zip, or a zip without a trtpack manifest)."""


class IntegrityError(TrtpackError):
    """The pack is damaged: truncated, a member's bytes do not match its recorded hash or
    size, or the zip structure is inconsistent."""

    def __init__(self, *args: object, member: str | None = None, field: str | None = None,
                 expected: object = None, got: object = None) -> None:  # fmt: skip
        super().__init__(*args)
        self.member, self.field, self.expected, self.got = member, field, expected, got


class UnsafePackError(IntegrityError):
    """The zip is built to attack its reader: a member named with ``..`` or an absolute
    path, duplicate names, overlapping members, or sizes absurd for the file; or a program
    graph whose names or call targets torch would turn into code
    (trtpack/program/graph_check.py)."""

    def __init__(self, *args: object, member: str | None = None, field: str | None = None,
                 value: object = None) -> None:  # fmt: skip
        super().__init__(*args)
        self.member, self.field, self.value = member, field, value


class MissingMemberError(IntegrityError):
    """The manifest names a member that the zip does not contain (or the reverse)."""


# --- the manifest ----------------------------------------------------------------------


class ManifestError(TrtpackError):
    """The manifest is not valid JSON, fails the JSON Schema, or is inconsistent. ``field``
    (a JSON path), ``expected`` and ``got`` are set where one field is at fault."""

    def __init__(self, *args: object, field: str | None = None, expected: object = None,
                 got: object = None) -> None:  # fmt: skip
        super().__init__(*args)
        self.field, self.expected, self.got = field, expected, got


class UnsupportedVersionError(TrtpackError):
    """The pack was written by a newer trtpack major format version than this reader knows."""


# --- building a manifest or program from torch objects ---------------------------------


class DeriveError(TrtpackError):
    """An ExportedProgram or compiled module cannot be described by a manifest."""


class RangeOverrideError(DeriveError, ValueError):
    """A range override at save is invalid, e.g. it widens the exported range."""


class ProgramError(TrtpackError):
    """The ExportedProgram cannot be stored or restored (e.g. across torch versions)."""


class UnregisteredPytreeError(ProgramError):
    """The pack's inputs or outputs use a pytree class (a dataclass, a transformers cache or
    ``ModelOutput``) that is not registered in this process. ``type_name`` is torch's
    serialized name of the class, ``module`` what to import so that it registers itself."""

    def __init__(self, message: str, *, type_name: str, module: str | None) -> None:
        super().__init__(message)
        self.type_name, self.module = type_name, module


# --- calling a loaded pack -------------------------------------------------------------


class InputMismatchError(TrtpackError, ValueError):
    """A call's inputs do not match the manifest's input contract. ``input``, ``path``,
    ``dim``, ``value`` and ``condition`` say which input, where in the call, which dim, the
    value found and the condition it breaks, where they apply."""

    def __init__(self, *args: object, input: str | None = None, path: str | None = None,
                 dim: int | None = None, value: object = None,
                 condition: str | None = None) -> None:  # fmt: skip
        super().__init__(*args)
        self.input, self.path, self.dim = input, path, dim
        self.value, self.condition = value, condition


class OutsideEngineProfile(InputMismatchError):
    """A call inside the exported ranges but outside the running engine variant's
    optimization profiles (``load(..., outside_profile="fallback")`` runs it on the program)."""


# --- engines -----------------------------------------------------------------------------


class EngineError(TrtpackError):
    """A TensorRT engine is unusable: corrupt, inconsistent with the manifest, or refused."""

    def __init__(self, *args: object, member: str | None = None, field: str | None = None,
                 expected: object = None, got: object = None) -> None:  # fmt: skip
        super().__init__(*args)
        self.member, self.field, self.expected, self.got = member, field, expected, got


class NoUsableEngineError(EngineError):
    """``require_engine=True`` was given and no engine variant can run here."""


# --- environment -------------------------------------------------------------------------


class SampleMismatchError(TrtpackError):
    """A reference sample's output, run on this machine's backend, is outside its tolerance
    (``sample``, ``output``, ``error``: the largest absolute error, ``tolerance``;
    ``entry_point``: in a multi-entry pack, the entry point whose sample it is)."""

    def __init__(self, *, sample: int, output: str, error: float, tolerance: object,
                 detail: str | None = None, report: object = None,
                 entry_point: str | None = None) -> None:  # fmt: skip
        self.sample, self.output, self.error = sample, output, error
        self.tolerance, self.report, self.entry_point = tolerance, report, entry_point
        atol, rtol = getattr(tolerance, "atol", None), getattr(tolerance, "rtol", None)
        what = detail or f"max |error| {error:.3g} exceeds atol {atol} + rtol {rtol} * |expected|"
        where = f"entry point {entry_point!r}: " if entry_point is not None else ""
        super().__init__(f"{where}reference sample {sample}, output {output!r}: {what}")


class SampleTooLargeError(TrtpackError):
    """Sample inputs generated from the manifest's sizes (``trtpack run``, ``save(samples=)``)
    would take more memory than the limit allows: nothing was allocated. ``needed`` and
    ``limit`` are bytes, ``symbols`` the sizes drawn, ``inputs`` each input's bytes."""

    def __init__(self, message: str, *, needed: int, limit: int, symbols: dict[str, int],
                 inputs: dict[str, int]) -> None:  # fmt: skip
        super().__init__(message)
        self.needed, self.limit, self.symbols, self.inputs = needed, limit, symbols, inputs


class MissingDependencyError(TrtpackError, ImportError):
    """An optional dependency is needed for this operation and is not installed."""


class TargetSpecError(TrtpackError, ValueError):
    """A described target machine (``preflight --target``) does not parse: an unknown key or a
    value of the wrong form. ``key`` names the part, ``text`` the whole description."""

    def __init__(self, message: str, *, key: str | None = None, text: str | None = None):
        super().__init__(message)
        self.key = key
        self.text = text


#: optional top-level modules -> the trtpack extra that installs them
EXTRAS = {"torch": "torch", "numpy": "torch", "oras": "oci", "requests": "oci",
          "cryptography": "sign", "mlflow": "mlflow", "tritonclient": "triton",
          "tensorrt_rtx": "rtx"}  # fmt: skip

#: what runs in the base install, without any extra (said in every "needs X" message)
BASE_INSTALL = "inspect, verify, migrate, pack and add-engine run without any extra"


def missing_dependency(error: ImportError, what: str) -> MissingDependencyError | None:
    """The MissingDependencyError for ``error`` (a failed import of an optional module) met by
    ``what`` (a command or function), naming the extra to install; None when the module is not
    an optional dependency (a real bug, to be seen as one)."""
    module = (getattr(error, "name", None) or "").split(".")[0]
    extra = EXTRAS.get(module)
    if extra is None:
        return None
    extras = f"(push and pull need [oci], sign needs [sign]; {BASE_INSTALL})"
    return MissingDependencyError(
        f"{what} needs {module}, which is not installed: pip install 'trtpack[{extra}]' {extras}"
    )


class DeviceError(TrtpackError, ValueError):
    """The device asked for cannot be used here: ``device`` as given, ``reason`` why (no CUDA
    build of torch, no GPU, an index beyond the GPUs present)."""

    def __init__(self, device: object, reason: str) -> None:
        self.device, self.reason = str(device), reason
        super().__init__(f"device {self.device!r} cannot be used here: {reason}")


class MigrationError(TrtpackError):
    """A legacy artifact cannot be migrated to the current format."""


class OutputExistsError(TrtpackError, FileExistsError):
    """The output path exists and replacing it was not asked for (``overwrite=True``,
    ``--force``): nothing was written. One error for every writer (save, migrate, export-triton,
    pull, add-engine to another file)."""

    def __init__(self, path: object) -> None:
        super().__init__(f"{path} exists; pass overwrite=True (--force) to replace it")
        self.path = str(path)


class PackWriteError(TrtpackError, OSError):
    """The operating system refused a write (no space, no permission, no such folder): nothing
    was written, and the message names the output, never the temporary file beside it."""

    def __init__(self, path: object, cause: OSError) -> None:
        self.path, self.reason = str(path), cause.strerror or str(cause)
        super().__init__(f"cannot write {path}: {self.reason}")
        self.errno = cause.errno


class RegistryError(TrtpackError):
    """A model registry or server (MLflow, Triton repository, OCI registry) refused or failed.
    Where they apply: ``reference`` (what was asked for), ``status`` (the HTTP status),
    ``field`` (the answer or field at fault), ``limit`` and ``value`` (a cap and what came)."""

    def __init__(self, *args: object, reference: str | None = None, status: int | None = None,
                 field: str | None = None, limit: object = None,
                 value: object = None) -> None:  # fmt: skip
        super().__init__(*args)
        self.reference, self.status, self.field = reference, status, field
        self.limit, self.value = limit, value


class PackLockedError(TrtpackError):
    """Another writer holds the lock on a pack's directory for longer than the timeout."""

    def __init__(self, message: str, *, path: str | None = None, timeout: float | None = None):
        super().__init__(message)
        self.path = path
        self.timeout = timeout


# --- signatures --------------------------------------------------------------------------


class SignatureError(IntegrityError):
    """A pack's signature does not verify: wrong key, tampered manifest, or subjects that do
    not match the manifest's members and digests."""

    def __init__(
        self,
        message: str = "",
        *,
        path: str | None = None,
        reason: str | None = None,
        expected: object = None,
        got: object = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason
        self.expected = expected
        self.got = got


class UnsignedPackError(SignatureError):
    """A signature was required and the pack has none."""


__all__ = [
    "TrtpackError",
    "ArgumentTypeError",
    "NotAPackError",
    "IntegrityError",
    "UnsafePackError",
    "MissingMemberError",
    "ManifestError",
    "UnsupportedVersionError",
    "DeriveError",
    "RangeOverrideError",
    "ProgramError",
    "UnregisteredPytreeError",
    "InputMismatchError",
    "OutsideEngineProfile",
    "EngineError",
    "NoUsableEngineError",
    "SampleMismatchError",
    "SampleTooLargeError",
    "MissingDependencyError",
    "TargetSpecError",
    "DeviceError",
    "MigrationError",
    "OutputExistsError",
    "PackWriteError",
    "RegistryError",
    "PackLockedError",
    "SignatureError",
    "UnsignedPackError",
]
