"""The SDXL weights a lab fetches and loads: the file list, fetch-weights, the loader.

Tiny randomly initialised SDXL repos are written in the Hub's layout
(models/backends/sdxl_random.py) and served by a loopback HTTP server that answers
like the Hub's ``resolve`` endpoint, so ``eegs fetch-weights`` runs huggingface_hub's
real download code and the backend loads the result through the lab's code path.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO

from experiment_protocols import load_protocol
from models.backends.sdxl_random import TINY, write_random_sdxl
from models.backends.sdxl_weights import (
    base_components,
    check_weights,
    required_files,
)

pytestmark = pytest.mark.timeout(180)

REPOS = ("base", "lightning", "vae", "ip_adapter")


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Path:
    """Tiny SDXL repos under HUB/<repo id>/ (2-step Lightning file)."""
    root = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    write_random_sdxl(root, TINY, steps=2)
    return root


def _cfg(sources: dict[str, str] | None = None):
    cfg = load_protocol().generation.sdxl
    for key, value in (sources or {}).items():
        setattr(cfg, key, value)
    cfg.diffusion_steps = 2
    cfg.width = cfg.height = 64
    return cfg


def _local(hub: Path) -> dict[str, str]:
    cfg = _cfg()
    return {k: str(hub / getattr(cfg, k)) for k in REPOS}


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_the_file_list_is_what_the_repos_hold_and_follows_model_index(hub, tmp_path):
    cfg = _cfg(_local(hub))
    listed = set()
    for wf in required_files(cfg):
        rel = Path(wf.source).relative_to(hub)
        listed.add(str(rel / next(n for n in wf.names if (Path(wf.source) / n).is_file())))
    assert listed == _files(hub)
    index = json.loads((hub / _cfg().base / "model_index.json").read_text())
    assert {c for c, _, _ in base_components(index)} == {
        "scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet"
    }  # fmt: skip
    # derived, not listed by hand: a component the index drops is no longer required
    index.pop("tokenizer_2")
    names = {n for c, lib, cls in base_components(index) for n in (c,)}
    assert "tokenizer_2" not in names


def test_missing_files_are_each_named_before_any_model_library_loads(hub, tmp_path):
    local = _local(hub)
    broken = tmp_path / "vae"
    broken.mkdir()
    (broken / "config.json").write_text((Path(local["vae"]) / "config.json").read_text())
    code = (
        "import sys, json\n"
        "from experiment_protocols import load_protocol\n"
        "from models.backends.sdxl_weights import check_weights, MissingWeightsError\n"
        "cfg = load_protocol().generation.sdxl\n"
        f"sources = json.loads({json.dumps(json.dumps({**local, 'vae': str(broken)}))})\n"
        "for k, v in sources.items():\n"
        "    setattr(cfg, k, v)\n"
        "cfg.diffusion_steps = 4\n"
        "try:\n"
        "    check_weights(cfg)\n"
        "except MissingWeightsError as err:\n"
        "    print(err)\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
    assert "2 missing weight file(s)" in out.stdout
    assert "sdxl_lightning_4step_unet.safetensors" in out.stdout
    assert "diffusion_pytorch_model.safetensors" in out.stdout
    assert "eegs fetch-weights" in out.stdout
    assert "hf download" in out.stdout
    assert "huggingface-cli" not in out.stdout


def test_worker_without_weights_exits_2_naming_model_index(tmp_path):
    folder = tmp_path / "pool"
    folder.mkdir()
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "app.cli", "worker", "--backend", "sdxl", "--pool", str(folder),
         "--session", str(tmp_path / "s")],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert "model_index.json" in res.stderr
    assert "sdxl_lightning_8step_unet.safetensors" in res.stderr
    assert "Traceback" not in res.stderr


def test_the_unet_is_never_initialised_on_the_host_before_loading(hub):
    from models.backends.sdxl import load_unet

    cfg = _cfg(_local(hub))
    files = check_weights(cfg)
    devices = []
    hook = torch.nn.modules.module.register_module_parameter_registration_hook(
        lambda module, name, param: devices.append(param.device.type)
    )
    try:
        unet = load_unet(
            files[f"{cfg.base}::unet/config.json"].parent,
            files[f"{cfg.lightning}::sdxl_lightning_2step_unet.safetensors"],
            torch.float32,
        )
    finally:
        hook.remove()
    # built on meta; the only host tensors registered are the file's, assigned afterwards
    k = devices.count("meta")
    assert k > 0
    assert devices == ["meta"] * k + ["cpu"] * (len(devices) - k)
    from safetensors.torch import load_file

    state = load_file(str(files[f"{cfg.lightning}::sdxl_lightning_2step_unet.safetensors"]))
    for name, tensor in unet.state_dict().items():
        assert tensor.device.type == "cpu"
        assert tensor.dtype == torch.float32
        torch.testing.assert_close(tensor, state[name].float())


def test_a_wrong_lightning_file_is_a_clear_error(hub, tmp_path):
    from safetensors.torch import save_file

    from models.backends.base import BackendUnavailableError
    from models.backends.sdxl import load_unet

    bad = tmp_path / "bad.safetensors"
    save_file({"conv_in.weight": torch.zeros(3, 3)}, str(bad))
    with pytest.raises(BackendUnavailableError, match="does not fit the SDXL UNet"):
        load_unet(hub / _cfg().base / "unet", bad, torch.float32)


class _HubHandler(http.server.SimpleHTTPRequestHandler):
    """GET/HEAD {repo}/resolve/{revision}/{file} from a folder, with the Hub's headers."""

    def translate_path(self, path: str) -> str:
        parts = path.split("?", 1)[0].lstrip("/").split("/")
        if len(parts) > 4 and parts[2] == "resolve":
            return str(Path(self.server.root) / parts[0] / parts[1] / "/".join(parts[4:]))
        return str(Path(self.server.root) / "__nothing__")

    def end_headers(self) -> None:
        path = Path(self.translate_path(self.path))
        if path.is_file():
            digest = hashlib.sha256(str(path).encode()).hexdigest()
            self.send_header("X-Repo-Commit", "0" * 40)
            self.send_header("ETag", f'"{digest}"')
        else:  # what the Hub says of a file a repo does not have
            self.send_header("X-Error-Code", "EntryNotFound")
        super().end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hub_server(hub):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
    server.root = str(hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _fetch(env_extra: dict, *args: str) -> subprocess.CompletedProcess:
    extra = dict(env_extra)
    protocol = Path(extra.pop("PROTOCOL"))
    env = {**os.environ, **extra}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "fetch-weights", "--protocol", str(protocol), *args],
        cwd=REPO, capture_output=True, text=True, timeout=150, env=env,
    )  # fmt: skip


def _protocol(tmp_path: Path, extra: str = "") -> Path:
    text = (REPO / "experiment_protocols" / "default.toml").read_text()
    text = text.replace("diffusion_steps = 8", "diffusion_steps = 2", 1)
    path = tmp_path / "protocol.toml"
    path.write_text(text + extra)
    return path


def test_fetch_weights_downloads_exactly_the_list_into_a_folder(hub, hub_server, tmp_path):
    dest = tmp_path / "weights"
    env = {"HF_ENDPOINT": hub_server, "HF_HUB_CACHE": str(tmp_path / "cache"),
           "PROTOCOL": str(_protocol(tmp_path))}  # fmt: skip
    res = _fetch(env, "--dir", str(dest))
    assert res.returncode == 0, res.stderr
    got = {f for f in _files(dest) if not f.startswith(".") and "/.cache/" not in f}
    assert got == _files(hub)
    assert "[generation.sdxl]" in res.stdout
    lines = dict(line.split(" = ", 1) for line in res.stdout.splitlines() if line.startswith(REPOS))
    sources = {k: json.loads(v) for k, v in lines.items()}
    assert check_weights(_cfg(sources))
    again = _fetch(env, "--dir", str(dest))  # nothing left to fetch
    assert again.returncode == 0
    assert "0 file(s) fetched" in again.stdout


def test_fetch_weights_fills_the_hub_cache_that_a_session_loads_from(hub, hub_server, tmp_path):
    cache = tmp_path / "cache"
    env = {"HF_ENDPOINT": hub_server, "HF_HUB_CACHE": str(cache),
           "PROTOCOL": str(_protocol(tmp_path))}  # fmt: skip
    res = _fetch(env)
    assert res.returncode == 0, res.stderr
    assert check_weights(_cfg(), cache_dir=str(cache))
    # a session: Hub ids, local files only, offline; the backend loads and renders
    code = (
        "import numpy as np\n"
        "from experiment_protocols import load_protocol\n"
        "from models.backends.sdxl import SDXLBackend\n"
        "cfg = load_protocol().generation.sdxl\n"
        "cfg.diffusion_steps = 2; cfg.width = cfg.height = 64\n"
        "b = SDXLBackend.from_pretrained(cfg, device='cpu')\n"
        "ims = b.generate(np.ones((2, b.embed_dim), np.float32), [1, 2])\n"
        "print('SHAPE', b.embed(ims).shape)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=150,
        env={**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"SHAPE (2, {TINY.vit['projection_dim']})" in out.stdout


def test_fetch_weights_offline_is_a_clear_error(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache"),
           "PROTOCOL": str(_protocol(tmp_path))}  # fmt: skip
    res = _fetch(env)
    assert res.returncode == 2
    assert "cannot download stabilityai/stable-diffusion-xl-base-1.0 :: model_index.json" in (
        res.stderr
    )
    assert "cannot be reached" in res.stderr
    assert "Traceback" not in res.stderr


# -- invalid renders --------------------------------------------------------------------
@pytest.fixture
def tiny(hub):
    from models.backends.sdxl import SDXLBackend

    torch.set_num_threads(2)
    return SDXLBackend.from_pretrained(_cfg(_local(hub)), device="cpu")


def _nan_decoder(backend, calls: int | None):
    """Make the VAE decoder output NaN for the next ``calls`` calls (None: always)."""
    seen = []

    def hook(module, inputs, output):
        seen.append(1)
        if calls is None or len(seen) <= calls:
            return output * float("nan")
        return output

    return backend.pipe.vae.decoder.register_forward_hook(hook)


def test_a_nan_render_is_made_again_with_another_seed(tiny, caplog):
    E = np.random.default_rng(0).normal(size=(2, tiny.embed_dim)).astype(np.float32)
    handle = _nan_decoder(tiny, calls=1)
    try:
        with caplog.at_level("WARNING", logger="eegs.sdxl"):
            images = tiny.generate(E, [11, 12])
    finally:
        handle.remove()
    assert all(im is not None for im in images)
    assert [im.info["eegs_seed"] for im in images] != [11, 12]
    assert all(np.asarray(im).max() > 0 for im in images)
    assert "invalid image(s) (NaN or black)" in caplog.text


def test_an_image_that_stays_invalid_is_dropped_and_never_reaches_the_gp(tiny, tmp_path):
    from PIL import Image

    from models.backends.pool import ImagePool
    from models.heuristic import HeuristicGenerator

    folder = tmp_path / "pool"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            folder / f"p{i}.png"
        )
    pool = ImagePool.from_folder(folder, tiny.embed, "tiny")
    g = load_protocol().generation
    g.heuristic.inner_steps = 2
    g.gp.fit_iters = 5
    gen = HeuristicGenerator(g.heuristic, g.gp, tiny, pool, seed=0)
    for j, c in enumerate(gen.next_round(n_images=6)):
        gen.observe(c.pool_id, c.embedding, j / 6)
    handle = _nan_decoder(tiny, calls=None)
    try:
        batch = gen.next_round(n_images=6)
    finally:
        handle.remove()
    assert tiny.failed_images >= 4
    assert [c.kind for c in batch if c.kind == "child"] == []  # no child has an image
    assert all(c.image is not None for c in batch)
    assert all(np.isfinite(e).all() for e in gen.embeddings)
