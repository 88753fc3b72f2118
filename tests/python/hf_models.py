"""Small Hugging Face models built from configs (no weights downloaded) and a batch for each."""

from __future__ import annotations

import torch
from torch import nn

FAMILIES = ("gpt2", "llama", "mistral", "qwen2", "bert", "vit", "torch_encoder")


def build(family: str, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...], torch.Tensor]:
    """(model in eval mode, inputs, integer targets) of a tiny model of ``family``."""
    import transformers as tf

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    vocab, n, t = 64, 3, 6
    ids = torch.randint(0, vocab, (n, t), generator=g)
    if family == "gpt2":
        cfg = tf.GPT2Config(
            vocab_size=vocab, n_positions=16, n_embd=32, n_layer=2, n_head=4,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )
        model = tf.GPT2LMHeadModel(cfg)
        return model.eval(), (ids,), ids
    if family in ("llama", "mistral", "qwen2"):
        cls = {
            "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
            "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
            "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
        }[family]
        cfg = cls[0](
            vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
            tie_word_embeddings=False,
        )
        return cls[1](cfg).eval(), (ids,), ids
    if family == "bert":
        cfg = tf.BertConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=48, max_position_embeddings=16, num_labels=3,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        )
        model = tf.BertForSequenceClassification(cfg)
        return model.eval(), (ids,), torch.randint(0, 3, (n,), generator=g)
    if family == "vit":
        cfg = tf.ViTConfig(
            image_size=8, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=48, num_labels=5,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        )
        model = tf.ViTForImageClassification(cfg)
        x = torch.randn(n, 3, 8, 8, generator=g)
        return model.eval(), (x,), torch.randint(0, 5, (n,), generator=g)
    if family == "torch_encoder":
        model = TorchEncoder()
        x = torch.randn(n, t, 16, generator=g)
        return model.eval(), (x,), torch.randint(0, 5, (n,), generator=g)
    raise ValueError(family)


class TorchEncoder(nn.Module):
    """nn.TransformerEncoder (one pre-LN and one post-LN layer), mean-pooled, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        kw = dict(d_model=16, nhead=4, dim_feedforward=24, dropout=0.0, batch_first=True)
        self.pre = nn.TransformerEncoderLayer(norm_first=True, **kw)
        self.post = nn.TransformerEncoderLayer(norm_first=False, **kw)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.post(self.pre(x))).mean(1))


def logits(out):
    """The logits of a Hugging Face output (or a tensor)."""
    return out if isinstance(out, torch.Tensor) else out.logits
