"""Inpainting space and task (ASNG-NAS, spec asng.md §3): masks, metrics, weight sharing, a tiny search through
the engine (``trainer.Search``) and its resume, the retraining through ``retrain.train`` (Adam, step schedule),
and the experiment script."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from oneshot import strategies
from oneshot.errors import UserError
from oneshot.retrain import Retraining, retrain_preset, step_factor
from oneshot.spaces.base import Integer
from oneshot.spaces.inpainting import InpaintingSpace
from oneshot.tasks.inpainting import InpaintingTask, make_mask, masked_batch, psnr, score, ssim

from conftest import interrupted_and_resumed

from conftest import experiment  # noqa: E402

_driver = experiment('inpainting')
main, retrain_network, search_config, search_inpainting = (
    _driver.main, _driver.retrain_network, _driver.search_config, _driver.search_inpainting)


def small(encoding="int", layers=2):
    return InpaintingSpace(encoding, layers=layers, channel_scale=1 / 8)   # channels 8..32


def active(space, arch):
    """The supernet's ``active`` for an architecture: one index per decision, ``value - low`` for integers."""
    return [[v - d.low if isinstance(d, Integer) else v] for v, d in zip(arch, space.decisions)]


def images(n=64, size=16, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def one_layer(ch=8, kidx=2, skip=0):
    """An int architecture whose active path is node 1 alone (out = n1)."""
    s = small()
    return s.from_string(f"in1=n0,skip1={skip},kidx1={kidx},ch1={ch},in2=n1,skip2=0,kidx2=1,ch2=8,out=n1")


# --- masks ----------------------------------------------------------------------------------------------
def test_center_mask_zeroes_exactly_the_central_16x16():
    m = make_mask("center", 3, 32)
    assert m.shape == (3, 1, 32, 32)
    assert (m[:, :, 8:24, 8:24] == 0).all() and m.sum() == 3 * (1024 - 256)


def test_random_pixel_mask_zeroes_80_percent_per_image_and_differs_between_images():
    m = make_mask("pixel", 8, 32, torch.Generator().manual_seed(0))
    dropped = 1 - m.flatten(1).mean(1)
    assert torch.allclose(dropped, torch.full((8,), 0.8), atol=0.01)
    assert not torch.equal(m[0], m[1])


def test_random_half_mask_zeroes_exactly_one_half():
    m = make_mask("half", 64, 32, torch.Generator().manual_seed(0))[:, 0]
    halves = torch.stack([m[:, :16].sum((1, 2)), m[:, 16:].sum((1, 2)), m[:, :, :16].sum((1, 2)),
                          m[:, :, 16:].sum((1, 2))], 1)            # kept pixels in top, bottom, left, right
    assert (m.sum((1, 2)) == 512).all()
    assert ((halves == 0).sum(1) == 1).all()                        # exactly one half fully zeroed
    assert len(set((halves == 0).int().argmax(1).tolist())) == 4    # and all four kinds occur


def test_unknown_mask_is_a_user_error():
    with pytest.raises(UserError, match="center"):
        make_mask("box", 1)


# --- metrics --------------------------------------------------------------------------------------------
def test_psnr_identical_is_inf_and_constant_error_gives_hand_value():
    x = torch.rand(2, 3, 8, 8)
    assert torch.isinf(psnr(x, x)).all()
    y = torch.full((2, 3, 8, 8), 0.5)
    assert torch.allclose(psnr(y + 0.1, y), torch.tensor([20.0, 20.0], dtype=torch.float64))   # MSE 0.01
    assert torch.allclose(psnr(y + 0.01, y), torch.tensor([40.0, 40.0], dtype=torch.float64))  # MSE 1e-4


def test_ssim_identical_is_one_and_shift_is_below_one():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.8
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    assert (ssim(x + 0.2, x) < 0.99).all()


def test_ssim_of_constant_images_is_the_luminance_term():
    # σ = cov = 0 everywhere, so SSIM = (2ab + C1) / (a² + b² + C1) = (0.6 + 1e-4) / (0.61 + 1e-4)
    a, b = torch.full((1, 3, 16, 16), 0.5), torch.full((1, 3, 16, 16), 0.6)
    assert ssim(a, b).item() == pytest.approx(0.983609, abs=1e-6)


def test_ssim_matches_an_independent_scipy_computation():
    rng = np.random.default_rng(1)
    x, y = rng.random((24, 24)), rng.random((24, 24))
    y = 0.5 * x + 0.5 * y                                             # correlated, so SSIM is clearly > 0
    blur = lambda t: gaussian_filter(t, 1.5, truncate=3.5)[5:-5, 5:-5]  # noqa: E731  11 taps, valid part
    mx, my = blur(x), blur(y)
    vx, vy, cv = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 1e-4, 9e-4
    ref = (((2 * mx * my + c1) * (2 * cv + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))).mean()
    got = ssim(torch.tensor(x)[None, None], torch.tensor(y)[None, None]).item()
    assert got == pytest.approx(ref, abs=1e-9) and 0.3 < ref < 0.95


# --- space and supernet ----------------------------------------------------------------------------------
def test_int_kernel_index_decodes_to_1_3_5_and_channels_are_scaled():
    s = small()
    assert [s.decode(one_layer(kidx=i))[0][0].kernel for i in (1, 2, 3)] == [1, 3, 5]
    assert s.channel_range == (8, 32) and small("cat").decisions[2].choices == ("8", "16", "32")


def test_cat_op_decodes_skip_and_kernel():
    s = small("cat")
    arch = s.from_string("in1=n0,op1=skip_k5,ch1=16,in2=n1,op2=noskip_k1,ch2=8,out=n2")
    layers, out = s.decode(arch)
    assert (layers[0].skip, layers[0].kernel, layers[0].channels) == (True, 5, 16)
    assert (layers[1].skip, layers[1].kernel, layers[1].channels, out) == (False, 1, 8, 2)


def test_strings_round_trip_and_errors_are_clear():
    s = small("int", layers=6)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        a = s.sample(g)
        assert s.from_string(s.to_string(a)) == a
    text = s.to_string(s.baseline())
    with pytest.raises(UserError, match="ch1"):
        s.from_string(text.replace("ch1=8", "ch1=99"))
    with pytest.raises(UserError, match="not 'decision=value'"):
        s.from_string(text + ",bogus=1")
    assert s.decisions[5 * 4].choices == ("n1", "n2", "n3", "n4", "n5")     # in6: level-back 5, node 0 out of reach


def test_active_path_follows_inputs_back_from_out():
    s = small("cat", layers=4)
    a = s.from_string("in1=n0,op1=skip_k3,ch1=8,in2=n0,op2=skip_k3,ch2=8,in3=n1,op3=skip_k3,ch3=8,"
                      "in4=n3,op4=skip_k3,ch4=8,out=n4")
    assert s.active_path(a) == [1, 3, 4]
    assert s.active_path(s.baseline()) == [1, 2, 3, 4]


@pytest.mark.parametrize("encoding", ["int", "cat"])
def test_supernet_forward_shape_for_sampled_architectures(encoding):
    s = InpaintingSpace(encoding, layers=4, channel_scale=1 / 16)
    net, g = s.build_supernet(input_shape=(3, 16, 16), num_outputs=3, channels=16), torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16)
    for _ in range(4):
        a = s.sample(g)
        assert net(x, active=active(s, a)).shape == (2, 3, 16, 16)
        assert s.build_child(a)(x).shape == (2, 3, 16, 16)
    with pytest.raises(UserError, match="outputs its 3 input channels"):
        s.build_supernet(input_shape=(3, 16, 16), num_outputs=10)


def test_supernet_reads_asng_samples_and_runs_their_values():
    s = small()
    net, strategy = s.build_supernet(), strategies.create("asng", s, seed=1)
    x = torch.rand(2, 3, 8, 8)
    for sample in strategy.ask("arch") + strategy.ask("weight"):
        assert s.from_indices(sample.active) == sample.arch                  # index + low -> the integer value
        child = s.build_child(sample.arch)
        with torch.no_grad():                                                # the child's weights = the slices
            for n in child.enc_w:
                c_out, c_in, k, _ = child.enc_w[n].shape
                off = (5 - k) // 2
                child.enc_w[n].copy_(net.enc_w[n][:c_out, :c_in, off:off + k, off:off + k])
                child.enc_b[n].copy_(net.enc_b[n][:c_out])
                child.dec_w[n].copy_(net.dec_w[n][:c_out, :c_in, off:off + k, off:off + k])
                child.dec_b[n].copy_(net.dec_b[n][:c_in])
        assert torch.allclose(net(x, sample.gates, sample.active, unit_gates=True), child(x), atol=1e-6)
        assert torch.equal(net(x, None, sample.active), net(x, sample.gates, sample.active, unit_gates=True))
    with pytest.raises(UserError, match="loss-ranking"):
        net(x, sample.gates.clone().requires_grad_(), sample.active)
    with pytest.raises(UserError, match="one architecture at a time"):
        net(x, None, [[0, 1]] + sample.active[1:])


def test_architectures_share_the_first_channels_and_the_central_kernel():
    s = small()
    net = s.build_supernet()
    narrow, wide, k1, k5 = one_layer(ch=8), one_layer(ch=16), one_layer(ch=16, kidx=1), one_layer(ch=8, kidx=3)
    x = torch.rand(1, 3, 8, 8)
    archs = (narrow, wide, k1, k5)
    before = {a: net(x, active=active(s, a)).detach().clone() for a in archs}
    changed = lambda: [not torch.equal(net(x, active=active(s, a)), before[a]) for a in archs]  # noqa: E731
    w = net.enc_w["1"]
    assert w.shape == (32, 3, 5, 5)
    original = w.detach().clone()
    with torch.no_grad():
        w[8:16] += 1.0                       # channels only the 16-channel architectures use
        assert changed() == [False, True, True, False]
        w.copy_(original)
        w[:8, :, 0, :] += 1.0                # outer kernel row of shared channels: only in the 5x5 crop
        assert changed() == [False, False, False, True]
        w.copy_(original)
        w[:8, :, 2, 2] += 1.0                # kernel centre of shared channels: every architecture
        assert changed() == [True, True, True, True]


def test_standalone_network_has_exact_sizes_and_skip_adds_the_input():
    s = small()
    net = s.build_child(one_layer(ch=8, kidx=3, skip=1))
    assert net.enc_w["1"].shape == (8, 3, 5, 5) and net.dec_w["1"].shape == (8, 3, 5, 5)
    assert set(net.enc_w) == {"1"}
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(net(x), x)          # zero convs: the output is the skip alone


# --- search and retraining --------------------------------------------------------------------------------
# --- the task -----------------------------------------------------------------------------------------------
def test_task_streams_split_the_images_and_mask_each_batch():
    x = images(40)
    task = InpaintingTask(x, x[:8], "center")
    assert task.input_shape == (3, 16, 16) and task.num_outputs == 3 and task.metric == "psnr"
    weights, arch = task.search_streams(4, "cpu", seed=3)
    w_half, a_half = task.halves(3)
    assert len(w_half) == len(a_half) == 20 and set(w_half.tolist()).isdisjoint(a_half.tolist())
    masked, clean = next(weights)
    assert masked.shape == clean.shape == (4, 3, 16, 16) and clean.max() <= 1
    assert (masked[:, :, 4:12, 4:12] == 0).all() and torch.equal(masked[:, :, :4], clean[:, :, :4])
    pool = {bytes(img.numpy()) for img in x[w_half]}
    assert all(bytes((img * 255).round().to(torch.uint8).numpy()) in pool for img in clean)  # weight half only
    # the loss is the MSE against the clean image; identity on a center mask loses exactly the hidden pixels
    assert task.loss(lambda m: m, (masked, clean)).item() == pytest.approx(
        (clean[:, :, 4:12, 4:12] ** 2).sum().item() / clean.numel(), rel=1e-6)
    # the test split: the same masked images every time; PSNR/SSIM of a perfect network
    first, again = list(task.eval_batches("test", 3, "cpu")), list(task.eval_batches("test", 3, "cpu"))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again)) and sum(len(b[0]) for b in first) == 8
    perfect = iter([b[1] for b in first])
    result = task.evaluate(lambda m: next(perfect), "test", "cpu", batch_size=3)
    assert math.isinf(result["psnr"]) and result["ssim"] == pytest.approx(1.0)
    with pytest.raises(UserError, match="center"):
        InpaintingTask(x, x, "box")


def test_task_metric_scores_the_fixed_masks_of_its_eval_seed():
    s, x = small(layers=2), images(32)
    net = s.build_child(s.baseline())
    task = InpaintingTask(x, x[:16], "pixel", eval_seed=4)
    g = torch.Generator().manual_seed(4)                    # one generator over the split, batch after batch
    by_hand = score(net, [masked_batch(x[:16], torch.arange(0, 8), "pixel", g, "cpu"),
                          masked_batch(x[:16], torch.arange(8, 16), "pixel", g, "cpu")])
    assert task.evaluate(net, "test", "cpu", batch_size=8) == by_hand
    assert task.evaluate(net, "test", "cpu", batch_size=8) != InpaintingTask(x, x[:16], "pixel", eval_seed=5).evaluate(
        net, "test", "cpu", batch_size=8)


# --- search and retraining --------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["int", "cat"])
def test_tiny_search_through_the_engine_returns_a_valid_architecture(encoding):
    s = InpaintingSpace(encoding, layers=3, channel_scale=1 / 16)
    task = InpaintingTask(images(), images()[:8], "pixel")
    out = search_inpainting(s, task, iterations=20, batch=8, seed=0)
    assert s.check(out["arch"]) == out["arch"] and out["result"]["arch_steps"] == 20
    record = out["log"][-1]
    assert record["step"] == 20 and math.isfinite(record["weight_loss"]) and math.isfinite(record["arch_loss"])
    assert 0.02 < record["weight_loss"] < 0.5                     # MSE of [0, 1] images, not a cross-entropy
    assert out["config"]["w_lr"] == 0.025 and out["config"]["w_grad_clip"] == 5.0 and out["config"]["epochs"] == 20
    if encoding == "int":
        lo, hi = s.channel_range
        assert all(lo <= out["arch"][4 * i + 3] <= hi for i in range(3))
    with pytest.raises(UserError, match="loss-ranking"):
        search_inpainting(InpaintingSpace("cat", layers=3, channel_scale=1 / 16), task, strategy="gdas")


def test_search_weight_steps_follow_the_protocol():
    """SGD 0.025 with momentum 0.9, cosine per iteration, the pair's mean loss, clipping at 5."""
    from oneshot.trainer import Search

    s = small(layers=2)
    task = InpaintingTask(images(), images()[:8], "center")
    run = Search(search_config(s, iterations=8, batch=4), task, torch.device("cpu"), space=s)
    lrs = []
    for _ in range(8):
        run.weight_step("weight")
        lrs.append(run.optimizer.param_groups[0]["lr"])
        run.step += 1
    assert lrs == pytest.approx([0.025 * 0.5 * (1 + math.cos(math.pi * i / 8)) for i in range(8)])
    group = run.optimizer.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.9, False, 0)


def test_inpainting_search_resumes_through_the_engine(tmp_path):
    from oneshot.runs import RunFolder
    from oneshot.trainer import Search

    s = small(layers=2)
    task = InpaintingTask(images(), images()[:8], "center")
    config = search_config(s, iterations=12, batch=4, log_every=4)
    full = Search(config, task, torch.device("cpu"), space=s).run(RunFolder(tmp_path / "full", config.to_dict()),
                                                                   progress=False)
    resumed = interrupted_and_resumed(config, task, tmp_path / "resumed", stop_after=7, space=s)
    assert resumed["architecture"] == full["architecture"] and resumed["theta"] == full["theta"]
    log = lambda d: [{k: v for k, v in json.loads(line).items() if k != "seconds"}  # noqa: E731
                     for line in (d / "log.jsonl").read_text().splitlines()]
    assert len(log(tmp_path / "full")) == 3 and log(tmp_path / "resumed") == log(tmp_path / "full")


# --- retraining: the library's loop with the inpainting preset ------------------------------------------------
def test_step_schedule_drops_tenfold_at_40_and_80_percent():
    assert [step_factor(p) for p in (0.0, 0.39, 0.4, 0.79)] == pytest.approx([1.0, 1.0, 0.1, 0.1])
    assert [step_factor(p) for p in (0.8, 0.99)] == pytest.approx([0.01, 0.01])
    s, x = small(layers=2), images(32)
    config = retrain_preset("cpu", "inpainting", epochs=10, batch_size=4)
    run = Retraining(s, s.baseline(), InpaintingTask(x, x[:4], "center"), config, "cpu")
    lrs = [run.begin_epoch(epoch)["lr"] for epoch in range(10)]
    assert lrs == pytest.approx([1e-3] * 4 + [1e-4] * 4 + [1e-5] * 2)
    assert type(run.optimizer) is torch.optim.Adam and run.optimizer.defaults["betas"] == (0.9, 0.999)


def test_inpainting_presets_are_the_official_retraining():
    paper = retrain_preset("paper", "inpainting")
    assert (paper.optimizer, paper.schedule, paper.lr, paper.batch_size, paper.grad_clip, paper.weight_decay) == (
        "adam", "step", 1e-3, 16, 5.0, 0.0)
    assert paper.epochs * paper.task_options["steps_per_epoch"] == 500_000     # iterations
    cpu = retrain_preset("cpu", "inpainting")
    assert cpu.epochs * cpu.task_options["steps_per_epoch"] == 2_000
    with pytest.raises(UserError, match="do not apply to space inpainting"):
        retrain_preset("cpu", "inpainting", channels=8)
    with pytest.raises(UserError, match="optimizer must be sgd or adam"):
        retrain_preset("cpu", "inpainting", optimizer="rmsprop").validated()


def test_retrain_train_is_the_hand_written_adam_loop_with_steps_at_40_and_80_percent():
    """``retrain.train`` on the inpainting task is, to the last bit, the loop this driver had before it used the
    library's: Adam 1e-3, lr x 0.1 from step 4 of 10 and again from step 8, clipping at 5, batches of the task's
    seeded stream, then PSNR/SSIM on the task's fixed test masks."""
    s, x = InpaintingSpace("int", layers=2, channel_scale=1 / 16), images(32)
    task = InpaintingTask(x, x[:8], "center")
    result = retrain_network(s, s.baseline(), task, iterations=10, batch=8, seed=3)

    torch.manual_seed(3)
    net = s.build_child(s.baseline())
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(3)
    for step in range(10):
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * 0.1 ** ((step >= 4) + (step >= 8))
        masked, clean = masked_batch(x, torch.randint(32, (8,), generator=g), "center", g, "cpu")
        loss = F.mse_loss(net(masked), clean)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        optimizer.step()
    net.eval()
    assert result["scores"]["test"] == score(net, task.eval_batches("test", 256, "cpu"))
    assert result["test_psnr"] == result["scores"]["test"]["psnr"] and result["steps"] == 10
    assert result["parameters"] == sum(p.numel() for p in net.parameters()) and result["flops"] is None
    assert result["path"] == s.describe(s.baseline()) and result["config"]["task_options"] == {}


def test_retraining_lowers_the_error_and_needs_one_step_per_epoch():
    s = InpaintingSpace("int", layers=2, channel_scale=1 / 16)
    x = images(32)
    task = InpaintingTask(x, x[:16], "center")
    short = retrain_network(s, s.baseline(), task, iterations=1, batch=8)
    longer = retrain_network(s, s.baseline(), task, iterations=60, batch=8)
    assert longer["steps"] == 60 and longer["test_psnr"] > short["test_psnr"] + 0.5  # 11.26 -> 11.97 dB
    with pytest.raises(UserError, match="one step per epoch"):
        retrain_network(s, s.baseline(), InpaintingTask(x, x, "center", steps_per_epoch=2), iterations=1)


def test_inpainting_script_end_to_end(capsys, tmp_path, tiny_pickles):
    argv = ["--data", tiny_pickles, "--layers", "2", "--iterations", "6", "--batch", "4",
            "--retrain-iterations", "5", "--test-images", "8", "--device", "cpu", "--out", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    assert "hand-designed" in capsys.readouterr().out
    record = json.loads((tmp_path / "inpaint.json").read_text())
    assert record["search"]["config"]["epochs"] == 6 and record["search"]["result"]["arch_steps"] == 6
    assert record["searched"]["architecture"] == record["search"]["result"]["architecture"]
    assert record["searched"]["steps"] == record["baseline"]["steps"] == 5 and record["retrain"]["epochs"] == 5
    assert math.isfinite(record["searched"]["test_psnr"]) and 0 < record["baseline"]["scores"]["test"]["ssim"] < 1
    space = InpaintingSpace("int", layers=2, channel_scale=1 / 8)
    assert record["baseline"]["architecture"] == space.to_string(space.baseline())
    assert main([*argv[:-3], "--mask", "box", "--quiet"]) == 2            # argparse's choices: one line, status 2
    err = capsys.readouterr().err
    assert err.startswith("experiments/inpainting.py: error: ") and len(err.strip().splitlines()) == 1
