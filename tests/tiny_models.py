"""Tiny versions of every model DDB loads, built from configs with random weights (test models:
this file is not part of the spuraug package, which never imports it).

Tests, the CPU benchmarks (bench/test_ddb_throughput.py), the GPU benchmarks' ``--smoke`` mode
and bench.studies.ray_scaling save these with ``save_pretrained`` to a folder and then load
them through the same :mod:`spuraug.ddb.hub` code that loads the real model ids, the way
diffusers tests its pipelines on "dummy components". Nothing here downloads anything:
the CLIP and BERT tokenizers are written from a small project-made vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.gpu.stage_throughput import write_bert_vocab
from spuraug.toyworld.tokenizer import build_clip_tokenizer

#: Words the tiny tokenizers know as single tokens (plus every single character).
WORDS: tuple[str, ...] = (
    "a", "photo", "of", "the", "digit", "bird", "animal", "person", "on", "land", "water",
    "cropped", "close-up", "good", "nice", "clean", "dark", "bright", "small", "large", "one", "my",
    "cool", "rendition", "picture", "image",
)


def clip_tokenizer(folder: Path, words: tuple[str, ...] = WORDS, max_length: int = 16):
    """A CLIPTokenizer (vocab.json, merges.txt written to ``folder``) whose listed words are single tokens."""
    return build_clip_tokenizer(folder, list(words), model_max_length=max_length)


def _text_encoder(vocab_size: int, max_length: int, hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=max_length, projection_dim=hidden,
        hidden_act="gelu", bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )
    return CLIPTextModel(cfg)


def unet(in_channels: int = 4, cross_attention_dim: int = 32, sample_size: int = 8):
    """A two-block UNet2DConditionModel with the SD2 layout (linear projections, head dims per block)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=cross_attention_dim,
        attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=32,
    )


def vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=32, sample_size=16,
    )


def save_stable_diffusion(folder: Path, in_channels: int = 9, seed: int = 0, image_size: int = 16) -> Path:
    """Save a tiny Stable Diffusion pipeline folder (inpainting when ``in_channels`` is 9).

    The VAE downsamples by 2, so ``image_size`` pixels are ``image_size // 2`` latents.
    """
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline, StableDiffusionPipeline

    torch.manual_seed(seed)
    folder = Path(folder)
    tok = clip_tokenizer(folder / "_tok")
    text_encoder = _text_encoder(len(tok), tok.model_max_length)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    cls = StableDiffusionInpaintPipeline if in_channels == 9 else StableDiffusionPipeline
    pipe = cls(
        vae=vae(), text_encoder=text_encoder, tokenizer=tok, unet=unet(in_channels, sample_size=image_size // 2),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    import shutil

    shutil.rmtree(folder / "_tok")
    return folder


def save_clipseg(folder: Path, seed: int = 0) -> Path:
    """Save a tiny CLIPSegForImageSegmentation with its CLIPSegProcessor."""
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, ViTImageProcessor

    torch.manual_seed(seed)
    folder = Path(folder)
    tok = clip_tokenizer(folder / "_tok")
    cfg = CLIPSegConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=tok.model_max_length,
                         bos_token_id=len(tok) - 2, eos_token_id=len(tok) - 1, pad_token_id=len(tok) - 1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=32, reduce_dim=16, extract_layers=[0, 1], decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )
    model = CLIPSegForImageSegmentation(cfg)
    proc = CLIPSegProcessor(
        image_processor=ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3),
        tokenizer=tok,
    )
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    import shutil

    shutil.rmtree(folder / "_tok")
    return folder


def save_sam(folder: Path, seed: int = 0) -> Path:
    """Save a tiny SamModel with its SamProcessor (64-pixel inputs)."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    torch.manual_seed(seed)
    cfg = SamConfig(
        vision_config=dict(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=8, mlp_dim=64, global_attn_indexes=[1],
                           window_size=4, num_pos_feats=8),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_dim=32,
                                 iou_head_hidden_dim=16),
    )
    model = SamModel(cfg)
    proc = SamProcessor(image_processor=SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
                                                          mask_size={"longest_edge": 16}, mask_pad_size={"height": 16, "width": 16}))
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return Path(folder)


def save_sam2(folder: Path, seed: int = 0) -> Path:
    """Save a tiny Sam2Model (Hiera backbone, 4 stages) with its Sam2Processor (64-pixel inputs)."""
    from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor

    torch.manual_seed(seed)
    cfg = Sam2Config(
        vision_config=dict(
            backbone_config=dict(
                model_type="sam2_hiera_det_model", hidden_size=8, num_attention_heads=1, image_size=[64, 64],
                patch_kernel_size=[7, 7], patch_stride=[4, 4], patch_padding=[3, 3], query_stride=[2, 2],
                window_positional_embedding_background_size=[2, 2], num_query_pool_stages=3,
                blocks_per_stage=[1, 1, 1, 2], embed_dim_per_stage=[8, 16, 32, 64],
                num_attention_heads_per_stage=[1, 1, 2, 2], window_size_per_stage=[4, 4, 2, 2],
                global_attention_blocks=[4]),  # a global block must not open a pooled stage
            backbone_channel_list=[64, 32, 16, 8], backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]],
            fpn_hidden_size=16),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_hidden_layers=2, num_attention_heads=2,
                                 iou_head_hidden_dim=16),
    )
    model = Sam2Model(cfg)
    proc = Sam2Processor(image_processor=Sam2ImageProcessor(size={"height": 64, "width": 64},
                                                            mask_size={"height": 16, "width": 16}))
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return Path(folder)


def save_grounding_dino(folder: Path, seed: int = 0) -> Path:
    """Save a tiny GroundingDinoForObjectDetection (ResNet backbone, 2-layer BERT) and processor."""
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        ResNetConfig,
    )

    torch.manual_seed(seed)
    folder = Path(folder)
    vocab = write_bert_vocab(folder / "_vocab", WORDS)
    tok = BertTokenizer(vocab_file=str(vocab), model_max_length=32)
    cfg = GroundingDinoConfig(
        backbone_config=ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 32], depths=[1, 1, 1, 1],
                                     layer_type="basic", out_features=["stage2", "stage3", "stage4"]),
        text_config=BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=32),
        d_model=32, num_queries=8, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_feature_levels=3, encoder_n_points=2,
        decoder_n_points=2, max_text_len=32, fusion_dropout=0.0, position_embedding_type="sine",
    )
    model = GroundingDinoForObjectDetection(cfg)
    proc = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}), tokenizer=tok
    )
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    import shutil

    shutil.rmtree(folder / "_vocab")
    return folder


def tiny_ddb_toy_config(sd_model: str, clipseg: str, k: list[int], inpaint: dict | None = None) -> dict:
    """A toy config small enough for an end-to-end DDB run on tiny models (ERM 1 epoch, 200 images)."""
    return {
        "dataset_options": {"n_train": 200, "n_val": 80, "n_test": 80},
        "model": {"name": "toy_cnn", "width": 8, "pretrained": False},
        "eval": {"batch_size": 256, "every": 1},
        "loader": {"num_workers": 0},
        "erm": {"optimizer": "sgd", "lr": 0.05, "batch_size": 64, "epochs": 1},
        "ddb": {
            "invert": {"model": sd_model, "resolution": 16, "max_train_steps": 2, "n_images": 3,
                       "initializer_token": "digit", "noun": "digit"},
            "sources": {"k": list(k)},
            "segment": {"backend": "clipseg", "clipseg": clipseg, "clipseg_threshold": 0.0, "prompt": "digit"},
            "inpaint": {"model": sd_model, "resolution": 16, "num_inference_steps": 2, "batch_size": 2,
                        "prompt": "a photo of a {token} digit", **(inpaint or {})},
            "prune": {"n_steps": 4, "threshold": -1.0e9},
            "retrain": {"epochs": 2, "lr": 1.0e-3, "batch_size": 32},
        },
    }
