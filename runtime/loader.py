"""`edgeinfer.load`: open any bundle as the object its task needs."""

from __future__ import annotations

from pathlib import Path

from .bundle import Manifest, check_digests_in_background, square_pair_head
from .errors import BundleError, InputError

BUNDLES = Path(__file__).parent / "bundles"
DEFAULT_BUNDLES = {
    "xiangqi": "python -m edgeinfer.export.train_xiangqi --head squares",
    "xiangqi-chars": "python -m edgeinfer.export.train_xiangqi",
    "qa": "python -m edgeinfer.export.train_bert_qa",
    "qa-dgcnn": "python -m edgeinfer.export.qa_bundle",
    "chat": "python -m edgeinfer.export.train_chat",
}


def default_bundle(name: str) -> Path:
    """The folder of a bundle shipped inside the package ("xiangqi", "xiangqi-chars", "qa", "qa-dgcnn", "chat")."""
    path = BUNDLES / name
    if not (path / "manifest.json").is_file():
        how = DEFAULT_BUNDLES.get(name, "an export command")
        raise BundleError(f"no default {name!r} bundle is installed at {path}; make it with `{how}`")
    return path


def load(path: str | Path, device: str = "auto", threads: int | None = None, verify: bool | None = None,
         allow_spinning: bool | None = None):
    """Validate the bundle at `path` and open it on onnxruntime (CUDA if present and asked for, else CPU).

    verify: check each file's sha256 against the manifest (default: yes, unless EDGEINFER_VERIFY=0); the hashing
    runs while the session opens. allow_spinning: whether onnxruntime's idle threads spin (default: the
    EDGEINFER_ALLOW_SPINNING variable, else the manifest's `session` block); False for models that take turns on
    the same cores, as a main model and its draft model do.
    """
    folder, manifest = Manifest.read(path, verify=False)
    digests_match = check_digests_in_background(folder, manifest, verify)
    try:
        model = _open(folder, manifest, device, threads, allow_spinning)
    except BundleError:
        digests_match()  # a corrupt file explains a failure to open it better than the failure does
        raise
    digests_match()
    return model


def _open(folder: Path, manifest: dict, device: str, threads: int | None, allow_spinning: bool | None):
    task = manifest["task"]
    if square_pair_head(manifest):
        from .xiangqi.square_pairs import SquarePairModel

        return SquarePairModel(folder, manifest, device=device, threads=threads, allow_spinning=allow_spinning)
    if task in ("causal-lm", "chat", "xiangqi"):
        from .lm import CausalLM, decode_options

        model = CausalLM(folder, manifest, device=device, threads=threads, allow_spinning=allow_spinning)
        try:  # else a bad default would load and then fail every call that does not override it, as the caller's fault
            decode_options(model)
        except InputError as exc:
            raise BundleError(f"bundle {folder}: its default decoding options (manifest 'generation' block, "
                              f"special_tokens.eos) are unusable: {exc}") from exc
        return model
    if task == "extractive-qa":
        from .qa import Reader

        return Reader(folder, manifest, device=device, threads=threads, allow_spinning=allow_spinning)
    if task == "masked-lm":
        from .mlm import MaskedLM

        return MaskedLM(folder, manifest, device=device, threads=threads, allow_spinning=allow_spinning)
    raise BundleError(f"task {task!r} has no runtime")
