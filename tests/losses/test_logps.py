"""Tests of cwpo/losses/logps.py: summed response-token log-probs, chunked and from hidden states."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from cwpo.errors import ConfigError
from cwpo.losses.logps import response_logps_from_hidden, sequence_logps

BATCH, SEQ_LEN, VOCAB, HIDDEN = 4, 9, 13, 6


def naive_sequence_logps(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100):
    """The textbook version: full float64 log_softmax, shift, gather, mask, sum."""
    log_probs = logits.double().log_softmax(dim=-1)[:, :-1]
    targets = labels[:, 1:]
    mask = targets != ignore_index
    token_logps = log_probs.gather(-1, targets.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(dim=-1), mask.sum(dim=-1)


def make_labels(generator: torch.Generator, ignore_index: int = -100) -> torch.Tensor:
    """Labels with a prompt, responses, right padding, and one row without any response token.

    Row 0: prompt of 2, response to the end.  Row 1: prompt of 4, response of 3, padding of 2.
    Row 2: all ignored (a response cut away by truncation).  Row 3: a response label at position 0 too, which is
    never scored because no position predicts it.
    """
    labels = torch.randint(0, VOCAB, (BATCH, SEQ_LEN), generator=generator)
    labels[0, :2] = ignore_index
    labels[1, :4] = ignore_index
    labels[1, 7:] = ignore_index
    labels[2] = ignore_index
    labels[3, 1:3] = ignore_index
    return labels


EXPECTED_COUNTS = torch.tensor([7, 3, 0, 6])


class TestSequenceLogps:
    def test_uniform_logits_exact_value(self):
        """With equal logits every token has log-prob log(1/V): 3 response tokens, V = 4 -> 3 log(1/4) = -4.1588830834.

        Labels (-100, -100, 1, 2, 3): positions 1, 2, 3 predict the response tokens; the prompt counts nothing.
        """
        labels = torch.tensor([[-100, -100, 1, 2, 3]])
        logps, counts = sequence_logps(torch.zeros(1, 5, 4), labels)
        assert_close(logps, torch.tensor([3 * math.log(1 / 4)]))
        assert_close(counts, torch.tensor([3]))

    def test_shift_exact_value(self):
        """Position 0's logits (log-probs log(1/2) for tokens 0 and 1) predict labels[1] = 1: log-prob -log 2.

        Position 1's logits strongly favour token 0, but labels[2] is ignored, so they never count.
        """
        logits = torch.tensor([[[0.0, 0.0], [50.0, 0.0], [0.0, 0.0]]])
        logps, counts = sequence_logps(logits, torch.tensor([[-100, 1, -100]]))
        assert_close(logps, torch.tensor([-math.log(2)]))
        assert_close(counts, torch.tensor([1]))

    @pytest.mark.parametrize("chunk_size", [1, 2, 4, SEQ_LEN - 1, SEQ_LEN, 64])
    def test_matches_full_log_softmax(self, chunk_size):
        generator = torch.Generator().manual_seed(chunk_size)
        logits = torch.randn(BATCH, SEQ_LEN, VOCAB, generator=generator, dtype=torch.float64) * 3
        logits.requires_grad_(True)
        labels = make_labels(generator)
        logps, counts = sequence_logps(logits, labels, chunk_size=chunk_size)
        (grad,) = torch.autograd.grad(logps.sum(), logits)
        expected_logps, expected_counts = naive_sequence_logps(logits, labels)
        (expected_grad,) = torch.autograd.grad(expected_logps.sum(), logits)
        assert_close(logps, expected_logps)
        assert_close(counts, expected_counts)
        assert_close(counts, EXPECTED_COUNTS)
        assert_close(grad, expected_grad)
        assert logps[2] == 0 and (grad[2] == 0).all()

    def test_custom_ignore_index(self):
        generator = torch.Generator().manual_seed(3)
        logits = torch.randn(BATCH, SEQ_LEN, VOCAB, generator=generator)
        labels = make_labels(generator, ignore_index=-1)
        logps, counts = sequence_logps(logits, labels, ignore_index=-1, chunk_size=4)
        expected_logps, expected_counts = naive_sequence_logps(logits, labels, ignore_index=-1)
        assert_close(logps, expected_logps.float())
        assert_close(counts, expected_counts)

    def test_bfloat16_logits(self):
        """bf16 logits are upcast chunk by chunk: float32 result equal to the float64 reference on the same values."""
        generator = torch.Generator().manual_seed(4)
        logits = (torch.randn(BATCH, SEQ_LEN, VOCAB, generator=generator) * 3).to(torch.bfloat16).requires_grad_(True)
        labels = make_labels(generator)
        logps, _ = sequence_logps(logits, labels, chunk_size=3)
        logps.sum().backward()
        expected_logps, _ = naive_sequence_logps(logits.detach(), labels)
        assert logps.dtype == torch.float32
        assert logits.grad.dtype == torch.bfloat16
        assert_close(logps, expected_logps.float())

    def test_saves_no_float32_copy_of_the_logits(self):
        """For the backward pass only the bf16 logits themselves and (B, T)-sized tensors are kept."""
        generator = torch.Generator().manual_seed(5)
        logits = torch.randn(BATCH, SEQ_LEN, VOCAB, generator=generator).to(torch.bfloat16).requires_grad_(True)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda tensor: saved.append(tensor) or tensor, lambda t: t):
            sequence_logps(logits, make_labels(generator), chunk_size=2)
        vocab_sized = [tuple(t.shape) for t in saved if t.dim() >= 2 and t.shape[-1] == VOCAB]
        assert vocab_sized == [(BATCH, SEQ_LEN, VOCAB)]
        assert all(t.dtype != torch.float32 for t in saved if t.dim() >= 2 and t.shape[-1] == VOCAB)

    def test_gradcheck(self):
        generator = torch.Generator().manual_seed(6)
        logits = torch.randn(2, 5, 7, generator=generator, dtype=torch.float64, requires_grad=True)
        labels = torch.tensor([[-100, 3, 4, 0, 6], [-100, -100, 1, -100, -100]])
        assert torch.autograd.gradcheck(lambda x: sequence_logps(x, labels, chunk_size=2)[0], (logits,))

    @pytest.mark.parametrize("chunk_size", [0, -1, 2.0])
    def test_rejects_bad_chunk_size(self, chunk_size):
        with pytest.raises(ConfigError, match="chunk_size"):
            sequence_logps(torch.zeros(1, 3, 4), torch.zeros(1, 3, dtype=torch.long), chunk_size=chunk_size)

    def test_rejects_shape_mismatch(self):
        with pytest.raises(ConfigError, match="disagree"):
            sequence_logps(torch.zeros(1, 3, 4), torch.zeros(1, 4, dtype=torch.long))


def make_head(generator: torch.Generator, dtype: torch.dtype = torch.float64):
    hidden = torch.randn(BATCH, SEQ_LEN, HIDDEN, generator=generator, dtype=dtype).requires_grad_(True)
    weight = torch.randn(VOCAB, HIDDEN, generator=generator, dtype=dtype).requires_grad_(True)
    bias = torch.randn(VOCAB, generator=generator, dtype=dtype).requires_grad_(True)
    return hidden, weight, bias


class TestResponseLogpsFromHidden:
    @pytest.mark.parametrize("with_bias", [True, False])
    @pytest.mark.parametrize("chunk_size", [1, 4, 1024])
    def test_matches_sequence_logps_of_full_logits(self, chunk_size, with_bias):
        generator = torch.Generator().manual_seed(chunk_size)
        hidden, weight, bias = make_head(generator)
        labels = make_labels(generator)
        head_bias = bias if with_bias else None
        logps, counts = response_logps_from_hidden(
            hidden, weight, labels, lm_head_bias=head_bias, chunk_size=chunk_size
        )
        grads = torch.autograd.grad(logps.sum(), (hidden, weight, bias), allow_unused=True)
        full_logits = hidden @ weight.T + bias if with_bias else hidden @ weight.T
        expected_logps, expected_counts = sequence_logps(full_logits, labels)
        expected_grads = torch.autograd.grad(expected_logps.sum(), (hidden, weight, bias), allow_unused=True)
        assert_close(logps, expected_logps)
        assert_close(counts, expected_counts)
        assert_close(counts, EXPECTED_COUNTS)
        assert_close(grads[0], expected_grads[0])
        assert_close(grads[1], expected_grads[1])
        if with_bias:
            assert_close(grads[2], expected_grads[2])
        else:
            assert grads[2] is None
        assert logps[2] == 0 and (grads[0][2] == 0).all()

    def test_no_response_tokens_at_all(self):
        hidden, weight, bias = make_head(torch.Generator().manual_seed(7))
        labels = torch.full((BATCH, SEQ_LEN), -100)
        logps, counts = response_logps_from_hidden(hidden, weight, labels, lm_head_bias=bias)
        logps.sum().backward()
        assert_close(logps, torch.zeros(BATCH, dtype=torch.float64))
        assert_close(counts, torch.zeros(BATCH, dtype=torch.long))
        assert_close(hidden.grad, torch.zeros_like(hidden))
        assert_close(weight.grad, torch.zeros_like(weight))

    def test_frozen_head_gets_no_gradient(self):
        """LoRA leaves the LM head frozen: only the hidden states get a gradient."""
        generator = torch.Generator().manual_seed(8)
        hidden, weight, _ = make_head(generator)
        frozen_weight = weight.detach()
        logps, _ = response_logps_from_hidden(hidden, frozen_weight, make_labels(generator))
        logps.sum().backward()
        assert hidden.grad is not None and frozen_weight.grad is None

    def test_bfloat16_head(self):
        """The head runs in bf16 (the weight's dtype), the logsumexp in float32."""
        generator = torch.Generator().manual_seed(9)
        hidden, weight, bias = (t.detach().to(torch.bfloat16).requires_grad_(True) for t in make_head(generator))
        labels = make_labels(generator)
        logps, _ = response_logps_from_hidden(hidden, weight, labels, lm_head_bias=bias, chunk_size=5)
        logps.sum().backward()
        expected_logps, _ = sequence_logps(F.linear(hidden.detach(), weight.detach(), bias.detach()), labels)
        assert logps.dtype == torch.float32
        assert hidden.grad.dtype == weight.grad.dtype == bias.grad.dtype == torch.bfloat16
        assert_close(logps, expected_logps, rtol=1e-2, atol=1e-1)

    def test_saves_no_vocabulary_sized_logits(self):
        generator = torch.Generator().manual_seed(10)
        hidden, weight, bias = make_head(generator)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda tensor: saved.append(tensor) or tensor, lambda t: t):
            response_logps_from_hidden(hidden, weight, make_labels(generator), lm_head_bias=bias, chunk_size=2)
        assert [tuple(t.shape) for t in saved if t.dim() >= 2 and t.shape[-1] == VOCAB] == []

    def test_gradcheck(self):
        generator = torch.Generator().manual_seed(11)
        hidden = torch.randn(2, 5, 3, generator=generator, dtype=torch.float64, requires_grad=True)
        weight = torch.randn(7, 3, generator=generator, dtype=torch.float64, requires_grad=True)
        bias = torch.randn(7, generator=generator, dtype=torch.float64, requires_grad=True)
        labels = torch.tensor([[-100, 3, 4, 0, 6], [-100, -100, 1, -100, -100]])

        def logps(hidden, weight, bias):
            return response_logps_from_hidden(hidden, weight, labels, lm_head_bias=bias, chunk_size=2)[0]

        assert torch.autograd.gradcheck(logps, (hidden, weight, bias))

    def test_rejects_mismatched_hidden_size(self):
        with pytest.raises(ConfigError, match="hidden size"):
            response_logps_from_hidden(torch.zeros(1, 3, 4), torch.zeros(5, 2), torch.zeros(1, 3, dtype=torch.long))


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@requires_cuda
class TestOnCuda:
    """The chunking's point is GPU memory: measured here with the CUDA allocator's peak counter."""

    LONG_BATCH, LONG_SEQ_LEN, LARGE_VOCAB, LARGE_HIDDEN = 2, 512, 32_000, 1024

    def _labels(self, generator: torch.Generator) -> torch.Tensor:
        labels = torch.randint(0, self.LARGE_VOCAB, (self.LONG_BATCH, self.LONG_SEQ_LEN), generator=generator)
        labels[:, :100] = -100
        return labels.cuda()

    def _extra_peak_bytes(self, compute) -> int:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        compute()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - baseline

    def test_sequence_logps_matches_full_log_softmax(self):
        generator = torch.Generator().manual_seed(0)
        logits = torch.randn(BATCH, SEQ_LEN, VOCAB, generator=generator).cuda().requires_grad_(True)
        labels = make_labels(generator).cuda()
        logps, counts = sequence_logps(logits, labels, chunk_size=4)
        (grad,) = torch.autograd.grad(logps.sum(), logits)
        expected_logps, expected_counts = naive_sequence_logps(logits, labels)
        (expected_grad,) = torch.autograd.grad(expected_logps.sum(), logits)
        assert_close(logps, expected_logps.float())
        assert_close(counts, expected_counts)
        assert_close(grad, expected_grad.float())

    def test_from_hidden_under_autocast_matches_float32_path(self):
        """Autocast is off inside: a float32 head stays float32, as in the float32 full-logits path."""
        generator = torch.Generator().manual_seed(1)
        hidden, weight, bias = (t.detach().float().cuda().requires_grad_(True) for t in make_head(generator))
        labels = make_labels(generator).cuda()
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            logps, _ = response_logps_from_hidden(hidden, weight, labels, lm_head_bias=bias, chunk_size=3)
        grads = torch.autograd.grad(logps.sum(), (hidden, weight, bias))
        expected_logps, _ = sequence_logps(hidden @ weight.T + bias, labels)
        expected_grads = torch.autograd.grad(expected_logps.sum(), (hidden, weight, bias))
        assert_close(logps, expected_logps)
        for grad, expected_grad in zip(grads, expected_grads, strict=True):
            assert_close(grad, expected_grad)

    def test_sequence_logps_peak_memory(self):
        """Forward without grad needs a few float32 chunks; forward + backward adds the bf16 gradient itself.

        A float32 log_softmax of the whole (B, T, V) would need at least ``float32_bytes`` on top.
        """
        generator = torch.Generator().manual_seed(2)
        shape = (self.LONG_BATCH, self.LONG_SEQ_LEN, self.LARGE_VOCAB)
        logits = torch.randn(shape, generator=generator).to(device="cuda", dtype=torch.bfloat16).requires_grad_(True)
        labels = self._labels(generator)
        float32_bytes = logits.numel() * 4

        with torch.no_grad():
            forward_peak = self._extra_peak_bytes(lambda: sequence_logps(logits, labels, chunk_size=16))
        training_peak = self._extra_peak_bytes(
            lambda: sequence_logps(logits, labels, chunk_size=16)[0].sum().backward()
        )
        assert forward_peak < 0.15 * float32_bytes
        assert training_peak < logits.numel() * 2 + 0.25 * float32_bytes

    def test_from_hidden_peak_memory(self):
        """No (B, T, V) tensor in any dtype: the extra peak stays far below even a bf16 copy of the logits."""
        generator = torch.Generator().manual_seed(3)
        hidden = torch.randn(self.LONG_BATCH, self.LONG_SEQ_LEN, self.LARGE_HIDDEN, generator=generator)
        hidden = hidden.to(device="cuda", dtype=torch.bfloat16).requires_grad_(True)
        weight = (torch.randn(self.LARGE_VOCAB, self.LARGE_HIDDEN, generator=generator) / 32).to("cuda", torch.bfloat16)
        labels = self._labels(generator)
        bf16_logits_bytes = self.LONG_BATCH * self.LONG_SEQ_LEN * self.LARGE_VOCAB * 2

        def train_step():
            logps, _ = response_logps_from_hidden(hidden, weight, labels, chunk_size=32)
            logps.sum().backward()

        assert self._extra_peak_bytes(train_step) < 0.5 * bf16_logits_bytes
