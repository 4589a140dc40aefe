"""The trainer's ``amp`` (false | true | fp16 | bf16) and ``channels_last`` keys: strict parsing,
the device rules (fp16 only on CUDA, bf16 without a GradScaler), and that a channels_last step is
the same step as the NCHW one."""

from __future__ import annotations

import pytest
import torch

from custom.utils import amp_dtype, as_amp

REPORTS = ["Small left pleural effusion.", "No acute process.", "Right lower lobe opacity.", "Mild cardiomegaly."]


@pytest.mark.parametrize(("value", "mode"), [(True, "true"), ("true", "true"), ("1", "true"), (False, "false"),
                                             ("false", "false"), (0, "false"), ("fp16", "fp16"), ("FP16", "fp16"),
                                             ("bf16", "bf16"), ("bfloat16", "bf16")])
def test_amp_values(value, mode) -> None:
    assert as_amp(value) == mode


def test_amp_rules_per_device() -> None:
    assert amp_dtype("true", "cpu") is torch.bfloat16 and amp_dtype("true", "cuda") is torch.float16
    assert amp_dtype("bf16", "cuda") is torch.bfloat16 and amp_dtype("false", "cuda") is None
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        amp_dtype("fp16", "cpu")
    with pytest.raises(ValueError, match=r"amp: expected one of \['false', 'true', 'fp16', 'bf16'\]"):
        as_amp("fp8")


def _tiny():
    from custom.losses import PretrainLoss
    from custom.engines.pretrained import build_reclf_model
    from custom.optim import build_optimizer
    from custom.text import encode_reports, report_key, train_wordpiece

    torch.manual_seed(0)
    tokenizer = train_wordpiece(REPORTS * 3, vocab_size=100)
    model = build_reclf_model(tokenizer, "resnet18", text_config={"hidden_size": 32, "num_hidden_layers": 1,
                              "num_attention_heads": 2, "intermediate_size": 64, "hidden_dropout_prob": 0.0,
                              "attention_probs_dropout_prob": 0.0},
                              local_dim=16, position_dim=8, match_dim=8, embed_dim=16)
    batch = {k: torch.as_tensor(v) for k, v in encode_reports(tokenizer, REPORTS).items()}
    batch["image"] = torch.rand(len(REPORTS), 1, 32, 32, generator=torch.Generator().manual_seed(0))
    batch["report_id"] = torch.tensor([report_key(r) for r in REPORTS])
    return model, PretrainLoss(), build_optimizer(model, lr=1.0e-3), batch


def _trainer(model, loss, opt, **kwargs):
    from custom.engine import PretrainTrainer

    return PretrainTrainer("cpu", 1, [], model, opt, loss, **kwargs)


def test_fp16_on_cpu_is_refused_with_the_reason() -> None:
    model, loss, opt, _ = _tiny()
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        _trainer(model, loss, opt, amp="fp16")
    with pytest.raises(ValueError, match="channels_last"):
        _trainer(model, loss, opt, channels_last="maybe")


def test_bf16_on_cpu_autocasts_without_a_scaler() -> None:
    model, loss, opt, batch = _tiny()
    trainer = _trainer(model, loss, opt, amp="bf16")
    assert trainer.amp_dtype is torch.bfloat16 and not trainer.scaler.is_enabled()
    out = trainer._iteration(trainer, dict(batch))
    assert torch.isfinite(torch.tensor(out["loss"]))


def test_channels_last_step_equals_the_nchw_step() -> None:
    from custom.optim import build_optimizer

    results = []
    for channels_last in (False, True):
        # float64: in float32 the two memory formats round differently (measured: gradients differ
        # by 1e-4 in norm, 1e-13 in float64), which would hide a real difference in the tolerance
        model, loss, _, batch = _tiny()
        model = model.double()
        batch["image"] = batch["image"].double()
        opt = build_optimizer(model, lr=1.0e-3)
        trainer = _trainer(model, loss, opt, channels_last=str(channels_last).lower())  # as the command line passes it
        convs = [m.weight for m in model.image_encoder.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1]
        assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs) == channels_last
        out = trainer._iteration(trainer, dict(batch))
        # the gradients of the step (AdamW's first update is ~lr·sign(g): it would amplify the
        # rounding differences of near-zero gradient entries, so compare before it)
        results.append((out["loss"], {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-12)
    assert set(results[0][1]) == set(results[1][1])
    for k, g in results[0][1].items():
        # float64 summation order still differs between the layouts: one conv1 entry of 3,136 was off
        # by 5.6e-12 (2.6e-9 relative) in a full-suite run; a layout bug would differ by ~1e-2
        torch.testing.assert_close(results[1][1][k], g, rtol=1e-7, atol=1e-10, msg=lambda m, k=k: f"grad {k}: {m}")
