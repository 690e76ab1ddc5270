"""Tiny tokenizers and models for the evaluation tests: built in memory, never downloaded."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import TINY as TINY_LLAMA

WORDS = (
    "the a cat dog sat on mat is good bad very help me please what how why answer question Human Assistant : ? . ,"
    " yes no maybe i you it this that and or not to of in"
).split()


def build_word_tokenizer():
    """A word-level fast tokenizer that adds BOS, with pad/eos/unk specials (ids 0-3)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="session")
def word_tokenizer():
    return build_word_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama(word_tokenizer):
    """A random 2-layer llama over the word tokenizer (eval mode)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        vocab_size=len(word_tokenizer),
        pad_token_id=word_tokenizer.pad_token_id,
        bos_token_id=word_tokenizer.bos_token_id,
        eos_token_id=word_tokenizer.eos_token_id,
        **TINY_LLAMA,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    return model.eval()


@pytest.fixture(autouse=True, scope="package")
def one_torch_thread():
    """Tiny models run fastest on one thread; on a shared 2-core box, 2 spinning threads are ~100x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
