import gc
import json
import weakref

import pytest

from umtcds_core import models
from umtcds_core.llm import LocalBackend
from umtcds_core.models import ModelError, resolve


def test_embedded_name_resolves_to_the_packaged_gguf():
    spec = resolve("smollm2-135m")
    assert spec.kind == "embedded" and spec.gguf_file.endswith(".gguf")
    assert (spec.path / spec.gguf_file).stat().st_size > 50_000_000


def test_default_reference_is_the_embedded_model():
    assert resolve(None).ref == models.DEFAULT_MODEL


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("/no/such/folder", "No model found"),
        ("THUDM/glm-4-9b-chat-hf", "cannot be downloaded here"),
        ("/no/such/model.gguf", "does not exist"),
    ],
)
def test_unusable_references_get_one_sentence(ref, message):
    with pytest.raises(ModelError, match=message):
        resolve(ref)


def test_old_remote_code_glm4_folder_is_explained(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "chatglm",
                "auto_map": {"AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"},
            }
        ),
        encoding="utf-8",
    )
    with pytest.raises(ModelError, match="glm-4-9b-chat-hf"):
        resolve(str(tmp_path))


def test_folder_without_config_is_explained(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        resolve(str(tmp_path))


def test_model_without_chat_template_is_refused(tmp_path):
    """A base model folder (tokenizer without a chat template) cannot be used for chat."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = models.load_tokenizer("smollm2-135m")
    tok.chat_template = None
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ModelError, match="no chat template"):
        models.load(str(tmp_path), device="cpu")


def test_best_dtype_on_cpu_is_fp32():
    import torch

    assert models.best_dtype("cpu") == torch.float32


def test_embedded_model_chats_and_unload_drops_it():
    backend = LocalBackend("smollm2-135m", device="cpu")
    reply = backend.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=12)
    assert reply.strip(), "the embedded model gave an empty reply"
    assert "Paris" in reply
    ref = weakref.ref(backend._model)
    backend.close()
    gc.collect()
    assert ref() is None, "the model is still referenced after close()/unload()"


def test_batched_generation_matches_one_at_a_time():
    backend = LocalBackend("smollm2-135m", device="cpu", batch_size=4)
    convs = [
        [{"role": "user", "content": q}]
        for q in ("What is 2+2?", "Name a color.", "What is the capital of France? Answer briefly.")
    ]
    batched = backend.chat_batch(convs, max_tokens=8)
    single = [backend.chat(c, max_tokens=8) for c in convs]
    assert all(batched) and len(batched) == 3
    # Left padding keeps greedy decoding identical for the longest prompt (no pad tokens in front of it).
    assert batched[2] == single[2]
    backend.close()
