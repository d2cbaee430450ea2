"""A tiny random embedding model saved as a sentence-transformers folder, and three small pages to index with it
(dense retrieval tests: no downloads)."""

from __future__ import annotations

import json

PAGES = {
    "library.txt": "Library\n\nThe library opens at 8:00 on weekdays.\n\n图书馆周一至周五八点开门，周末九点开门。",
    "canteen.txt": "Canteen\n\nThe canteen serves lunch from 11:00.\n\n食堂中午十一点供应午饭。",
    "dorm.txt": "Dormitories\n\nA dorm room costs 1200 yuan a year.\n\n宿舍每年住宿费一千二百元。",
}


def write_tiny_embed_model(folder, modules: bool = True):
    """A random BertModel + BertTokenizerFast saved like a sentence-transformers folder (CLS pooling, Normalize,
    a query prompt)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True)
    chars = sorted(set("".join(PAGES.values())) - set(" \n"))
    letters = [c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters), *chars]
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True).save_pretrained(folder)
    import torch

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(dict.fromkeys(vocab)),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
    )
    BertModel(cfg).save_pretrained(folder)
    if modules:
        (folder / "modules.json").write_text(
            json.dumps(
                [
                    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
                ]
            ),
            encoding="utf-8",
        )
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(
            json.dumps({"word_embedding_dimension": 32, "pooling_mode_cls_token": True}), encoding="utf-8"
        )
        (folder / "2_Normalize").mkdir()
        (folder / "config_sentence_transformers.json").write_text(
            json.dumps({"prompts": {"query": "query: ", "document": ""}, "similarity_fn_name": "cosine"}),
            encoding="utf-8",
        )
        (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}), encoding="utf-8")
    return folder


def write_pages(pages_dir) -> None:
    """:data:`PAGES` and a crawl manifest naming them (the dashboard lists only pages a crawl recorded)."""
    pages_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, text in PAGES.items():
        (pages_dir / name).write_text(text, encoding="utf-8")
        url = f"https://campus.example/{name.replace('.txt', '.html')}"
        title = text.split("\n", 1)[0]
        lines.append(json.dumps({"url": url, "final_url": url, "status": 200, "path": name, "title": title}))
    (pages_dir / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
