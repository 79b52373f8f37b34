"""Regenerate tests/golden/text_encoder_transformers.npz: tiny random BERT, CLIP-text and T5-encoder models, outputs.

Reference: transformers 4.57.6 PyTorch classes `BertModel`, `CLIPTextModel`, `T5EncoderModel` on torch 2.13.0+cpu
(both versions are printed and stored). Each model is a 2-layer, width-32 random model (fixed seeds, every weight
perturbed so no LayerNorm is an identity) with a tiny tokenizer of the family's own kind (WordPiece vocab.txt; CLIP
byte-level BPE vocab.json + merges.txt; a Unigram tokenizer.json for T5). For each we store the folder's config and
tokenizer files as text, the state dict, a few texts, their token ids and mask, the last hidden states and the pooled
vector (masked token mean for BERT and T5; the EOS token's state, `pooler_output`, for CLIP). For BERT also the
outputs with only the first layer kept. The test rebuilds the folder (weights as `model.safetensors`) and compares
our Flax adapter with these outputs.

Run: python tests/golden/make_text_encoder_golden.py   (needs torch; the tests do not)
"""
import json
import os
import sys
import tempfile

import numpy as np
import torch
import transformers
from transformers import (AutoTokenizer, BertConfig, BertModel, BertTokenizer, CLIPTextConfig, CLIPTextModel,
                          CLIPTokenizer, PreTrainedTokenizerFast, T5Config, T5EncoderModel)
from transformers.models.clip.tokenization_clip import bytes_to_unicode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_reference import param_count, perturb_  # noqa: E402

OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "text_encoder_transformers.npz")
WORDS = ("a photo of an the sneaker ankle boot on white background black and picture dress bag coat shirt "
         "small digit zero one two seven").split()
TEXTS = ["a photo of a sneaker", "an ankle boot on a white background", "a black and white picture of a dress",
         "zebra"]  # the last one is out of vocabulary: unknown tokens / raw byte pieces
MAX_LENGTH = 12


def bert_folder(folder):
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + list(letters)
                               + ["##" + c for c in letters]))
    with open(os.path.join(folder, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    BertTokenizer(os.path.join(folder, "vocab.txt")).save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=24, type_vocab_size=2)
    return BertModel(config, add_pooling_layer=False)


def clip_bpe_files(folder):
    """A byte-level BPE with every byte, every byte + '</w>', and left-to-right merges spelling out WORDS."""
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars]
    merges = []
    for word in WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merged = pieces[0] + pieces[1]
            if (pieces[0], pieces[1]) not in merges:
                merges.append((pieces[0], pieces[1]))
                if merged not in vocab:
                    vocab.append(merged)
            pieces = [merged] + pieces[2:]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return len(vocab)


def clip_folder(folder):
    vocab_size = clip_bpe_files(folder)
    tokenizer = CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"))
    tokenizer.save_pretrained(folder)
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=16, projection_dim=16,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModel(config)


def t5_folder(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, decoders

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -1.0) for w in WORDS] + [(c, -4.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>").save_pretrained(folder)
    config = T5Config(vocab_size=len(pieces), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, relative_attention_max_distance=16,
                      feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(config)


def run(name, build, seed, out):
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(seed)
        model = build(folder).eval()
        perturb_(model, torch.Generator().manual_seed(seed + 1))
        model.save_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        enc = tokenizer(TEXTS, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        with torch.no_grad():
            res = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        hidden = res.last_hidden_state.numpy()
        mask = enc["attention_mask"].numpy().astype(bool)
        m = mask[..., None].astype(np.float32)
        pooled = res.pooler_output.numpy() if name == "clip" else (hidden * m).sum(1) / m.sum(1)
        files = {f: open(os.path.join(folder, f)).read() for f in sorted(os.listdir(folder))
                 if f.endswith((".json", ".txt")) and f != "generation_config.json"}
        out[f"{name}/files_json"] = np.array(json.dumps(files))
        out[f"{name}/input_ids"] = enc["input_ids"].numpy().astype(np.int32)
        out[f"{name}/mask"] = mask
        out[f"{name}/hidden"] = hidden
        out[f"{name}/pooled"] = pooled.astype(np.float32)
        for k, v in model.state_dict().items():
            out[f"{name}/state_dict/{k}"] = v.numpy().astype(np.float32)
        if name == "bert":  # the first layer only: what TextEncoder(num_layers=1) must give
            model.encoder.layer = model.encoder.layer[:1]
            with torch.no_grad():
                out["bert/hidden_1layer"] = model(input_ids=enc["input_ids"],
                                                  attention_mask=enc["attention_mask"]).last_hidden_state.numpy()
        print(f"{name}: {type(model).__name__}, {param_count(model):,} params, ids {enc['input_ids'][0].tolist()}")


def main() -> None:
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    out = {"texts": np.array(TEXTS), "max_length": np.int64(MAX_LENGTH),
           "transformers_version": np.array(transformers.__version__), "torch_version": np.array(torch.__version__)}
    run("bert", bert_folder, 10, out)
    run("clip", clip_folder, 20, out)
    run("t5", t5_folder, 30, out)
    np.savez(OUT_PATH, **out)
    print(f"wrote {OUT_PATH} ({os.path.getsize(OUT_PATH):,} bytes)")


if __name__ == "__main__":
    main()
