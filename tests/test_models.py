import pytest
import transformers as tf
from tiny_models import tiny_model

from layerscope.core.errors import ModelError
from layerscope.core.models import default_model_dir, load_model, weights_fingerprint


def test_load_local_stories(stories_path):
    loaded = load_model(str(stories_path))
    assert loaded.model.config.num_hidden_layers == 5
    assert loaded.tokenizer.pad_token is not None  # pad added for batching
    ids = loaded.tokenizer("Once upon a time", return_tensors="pt")["input_ids"]
    out = loaded.model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
    assert "there was a little" in loaded.tokenizer.decode(out[0])


def test_fingerprint_is_stable_and_sensitive():
    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=0)
    assert weights_fingerprint(a) == weights_fingerprint(b)
    assert weights_fingerprint(a) != weights_fingerprint(tiny_model("llama", seed=1))


def test_missing_path(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model(str(tmp_path / "nope"))


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path))


def test_fake_gguf(tmp_path):
    p = tmp_path / "model.gguf"
    p.write_bytes(b"not a gguf at all")
    with pytest.raises(ModelError, match="not a GGUF"):
        load_model(str(p))


def test_pickle_only_checkpoint_refused(tmp_path):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path, safe_serialization=False)
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ModelError, match="safetensors"):
        load_model(str(tmp_path))


def test_encoder_model_folder_refused(tmp_path):
    cfg = tf.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    tf.BertModel(cfg).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="encoder"):
        load_model(str(tmp_path))


def test_corrupt_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="config"):
        load_model(str(tmp_path))


@pytest.mark.skipif(not (default_model_dir() / "config.json").exists(), reason="default model not fetched")
def test_default_model_answers_paris():
    from layerscope.core.models import ask

    assert "paris" in ask(load_model("default"), "What is the capital of France?").lower()
