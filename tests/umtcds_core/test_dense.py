"""umtcds_core.dense: optional dense retrieval with a tiny random BERT saved as a sentence-transformers folder.

No downloads: the model is a random 1-layer BertModel and its tokenizer is built from a small vocab file, so the
vectors mean nothing — the tests check the plumbing (pooling as declared, files, incremental re-embedding, fusion,
the sentences), not the ranking quality.
"""

from __future__ import annotations

import json
import shutil

import pytest

from tests.dense_helpers import PAGES, write_tiny_embed_model
from umtcds_core import dense
from umtcds_core import index as ix
from umtcds_core.cli import main


@pytest.fixture(scope="module")
def tiny_embed(tmp_path_factory):
    """``(model_dir, pages_dir, index_dir)``: the tiny model and three pages indexed with it, once per module."""
    root = tmp_path_factory.mktemp("dense")
    model_dir = write_tiny_embed_model(root / "tiny-embed")
    pages = root / "pages"
    pages.mkdir()
    for name, text in PAGES.items():
        (pages / name).write_text(text, encoding="utf-8")
    report = ix.build_index(pages, root / "index", {"embed_model": str(model_dir), "embed_batch_size": 2})
    assert "Dense vectors (tiny-embed): " in report.sentence(root / "index")
    return model_dir, pages, root / "index"


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error(capsys, *argv) -> str:
    rc, _, err = _run(capsys, *argv)
    assert rc == 1 and err.startswith("Error: ") and "Traceback" not in err and err.count("\n") == 1, err
    return err


# ---- the model folder ------------------------------------------------------------------------------------------------
def test_recipe_reads_pooling_normalize_and_prompts(tiny_embed, tmp_path):
    recipe = dense.read_recipe(tiny_embed[0])
    assert recipe.pooling == ("cls",) and recipe.normalize and recipe.max_length == 64
    assert (recipe.query_prompt, recipe.document_prompt) == ("query: ", "")

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}", encoding="utf-8")
    recipe = dense.read_recipe(plain)  # a plain HF encoder: mean pooling, and the build says so
    assert recipe.pooling == ("mean",) and "no modules.json" in recipe.notes[0] and "mean pooling" in recipe.notes[0]

    st6 = [  # sentence-transformers 6 writes module paths of its own and one "pooling_mode" string
        {"idx": 0, "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
        {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"},
    ]
    (plain / "modules.json").write_text(json.dumps(st6), encoding="utf-8")
    (plain / "1_Pooling").mkdir()
    pooling = {"pooling_mode": "mean_sqrt_len_tokens", "include_prompt": False}
    (plain / "1_Pooling" / "config.json").write_text(json.dumps(pooling), encoding="utf-8")
    recipe = dense.read_recipe(plain)
    assert recipe.pooling == ("mean_sqrt_len",) and not recipe.include_prompt and not recipe.normalize

    (plain / "modules.json").write_text(
        json.dumps([{"idx": 0, "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]), encoding="utf-8"
    )
    with pytest.raises(dense.DenseError) as exc:
        dense.read_recipe(plain)
    assert "Dense module" in str(exc.value) and "Transformer, Pooling and Normalize" in str(exc.value)


def test_vectors_are_the_declared_pooling_and_batch_invariant(tiny_embed):
    import numpy as np
    import torch

    emb = dense.Embedder(dense.read_recipe(tiny_embed[0]), device="cpu", batch_size=2)
    texts = ["library 图书馆", "the canteen serves lunch from 11:00 食堂中午十一点供应午饭"]
    together = emb.encode(texts)
    alone = np.stack([emb.encode([t])[0] for t in texts])
    assert together.shape == (2, 32) and np.allclose(together, alone, atol=1e-5)  # padding never leaks in
    batch = emb.tokenizer(texts[:1], return_tensors="pt")
    with torch.inference_mode():
        cls = emb.model(**batch).last_hidden_state[:, 0]
    assert np.allclose(together[0], torch.nn.functional.normalize(cls, dim=-1)[0].numpy(), atol=1e-5)

    emb.recipe.pooling = ("mean",)  # mean over real tokens only
    with torch.inference_mode():
        hidden = emb.model(**batch).last_hidden_state[0]
    assert np.allclose(emb.encode(texts[:1])[0], torch.nn.functional.normalize(hidden.mean(0), dim=-1), atol=1e-5)


# ---- building and searching ------------------------------------------------------------------------------------------
def test_index_writes_dense_vectors_and_remembers_the_model(tiny_embed):
    import numpy as np

    model_dir, _, index_dir = tiny_embed
    meta = json.loads((index_dir / "meta.json").read_text(encoding="utf-8"))
    chunks = (index_dir / "chunks.jsonl").read_text(encoding="utf-8").splitlines()
    vectors = np.load(index_dir / dense.DENSE_FILE)
    assert vectors.shape == (len(chunks), 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert meta["embed"]["model"] == "tiny-embed" and meta["embed"]["path"] == str(model_dir.resolve())
    assert len(meta["embed"]["fingerprint"]) == 40
    assert ix.index_status(index_dir).embed_model == str(model_dir.resolve())


def test_retrieve_fuses_both_rankings_in_the_json_shape(tiny_embed, capsys):
    rc, out, _ = _run(capsys, "retrieve", str(tiny_embed[2]), "图书馆几点开门", "--k", "3", "--json")
    hits = json.loads(out)
    assert rc == 0 and len(hits) == 3  # the dense ranking reaches every chunk
    for h in hits:
        assert {"url", "title", "text", "score", "page", "lexical_rank", "dense_rank"} <= set(h)
        assert h["score"] == pytest.approx(
            sum(1 / (dense.RRF_K + r) for r in (h["lexical_rank"], h["dense_rank"]) if r), abs=1e-6
        )
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert hits[0]["page"] == "library.txt" and hits[0]["lexical_rank"] == 1


def test_rrf_rewards_agreement_over_one_first_place():
    assert [i for i, _ in dense.rrf([[1, 2, 3], [3, 1, 4]])] == [1, 3, 2, 4]
    fused = dict(dense.rrf([[5, 7], [9, 7]]))
    assert max(fused, key=fused.get) == 7  # second in both beats first in one: 2/62 > 1/61
    assert fused[5] == pytest.approx(1 / 61) and fused[7] == pytest.approx(2 / 62)


def test_a_page_edit_re_embeds_only_that_page(tiny_embed, tmp_path, monkeypatch, capsys):
    model_dir, pages_src, index_src = tiny_embed
    pages, index_dir = tmp_path / "pages", tmp_path / "index"
    shutil.copytree(pages_src, pages)
    shutil.copytree(index_src, index_dir)
    ix.build_index(pages, index_dir, {"embed_model": str(model_dir)})  # the copied pages: same text, new folder
    embedded: list[str] = []
    real = dense.Embedder.encode
    monkeypatch.setattr(
        dense.Embedder, "encode", lambda self, texts, *a, **k: embedded.extend(texts) or real(self, texts, *a, **k)
    )

    (pages / "canteen.txt").write_text(PAGES["canteen.txt"] + "\n\n周末食堂早上七点开门。", encoding="utf-8")
    rc, out, _ = _run(
        capsys,
        "index",
        str(pages),
        "--out",
        str(index_dir),
        "--embed-model",
        str(model_dir),
        "--embed-device",
        "cpu",
        "--quiet",
    )
    assert rc == 0 and "1 changed" in out and "Dense vectors (tiny-embed): 1 chunk embedded on cpu" in out
    assert embedded and all("食堂" in t or "Canteen" in t for t in embedded)

    embedded.clear()  # nothing changed, settings from a YAML as the dashboard saves them: the model is not even loaded
    settings = tmp_path / "index.yaml"
    settings.write_text(ix.INDEX.to_yaml({"embed_model": str(model_dir), "embed_batch_size": 8}), encoding="utf-8")
    rc, out, _ = _run(capsys, "index", str(pages), "--out", str(index_dir), "--config", str(settings), "--quiet")
    assert rc == 0 and embedded == [] and "Dense vectors (tiny-embed): 0 chunks embedded, 3 reused" in out


# ---- bad input and a missing model ----------------------------------------------------------------------------------
def test_missing_model_folders_say_what_to_do(tiny_embed, tmp_path, capsys):
    model_dir, pages_src, index_src = tiny_embed
    err = _one_error(
        capsys, "index", str(pages_src), "--out", str(tmp_path / "ix"), "--embed-model", str(tmp_path / "no")
    )
    assert "embedding model folder" in err and "does not exist" in err and "umtcds models pull" in err
    assert not (tmp_path / "ix").exists()  # said before anything was written

    moved, index_dir = tmp_path / "moved-model", tmp_path / "index"
    shutil.copytree(model_dir, moved)
    shutil.copytree(index_src, index_dir)
    ix.build_index(pages_src, index_dir, {"embed_model": str(moved)})
    shutil.rmtree(moved)
    err = _one_error(capsys, "retrieve", str(index_dir), "图书馆")
    assert "which is gone" in err and "restore that folder or rebuild the index without --embed-model" in err
    with pytest.raises(dense.DenseError) as exc:
        ix.Index.load(index_dir)
    assert "不带 --embed-model 重建索引" in exc.value.zh

    rc, out, _ = _run(capsys, "index", str(pages_src), "--out", str(index_dir), "--quiet")
    assert rc == 0 and "Dense vectors (moved-model) dropped" in out  # rebuilt without the flag: lexical again
    assert not (index_dir / dense.DENSE_FILE).exists()
    hits = ix.Index.load(index_dir).search("图书馆", k=2)
    assert hits and "dense_rank" not in hits[0]
