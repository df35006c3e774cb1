"""Tests for fusion.py: losses by hand, Combiner facts, retrieval ranks, one-batch overfit.

Run: python -m pytest -q tests/test_fusion.py
"""

import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fusion  # noqa: E402
from fusion import (Combiner, FusionConfig, FusionModel, evaluate_retrieval, info_nce,  # noqa: E402
                    retrieval_metrics, source_enhanced_info_nce)

# a very small tower so every test runs in a second or two on a shared CPU
MICRO = dict(image_size=16, patch_size=8, width=32, layers=1, head_width=16, embed_dim=16,
             projection_dim=32, hidden_dim=32)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # note: on a shared 2-core machine two intra-op threads spin against other processes;
    # one thread was ~10x faster there. Restored afterwards for the other test files.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def micro_model(**overrides):
    torch.manual_seed(0)
    return FusionModel({**MICRO, **overrides})


def random_batch(batch_size=6, side=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"source": torch.rand(batch_size, 3, side, side, generator=g) * 2 - 1,
            "target": torch.rand(batch_size, 3, side, side, generator=g) * 2 - 1,
            "target_pose": torch.rand(batch_size, 3, side, side, generator=g)}


def loop_cross_entropy(queries, keys, temperature):
    """Mean over rows of −log softmax(cos(q_i, k_·)/τ)_i, with plain Python loops."""
    n = len(queries)
    total = 0.0
    for i in range(n):
        row = [F.cosine_similarity(queries[i], keys[j], dim=0).item() / temperature for j in range(n)]
        total += -(row[i] - math.log(sum(math.exp(v) for v in row)))
    return total / n


def test_info_nce_equals_hand_computation():
    torch.manual_seed(0)
    fused, target = torch.randn(5, 7), torch.randn(5, 7)
    expected = loop_cross_entropy(target, fused, 0.07)  # rows: targets, columns: fused
    assert info_nce(fused, target, 0.07).item() == pytest.approx(expected, rel=1e-5)
    # the direction matters: rows of fused give a different number in general
    assert info_nce(target, fused, 0.5).item() != pytest.approx(info_nce(fused, target, 0.5).item())


def test_source_enhanced_info_nce_equals_hand_computation():
    torch.manual_seed(1)
    fused, target, source = torch.randn(4, 6), torch.randn(4, 6), torch.randn(4, 6)
    queries = [target[i] for i in range(4)] + [source[i] for i in range(4)]
    keys = [fused[i] for i in range(4)] + [source[i] for i in range(4)]
    expected = loop_cross_entropy(queries, keys, 0.1)  # the 8 × 8 logit matrix
    got = source_enhanced_info_nce(fused, target, source, temperature=0.1).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_combiner_parameter_count_at_768():
    linear = lambda i, o: i * o + o  # noqa: E731
    # two projections, combiner layer, output layer, dynamic-scalar MLP (2P -> Hd -> 1)
    expected = 2 * linear(768, 768) + linear(1536, 768) + linear(768, 768) + linear(1536, 768) + linear(768, 1)
    assert sum(p.numel() for p in Combiner(768, 768, 768).parameters()) == expected == 4_133_377


def test_combiner_lambda_in_open_interval_and_unit_norm():
    torch.manual_seed(2)
    comb = Combiner(16, 24, 20)
    image, pose = torch.randn(64, 16) * 3, torch.randn(64, 16) * 3
    for mode in (comb.train, comb.eval):
        mode()
        raw, lam = comb.combine(image, pose)
        assert lam.shape == (64, 1) and bool(((lam > 0) & (lam < 1)).all())
        assert torch.allclose(comb(image, pose).norm(dim=-1), torch.ones(64), atol=1e-5)
    # eval mode: the output is the stated formula W_out·h + λ·pose + (1 − λ)·image
    joint = torch.cat([F.relu(comb.pose_projection(pose)), F.relu(comb.image_projection(image))], -1)
    formula = comb.output_layer(F.relu(comb.combiner_layer(joint))) + lam * pose + (1 - lam) * image
    assert torch.allclose(raw, formula, atol=1e-5)


def test_model_outputs_unit_norm_any_input_size_and_embed_is_eval_forward():
    model = micro_model()
    source = torch.rand(3, 3, 40, 28) * 2 - 1  # not the encoder's size: resized inside
    pose = torch.rand(3, 21, 40, 28)  # 3 RGB + 18 heatmap channels
    fused = model(source, pose)
    assert fused.shape == (3, model.embed_dim) == (3, 16)
    assert torch.allclose(fused.norm(dim=-1), torch.ones(3), atol=1e-5)
    emb = model.embed(source, pose)
    assert model.training and not emb.requires_grad  # mode restored, no graph kept
    model.eval()
    assert torch.allclose(emb, model(source, pose), atol=1e-6)


def test_loss_is_the_named_losses_on_the_model_embeddings():
    batch = random_batch()
    for enhanced in (False, True):
        model = micro_model(source_enhanced=enhanced).eval()  # eval: no dropout, deterministic
        loss, parts = model.loss(batch)
        s, t = model.encode_image(batch["source"]), model.encode_image(batch["target"])
        f = model(batch["source"], batch["target_pose"])
        nce = source_enhanced_info_nce(f, t, s) if enhanced else info_nce(f, t)
        l1 = (f - F.normalize(s, dim=-1)).abs().mean()
        assert loss.item() == pytest.approx((nce + 1e-4 * l1).item(), rel=1e-5)
        assert float(parts["nce"]) == pytest.approx(nce.item(), rel=1e-5)
        assert 0 < float(parts["lambda"]) < 1 and 0 <= float(parts["acc"]) <= 1


@pytest.mark.parametrize("enhanced", [False, True])
def test_a_few_steps_lower_the_loss_on_one_batch(enhanced):
    model = micro_model(source_enhanced=enhanced)
    batch = random_batch(batch_size=8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with torch.no_grad():
        before = model.eval().loss(batch)[0].item()
    model.train()
    for _ in range(15):
        loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = model.eval().loss(batch)[0].item()
    assert after < 0.5 * before


def test_retrieval_metrics_on_known_ranks():
    gallery = torch.eye(6)  # item m is the m-th axis
    wanted = [1, 1, 2, 3, 4, 6]  # rank of each query's true item
    queries = torch.zeros(6, 6)
    for n, rank in enumerate(wanted):
        queries[n, n] = 1.0
        others = [m for m in range(6) if m != n][: rank - 1]
        queries[n, others] = 2.0  # rank − 1 items beat the true one
    out = retrieval_metrics(queries, gallery)
    assert out == pytest.approx({"R@1": 2 / 6, "R@3": 4 / 6, "R@5": 5 / 6, "avg_rank": 17 / 6})
    # with explicit labels: every query points at gallery item 0, which is always rank 1 here
    assert retrieval_metrics(torch.eye(6)[[0, 0]] + 0.1, gallery, torch.tensor([0, 0]))["avg_rank"] == 1.0


def test_evaluate_retrieval_dedupes_targets_and_matches_direct_computation():
    model = micro_model()
    b1, b2 = random_batch(4, seed=3), random_batch(4, seed=4)
    b2["target"][0] = b1["target"][1]  # the same target photo in two pairs
    b1["target_name"] = ["t0", "t1", "t2", "t3"]
    b2["target_name"] = ["t1", "t5", "t6", "t7"]
    out = evaluate_retrieval(model, [b1, b2])
    assert model.training  # evaluation restores the mode
    emb = fusion.collect_embeddings(model, [b1, b2])
    gallery = emb["target"][[0, 1, 2, 3, 5, 6, 7]]  # 7 distinct targets
    labels = torch.tensor([0, 1, 2, 3, 1, 4, 5, 6])
    assert out["fused"] == pytest.approx(retrieval_metrics(emb["fused"], gallery, labels))
    assert out["source alone"] == pytest.approx(retrieval_metrics(emb["source"], gallery, labels))


def test_config_round_trip_and_errors():
    model = micro_model()
    again = FusionModel(dataclasses.asdict(model.config))
    again.load_state_dict(model.state_dict())  # same architecture from the stored dict
    assert FusionModel(model.config).config == model.config
    assert fusion.fusion_config("vit_l14").pretrained == "openai"
    with pytest.raises(ValueError, match="tiny"):
        FusionModel("no-such-preset")
    with pytest.raises(ValueError, match="colour"):
        FusionModel({"colour": 1})


def test_missing_pretrained_file_is_one_clear_line():
    with pytest.raises(FileNotFoundError) as err:
        FusionModel({"model_name": "ViT-L-14", "pretrained": "/nonexistent/clip.bin"})
    message = str(err.value)
    assert "/nonexistent/clip.bin" in message and "ViT-L-14" in message and "\n" not in message


def test_failed_download_of_pretrained_tag_is_one_clear_line(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")  # what an offline download looks like

    # note: patched where open_clip's factory looks it up, so no download is ever attempted
    monkeypatch.setattr(fusion.open_clip.factory, "download_pretrained", offline)
    with pytest.raises(FileNotFoundError) as err:
        FusionModel("vit_l14")
    message = str(err.value)
    assert "'openai'" in message and "ViT-L-14" in message and "local path" in message
    assert "network unreachable" in message  # the reason travels with it
    assert "\n" not in message
    # a checkpoint rebuild never fetches the weights (the patched download would raise)
    model = FusionModel({"model_name": "ViT-B-32", "pretrained": "openai", "quick_gelu": True},
                        load_pretrained=False)
    assert (model.embed_dim, model.image_size, model.config.pretrained) == (512, 224, "openai")
