"""A pack in an OCI registry, through oras-py. No torch (except ``pull(variants="auto")``,
which asks torch what GPU this machine has).

    trtpack push model.trtpack oci://127.0.0.1:5000/models/detector:1
    trtpack inspect oci://127.0.0.1:5000/models/detector:1
    trtpack pull oci://127.0.0.1:5000/models/detector:1 -o model.trtpack [--variant NAME]

Two layouts, both with one layer per pack member whose digest is the member's SHA-256 (the
SHA-256 the pack's manifest already records), so the registry stores each member once across
tags, versions and layouts: re-pushing a pack whose engine changed uploads that engine only.

- ``modelpack`` (the default): the CNCF ModelPack layout (github.com/modelpack/model-spec),
  so ModelPack-aware tools (modctl, registries' model views) list and extract it.
  ``artifactType: application/vnd.cncf.model.manifest.v1+json``; the config blob is a
  ModelPack model config (``descriptor``, ``config``, ``modelfs``); every member, the pack's
  ``manifest.json`` included, is a raw layer (``...weight.v1.raw`` for ``.safetensors`` and
  ``.plan``, ``...weight.config.v1.raw`` for JSON) annotated with ``org.cncf.model.filepath``
  and ``org.opencontainers.image.title``: a ModelPack extract or ``oras pull`` gives the
  pack's members as a folder.
- ``trtpack``: ``artifactType: application/vnd.trtpack.v1``, the pack's ``manifest.json`` as
  the config blob (its digest is the pack's digest), one layer per member.

Both carry the ``dev.trtpack.*`` annotations (inputs, outputs, engines), shown by ``oras
manifest fetch`` without downloading anything else. ``inspect`` reads the OCI manifest and the
pack's ``manifest.json`` only. ``pull`` checks every blob against the manifest and reassembles
the pack with trtpack's deterministic writer: the same bytes as the file that was pushed, or,
with ``variants``, the same pack holding only the chosen engine variants.

Transport: HTTPS, except for loopback hosts (127.0.0.0/8, localhost, ::1), which default to
plain HTTP as Docker treats them; ``plain_http`` (``--plain-http`` / ``--no-plain-http``)
decides explicitly. Credentials come from the Docker config that oras-py reads
(``~/.docker/config.json``, ``auths`` entries keyed ``HOST[:PORT]``, as ``docker login``
writes them), from ``$DOCKER_CONFIG/config.json``, or from ``registry_config``
(``--registry-config``); oras-py reads them (credential helpers included).

Every request is trtpack's own, through requests, bounded against a registry that misbehaves:
connect and read timeouts (``timeout``, ``--timeout``, ``TRTPACK_OCI_TIMEOUT``; DEFAULT_TIMEOUT
by default), at most _MAX_REDIRECTS redirects, every answer that is not a blob (manifests,
indexes, the /v2/ ping, tokens, errors) read with a cap before it is parsed, blobs streamed to
disk up to their descriptor's size and hashed as they pass, a pull's total size under
``max_size`` (``--max-size``). No retries: a failure is a RegistryError at once.

The pack's signature (``PACK.sig``) travels as an OCI referrer of the model manifest (see
``referrers.py``); ``pull`` writes it to ``OUT.sig``.

The modules, bottom to top: ``transport`` (references, the bounded HTTP client, tokens, Docker
credentials), ``progress`` (the progress line), ``layouts`` (the two layouts: OCI manifests,
annotations, descriptors; no network), ``blobs`` (blobs and manifests up and down, checked),
``referrers`` (the signature), ``push``, ``pull`` (with ``inspect`` and ``fetch_manifest``).
This package re-exports their public names.
"""

from __future__ import annotations

from .layouts import (
    ARTIFACT_TYPE,
    CONFIG_TYPE,
    DEFAULT_LAYOUT,
    FILE_METADATA,
    FILEPATH,
    LAYOUTS,
    MEDIATYPE_UNTESTED,
    MODELPACK_ARTIFACT_TYPE,
    MODELPACK_CONFIG_TYPE,
    MODELPACK_WEIGHT,
    MODELPACK_WEIGHT_CONFIG,
    OCI_MANIFEST,
    TITLE,
    pack_annotations,
)
from .pull import (
    DEFAULT_MAX_SIZE,
    VARIANT_CHOICES,
    Pulled,
    RemotePack,
    fetch_manifest,
    inspect,
    pull,
    render_remote,
)
from .push import Pushed, push
from .referrers import EMPTY_TYPE, OCI_INDEX
from .transport import DEFAULT_TIMEOUT, Reference, parse_reference, uses_plain_http

__all__ = [
    "ARTIFACT_TYPE",
    "CONFIG_TYPE",
    "DEFAULT_LAYOUT",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_TIMEOUT",
    "EMPTY_TYPE",
    "FILEPATH",
    "FILE_METADATA",
    "LAYOUTS",
    "MEDIATYPE_UNTESTED",
    "MODELPACK_ARTIFACT_TYPE",
    "MODELPACK_CONFIG_TYPE",
    "MODELPACK_WEIGHT",
    "MODELPACK_WEIGHT_CONFIG",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "TITLE",
    "VARIANT_CHOICES",
    "Pulled",
    "Pushed",
    "Reference",
    "RemotePack",
    "fetch_manifest",
    "inspect",
    "pack_annotations",
    "parse_reference",
    "pull",
    "push",
    "render_remote",
    "uses_plain_http",
]
