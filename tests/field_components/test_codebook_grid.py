"""The learned-index codebook grid (vqad's field component)."""

from __future__ import annotations

import pytest
import torch

from nerfqat_plugin.compression.bitpack import pack_unsigned, unpack_unsigned
from nerfqat_plugin.field_components import codebook_grid
from nerfqat_plugin.field_components.codebook_grid import LearnedIndexCodebookGrid, corner_lookup, hashed_indices
from nerfqat_plugin.field_components.half_precision import round_to_half


def _grid(bits: int = 4, **kwargs) -> LearnedIndexCodebookGrid:
    torch.manual_seed(0)
    return LearnedIndexCodebookGrid(resolutions=(3, (5, 4, 6)), bits=bits, feature_dim=6, **kwargs)


def _reference(grid: LearnedIndexCodebookGrid, positions: torch.Tensor, levels: int) -> torch.Tensor:
    """Trilinear interpolation of codebook[index] on each level's vertex lattice, levels summed."""
    expected = torch.zeros(positions.shape[0], grid.feature_dim)
    for level in range(levels):
        res = torch.tensor(grid.resolutions[level])
        codebook = grid.codebooks[level].detach().half().float()  # the file stores fp16 codebooks
        table = codebook[grid.hard_indices(level)].reshape(*grid.resolutions[level], -1)
        x = positions * (res - 1)
        i0 = torch.minimum(x.floor().long(), res - 2)
        f = x - i0
        for corner in range(8):
            c = torch.tensor([corner >> 2 & 1, corner >> 1 & 1, corner & 1])
            w = torch.where(c.bool(), f, 1 - f).prod(-1, keepdim=True)
            idx = i0 + c
            expected += w * table[idx[:, 0], idx[:, 1], idx[:, 2]]
    return expected


def test_straight_through_gradient_reaches_codebook_and_logits() -> None:
    grid = _grid()
    grid.train()
    out = grid(torch.rand(32, 3))
    out.square().sum().backward()
    for level in range(grid.num_levels):
        assert grid.codebooks[level].grad.abs().sum() > 0
        assert grid.logits[level].grad.abs().sum() > 0


@pytest.mark.parametrize("logit_rank", [0, 3])
def test_whole_level_straight_through_equals_the_per_corner_lookup(logit_rank: int) -> None:
    """Levels with fewer vertices than a batch's corners compute each vertex's straight-through
    feature once and gather it: same forward values and the same gradients as one softmax per corner."""
    grid = _grid(logit_rank=logit_rank)
    grid.train()
    positions = torch.rand(40, 3)  # 320 corners: more than either level's 27 and 120 vertices
    level = 1
    assert grid.num_vertices(level) < 8 * positions.shape[0]
    out = grid.level_features(positions, level, hard=False)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    params = [grid.codebooks[level]]
    if logit_rank == 0:
        params.append(grid.logits[level])
    else:
        params += [grid.index_queries[level], grid.index_keys[level], grid.index_bias[level]]
    assert all(p.grad is not None for p in params)
    gathered = [p.grad.clone() for p in params]
    grid.zero_grad()

    _, ids, corner_weights = corner_lookup(positions, grid.resolutions[level])
    soft = torch.softmax(grid.vertex_logits(level, ids), dim=-1)
    one_hot = torch.nn.functional.one_hot(soft.argmax(-1), soft.shape[-1]).float()
    codebook = round_to_half(grid.codebooks[level])
    per_corner = (corner_weights[..., None] * ((one_hot + soft - soft.detach()) @ codebook)).sum(1)
    assert torch.allclose(out, per_corner, atol=1e-6)
    (per_corner * weights).sum().backward()
    for param, expected in zip(params, gathered, strict=True):
        assert param.grad.abs().sum() > 0
        assert torch.allclose(param.grad, expected, atol=1e-6)


def test_levels_can_have_their_own_index_bits() -> None:
    grid = LearnedIndexCodebookGrid(resolutions=(3, (5, 4, 6)), bits=(6, 3), feature_dim=2)
    assert grid.level_bits == [6, 3]
    assert [c.shape[0] for c in grid.codebooks] == [64, 8] and [lg.shape[1] for lg in grid.logits] == [64, 8]
    hashed = LearnedIndexCodebookGrid(resolutions=(8, 8), bits=(5, 2), feature_dim=2, index_mode="hashed")
    assert hashed.hard_indices(0).max() >= 8 and hashed.hard_indices(1).max() < 4
    with pytest.raises(ValueError, match="3 codebook bit widths for 2 levels"):
        LearnedIndexCodebookGrid(resolutions=(3, 5), bits=(4, 4, 4), feature_dim=2)


def test_training_forward_equals_hard_lookup_and_hard_equals_argmax_table() -> None:
    grid = _grid()
    positions = torch.rand(50, 3)
    grid.train()
    soft_forward = grid(positions)
    grid.eval()
    hard_forward = grid(positions)
    assert torch.allclose(soft_forward, hard_forward, atol=1e-6)  # the STE's forward value is the hard one
    assert torch.allclose(hard_forward, _reference(grid, positions, 2), atol=1e-5)


@pytest.mark.parametrize(
    "options", [{}, {"logit_rank": 3}, {"index_mode": "probed", "probe_bits": 2, "probe_table_bits": 5}]
)
def test_training_lookups_without_gradients_take_the_hard_indices(options: dict, monkeypatch) -> None:
    grid = _grid(**options).train()
    positions = torch.rand(64, 3)
    soft = grid(positions)

    def soft_lookup(_logits: torch.Tensor) -> torch.Tensor:
        raise AssertionError("a straight-through lookup without gradients to pass")

    monkeypatch.setattr(codebook_grid, "_straight_through", soft_lookup)
    with torch.no_grad():  # the occupancy grid's and pruning's densities while training
        hard = grid(positions)
    assert torch.allclose(hard, soft, atol=1e-6)
    assert not grid._volume_cache  # volumes would be decoded again after every step
    with pytest.raises(AssertionError, match="without gradients"):
        grid(positions)  # gradients on: the straight-through lookup


@pytest.mark.parametrize(
    "options", [{}, {"sparse_from_level": 1, "block_size": 2}, {"index_mode": "probed", "probe_bits": 2}]
)
def test_compiled_training_lookups_without_gradients_trace(options: dict) -> None:
    """The proposal sampler reads its compiled densities without gradients while training: they must
    trace (Dynamo only here; the GPU compiles the same graph) and equal the eager lookup."""
    grid = _grid(**options).train()
    compiled = torch.compile(lambda positions: grid(positions), backend="eager", dynamic=True, fullgraph=True)
    for rows in (50, 70):  # a second size: the dynamic graph
        positions = torch.rand(rows, 3)
        with torch.no_grad():
            assert torch.allclose(compiled(positions), grid(positions), atol=1e-6)


@pytest.mark.parametrize("logit_rank", [0, 3])
def test_evaluation_reuses_the_hard_indices_until_the_logits_change(logit_rank: int) -> None:
    grid = _grid(bits=3, logit_rank=logit_rank).eval()
    positions = torch.rand(64, 3)
    expected = _reference(grid, positions, 2)
    computed = []
    original = grid.hard_indices
    grid.hard_indices = lambda level: computed.append(level) or original(level)
    assert torch.allclose(grid(positions), expected, atol=1e-6) and computed == [0, 1]
    assert torch.allclose(grid(positions), expected, atol=1e-6) and computed == [0, 1]  # reused
    with torch.no_grad():  # an optimizer step: in place, as Adam's
        factor = grid.logits[1] if logit_rank == 0 else grid.index_bias[1]
        factor.add_(torch.randn_like(factor) * 3.0)
    changed = grid(positions)
    assert computed == [0, 1, 1]
    del grid.hard_indices
    assert torch.allclose(changed, _reference(grid, positions, 2), atol=1e-6) and not torch.allclose(changed, expected)
    grid.train()
    assert not grid._hard_index_cache  # training changes the logits every step


def test_vertex_values_are_reproduced_exactly_at_lattice_points() -> None:
    grid = _grid()
    grid.eval()
    rx, ry, rz = grid.resolutions[1]
    vertex = torch.tensor([[1, 2, 5]])
    features = grid.level_features(vertex.float() / torch.tensor([rx - 1, ry - 1, rz - 1]), 1, hard=True)
    flat_id = (1 * ry + 2) * rz + 5
    assert torch.allclose(features[0], grid.codebooks[1][grid.hard_indices(1)[flat_id]].half().float())


def test_fewer_levels_and_level_masks_are_coarser_operating_points() -> None:
    grid = _grid()
    grid.eval()
    positions = torch.rand(10, 3)
    coarse = grid(positions, num_levels=1)
    assert torch.allclose(coarse, grid.level_features(positions, 0, hard=True))
    mask = torch.tensor([[1.0, 0.0]] * 5 + [[1.0, 1.0]] * 5)
    masked = grid(positions, level_mask=mask)
    assert torch.allclose(masked[:5], coarse[:5]) and torch.allclose(masked[5:], grid(positions)[5:])
    with pytest.raises(ValueError, match="num_levels"):
        grid(positions, num_levels=3)


@pytest.mark.parametrize("bits", [4, 5, 6, 7, 8])
def test_hard_indices_round_trip_through_bit_packing(bits: int) -> None:
    grid = _grid(bits)
    indices = grid.hard_indices(1)
    assert indices.max() < 2**bits
    packed = pack_unsigned(indices, bits)
    assert packed.numel() == (indices.numel() * bits + 7) // 8
    assert torch.equal(unpack_unsigned(packed, bits, indices.numel()), indices)


def test_frozen_grid_with_stored_indices_renders_like_the_learned_one() -> None:
    learned = _grid()
    frozen = _grid(frozen=True)
    frozen.codebooks.load_state_dict(learned.codebooks.state_dict())
    for level in learned.levels:
        frozen.set_hard_indices(level, learned.hard_indices(level))
    assert len(frozen.logits) == 0  # no logits: memory is the indices only
    positions = torch.rand(40, 3)
    learned.eval()
    assert torch.equal(frozen(positions), learned(positions))


def test_random_indices_are_fixed_by_the_seed_and_not_stored() -> None:
    a, b, c = _grid(index_mode="random", seed=3), _grid(index_mode="random", seed=3), _grid(index_mode="random")
    assert torch.equal(a.hard_indices(1), b.hard_indices(1)) and not torch.equal(a.hard_indices(1), c.hard_indices(1))
    assert all(key.startswith("codebooks.") for key in a.state_dict())
    a.train()
    a(torch.rand(8, 3)).sum().backward()  # only the codebooks learn
    assert a.codebooks[1].grad.abs().sum() > 0


def test_hashed_indices_follow_the_spatial_hash() -> None:
    grid = _grid(bits=3, index_mode="hashed")
    corners = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [4, 3, 5]])
    expected = [(x ^ (y * 2654435761) ^ (z * 805459861)) % 8 for x, y, z in corners.tolist()]
    assert hashed_indices(corners, 3).tolist() == expected
    grid.eval()
    positions = torch.rand(20, 3)
    assert torch.allclose(grid(positions), _reference(grid, positions, 2), atol=1e-5)


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        LearnedIndexCodebookGrid(resolutions=(1,), bits=4, feature_dim=2)
    with pytest.raises(ValueError, match="three"):
        LearnedIndexCodebookGrid(resolutions=((4, 4),), bits=4, feature_dim=2)
    with pytest.raises(ValueError, match="bits"):
        LearnedIndexCodebookGrid(resolutions=(4,), bits=0, feature_dim=2)
    with pytest.raises(ValueError, match="index_mode"):
        LearnedIndexCodebookGrid(resolutions=(4,), bits=4, feature_dim=2, index_mode="octree")  # type: ignore[arg-type]


def test_initial_index_bias_starts_every_vertex_on_entry_zero() -> None:
    assert (_grid(initial_index_bias=0.1).hard_indices(1) == 0).all()
    assert len(set(_grid().hard_indices(1).tolist())) > 4  # default: a random start


def test_concatenated_levels_pad_missing_levels_with_zeros() -> None:
    grid = _grid(concat_levels=3)
    grid.eval()
    positions = torch.rand(10, 3)
    out = grid(positions)
    assert out.shape == (10, 18) and grid.output_dim == 18
    assert torch.allclose(out[:, 6:12], grid.level_features(positions, 1, hard=True))
    assert torch.equal(out[:, 12:], torch.zeros(10, 6))  # a third level the grid does not have
    assert torch.equal(grid(positions, num_levels=1)[:, 6:], torch.zeros(10, 12))
    with pytest.raises(ValueError, match="concat_levels"):
        _grid(concat_levels=1)


def test_factorised_logits_train_both_factors_and_need_memory_independent_of_bits() -> None:
    grid = _grid(bits=8, logit_rank=3, initial_index_bias=0.5)
    assert len(grid.logits) == 0 and grid.index_queries[1].shape == (5 * 4 * 6, 3)
    assert (grid.hard_indices(1) == 0).all()  # the bias puts every vertex on entry 0
    grid.train()
    positions = torch.rand(32, 3)
    out = grid(positions)
    out.square().sum().backward()
    for params in (grid.index_queries, grid.index_keys, grid.index_bias, grid.codebooks):
        assert params[1].grad.abs().sum() > 0
    grid.eval()
    assert torch.allclose(grid(positions), out.detach(), atol=1e-6)  # STE value == hard lookup
    unit_keys = torch.nn.functional.normalize(grid.index_keys[1], dim=-1)
    full = grid.index_queries[1] @ unit_keys.T + grid.index_bias[1]
    assert torch.equal(grid.hard_indices(1), full.argmax(dim=-1))


def test_every_codebook_entry_can_be_chosen_by_factorised_logits() -> None:
    """Unit keys lie on a sphere: a query along an entry's key picks that entry, so low-rank logits
    reach the whole codebook (with raw keys, one inside the hull of the others never wins an argmax)."""
    torch.manual_seed(0)
    grid = LearnedIndexCodebookGrid(resolutions=((8, 8, 4),), bits=8, feature_dim=2, logit_rank=3)
    with torch.no_grad():
        keys = grid.index_keys[0]
        keys.mul_(torch.rand(keys.shape[0], 1) * 2.0 + 0.1)  # keys of unequal lengths, as training makes them
        grid.index_queries[0].copy_(10.0 * torch.nn.functional.normalize(keys, dim=-1))  # vertex j along key j
    assert torch.equal(grid.hard_indices(0), torch.arange(256))


def test_index_statistics_measure_saturation_and_codebook_usage() -> None:
    grid = LearnedIndexCodebookGrid(resolutions=(4,), bits=3, feature_dim=2)
    with torch.no_grad():
        grid.logits[0].zero_()
        grid.logits[0][torch.arange(64), torch.arange(64) % 4] = 50.0  # 4 entries, used equally, saturated
    (stats,) = grid.index_statistics(chunk=10)
    assert stats["top_probability"] == pytest.approx(1.0) and stats["usage_perplexity"] == pytest.approx(4.0)
    with torch.no_grad():
        grid.logits[0].zero_()  # uniform logits: every entry equally likely, argmax entry 0 everywhere
    (stats,) = grid.index_statistics()
    assert stats["top_probability"] == pytest.approx(1 / 8) and stats["usage_perplexity"] == pytest.approx(1.0)
    assert LearnedIndexCodebookGrid(resolutions=(4,), bits=3, feature_dim=2, frozen=True).index_statistics() == []


def _probed_reference(grid: LearnedIndexCodebookGrid, positions: torch.Tensor) -> torch.Tensor:
    """Trilinear interpolation where each vertex reads codebook[bucket * probes + probe]: the bucket
    from the spatial hash, the probe from the index table at a second, independent hash."""
    probes = 1 << grid.probe_bits
    expected = torch.zeros(positions.shape[0], grid.feature_dim)
    for level in grid.levels:
        corners, _, weights = corner_lookup(positions, grid.resolutions[level])
        table = grid.hard_indices(level)
        x, y, z = corners.unbind(-1)
        slot = ((x * 2246822519) ^ (y * 3266489917) ^ (z * 668265263)) % (1 << grid.probe_table_bits)
        entry = hashed_indices(corners, grid.level_bits[level] - grid.probe_bits) * probes + table[slot]
        codebook = grid.codebooks[level].detach().half().float()
        expected += (weights[..., None] * codebook[entry]).sum(dim=1)
    return expected


def test_probed_grid_learns_probes_into_hashed_buckets() -> None:
    torch.manual_seed(0)
    grid = LearnedIndexCodebookGrid((3, (5, 4, 6)), 6, 4, index_mode="probed", probe_bits=2, probe_table_bits=5)
    assert [tuple(p.shape) for p in grid.logits] == [(32, 4), (32, 4)]  # 2**5 table entries x 4 probes
    assert grid.hard_indices(1).max() < 4 and grid.index_bits(1) == 2 and grid.index_entries(1) == 32
    positions = torch.rand(40, 3)
    grid.train()
    soft = grid(positions)
    soft.square().sum().backward()
    for level in grid.levels:  # the straight-through gradient reaches the probes' logits and the codebook
        assert grid.logits[level].grad.abs().sum() > 0 and grid.codebooks[level].grad.abs().sum() > 0
    grid.eval()
    hard = grid(positions)
    assert torch.allclose(soft, hard, atol=1e-6)
    assert torch.allclose(hard, _probed_reference(grid, positions), atol=1e-5)
    # A frozen grid holds the index table only and renders the same.
    frozen = LearnedIndexCodebookGrid(
        (3, (5, 4, 6)), 6, 4, index_mode="probed", probe_bits=2, probe_table_bits=5, frozen=True
    )
    frozen.codebooks.load_state_dict(grid.codebooks.state_dict())
    for level in grid.levels:
        frozen.set_hard_indices(level, grid.hard_indices(level))
    assert len(frozen.logits) == 0 and torch.equal(frozen(positions), hard)


@pytest.mark.parametrize("concat_levels", [0, 4], ids=["summed", "concatenated"])
def test_probed_training_lookup_of_all_levels_at_once_equals_the_loop_over_levels(
    concat_levels: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    grid = LearnedIndexCodebookGrid(
        (3, (5, 4, 6), 9), 6, 3, index_mode="probed", probe_bits=2, probe_table_bits=5, concat_levels=concat_levels
    )
    grid.train()
    positions = torch.rand(64, 3) * 1.2 - 0.1  # some outside the box: clamped as level by level
    level_mask = (torch.rand(64, 3) > 0.5).float()
    upstream = torch.randn(64, grid.output_dim)
    calls = []
    together = grid._probed_levels_together
    monkeypatch.setattr(grid, "_probed_levels_together", lambda *a: calls.append(1) or together(*a))
    results = []
    for at_once in (True, False):
        monkeypatch.setattr(grid, "_probes_levels_together", lambda on=at_once: on)
        for levels, mask in ((3, None), (2, None), (3, level_mask)):
            grid.zero_grad()
            features = grid(positions, num_levels=levels, level_mask=mask)
            (features * upstream[:, : features.shape[1]]).sum().backward()
            grads = [p.grad.clone() if p.grad is not None else None for p in (*grid.logits, *grid.codebooks)]
            results.append((features.detach(), grads))
    assert len(calls) == 3  # the first three lookups went through the level axis, the others not
    for (features, grads), (expected, expected_grads) in zip(results[:3], results[3:], strict=True):
        torch.testing.assert_close(features, expected)
        for grad, expected_grad in zip(grads, expected_grads, strict=True):
            assert (grad is None) == (expected_grad is None)
            if grad is not None:
                torch.testing.assert_close(grad, expected_grad)
    assert all(g is not None and g.abs().sum() > 0 for g in results[0][1])  # every level trained
    assert results[1][1][2] is None or results[1][1][2].abs().sum() == 0  # two levels: the third untouched


def test_probed_training_lookup_of_all_levels_traces_with_its_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU compiles the training lookup, forward and backward: there it takes the level axis, which
    must trace whole with dynamic sizes (AOT autograd here, on the CPU) and give the eager loop's values
    and gradients. Eager code keeps the loop (its peak memory is one level's temporaries)."""
    torch.manual_seed(0)
    grid = LearnedIndexCodebookGrid((3, (5, 4, 6)), 6, 2, index_mode="probed", probe_table_bits=5, concat_levels=2)
    grid.train()
    calls = []
    together = grid._probed_levels_together
    monkeypatch.setattr(grid, "_probed_levels_together", lambda *a: calls.append(1) or together(*a))
    grid(torch.rand(10, 3))
    assert not calls  # eager: level by level
    compiled = torch.compile(lambda positions: grid(positions), backend="aot_eager", dynamic=True, fullgraph=True)
    for rows in (50, 70):
        positions = torch.rand(rows, 3)
        results = []
        for lookup in (compiled, grid):
            grid.zero_grad()
            lookup(positions).square().sum().backward()
            results.append([lookup(positions).detach()] + [p.grad.clone() for p in (*grid.logits, *grid.codebooks)])
        for value, expected in zip(*results, strict=True):
            torch.testing.assert_close(value, expected)
    assert calls  # compiled: the level axis


def test_bad_probed_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="probe_bits"):
        LearnedIndexCodebookGrid((4,), 2, 2, index_mode="probed", probe_bits=3)
    with pytest.raises(ValueError, match="probe_table_bits"):
        LearnedIndexCodebookGrid((4,), 8, 2, index_mode="probed", probe_table_bits=0)
    with pytest.raises(ValueError, match="sparse"):
        LearnedIndexCodebookGrid((16,), 8, 2, index_mode="probed", sparse_from_level=0)


def _edge_and_outside_positions(n: int) -> torch.Tensor:
    """Random points, the cube's corners and faces, and points outside it (clamped like the gathers)."""
    g = torch.Generator().manual_seed(3)
    corners = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], dtype=torch.float32)
    return torch.cat([torch.rand(n, 3, generator=g), corners, torch.rand(8, 3, generator=g) * 1.6 - 0.3])


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"frozen": True},
        {"index_mode": "hashed", "bits": 3},
        {"index_mode": "random"},
        {"logit_rank": 3},
        {"sparse_from_level": 1, "block_size": 2},
        {"concat_levels": 3},
        {"index_mode": "probed", "probe_bits": 2, "probe_table_bits": 5},
        {"index_mode": "probed", "probe_bits": 2, "probe_table_bits": 5, "frozen": True},
    ],
    ids=["learned", "frozen", "hashed", "random", "factorised", "sparse", "concatenated", "probed", "probed-file"],
)
def test_rendering_interpolates_decoded_levels_with_the_values_of_the_corner_gathers(options: dict) -> None:
    grid = _grid(**options).eval()
    if grid.frozen and grid.learns_indices:  # stored indices as a file holds: per vertex, or a probed index table
        for level in grid.levels:
            stored = grid.index_entries(level), 1 << grid.index_bits(level)
            grid.set_hard_indices(level, torch.randint(0, stored[1], (stored[0],)))
    if grid.sparse_levels:  # drop some blocks: their vertices contribute nothing
        grid.set_block_mask(1, (torch.arange(18) % 3 != 1).to(torch.uint8))  # 3 x 2 x 3 blocks
    positions = _edge_and_outside_positions(300)
    with torch.no_grad():
        grid.decoded_lookup = False
        gathered = grid(positions)
        first_level = grid(positions, num_levels=1)  # an operating point: a prefix of the levels
        assert not grid._volume_cache
        grid.decoded_lookup = True
        decoded = grid(positions)
        decoded_first_level = grid(positions, num_levels=1)
    assert sorted(grid._volume_cache) == [0, 1]  # both levels went through their volumes
    assert float(gathered.abs().max()) > 1e-2  # the comparison says something
    assert decoded.shape == gathered.shape and decoded_first_level.shape == first_level.shape
    assert torch.allclose(decoded, gathered, atol=2e-6, rtol=0)
    assert torch.allclose(decoded_first_level, first_level, atol=2e-6, rtol=0)


@pytest.mark.parametrize(
    "options",
    [{}, {"concat_levels": 3}, {"index_mode": "probed", "probe_bits": 2, "probe_table_bits": 5, "frozen": True}],
    ids=["summed", "concatenated", "probed-file"],
)
def test_renders_combine_decoded_coarse_levels_with_finer_ones_too_large_to_decode(
    options: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Level 0 (27 vertices x 6 features x 4 bytes) decodes, level 1 (120 vertices) is too large.
    for name in ("MAX_DECODED_LEVEL_BYTES", "MAX_DECODED_PROBED_LEVEL_BYTES"):
        monkeypatch.setattr(codebook_grid, name, 1000)
    grid = _grid(**options).eval()
    if grid.frozen:
        for level in grid.levels:
            stored = grid.index_entries(level), 1 << grid.index_bits(level)
            grid.set_hard_indices(level, torch.randint(0, stored[1], (stored[0],)))
    positions = _edge_and_outside_positions(300)
    with torch.no_grad():
        grid.decoded_lookup = False
        gathered, first_level = grid(positions), grid(positions, num_levels=1)
        grid.decoded_lookup = True
        decoded, decoded_first_level = grid(positions), grid(positions, num_levels=1)
    assert sorted(grid._volume_cache) == [0]  # the coarse level went through its volume, the fine one not
    assert float(gathered.abs().max()) > 1e-2
    assert decoded.shape == gathered.shape and decoded_first_level.shape == first_level.shape
    assert torch.allclose(decoded, gathered, atol=2e-6, rtol=0)
    assert torch.allclose(decoded_first_level, first_level, atol=2e-6, rtol=0)


def test_decoded_levels_follow_codebook_index_and_block_changes_and_training_drops_them() -> None:
    grid = _grid(sparse_from_level=1, block_size=2).eval()
    positions = _edge_and_outside_positions(200)

    def gathered() -> torch.Tensor:
        grid.decoded_lookup = False
        try:
            return grid(positions)
        finally:
            grid.decoded_lookup = True

    with torch.no_grad():
        first = grid(positions)
        volume = grid._volume_cache[1][1]
        assert grid(positions) is not first and grid._volume_cache[1][1] is volume  # reused
        for change in (
            lambda: grid.codebooks[1].add_(torch.randn_like(grid.codebooks[1])),  # an optimizer step
            lambda: grid.logits[1].add_(3.0 * torch.randn_like(grid.logits[1])),  # new hard indices
            lambda: grid.set_block_mask(1, torch.arange(18) % 2),  # pruning
        ):
            before = grid(positions)
            change()
            after = grid(positions)
            assert not torch.allclose(after, before) and torch.allclose(after, gathered(), atol=2e-6, rtol=0)
    grid.train()
    assert not grid._volume_cache  # training changes the grid every step
    grid.eval()
    assert torch.allclose(grid(positions), gathered(), atol=2e-6, rtol=0)  # gradients on: the gathers


def test_sparse_vertex_keep_flags_follow_the_blocks() -> None:
    grid = LearnedIndexCodebookGrid(((5, 3, 4),), bits=2, feature_dim=2, sparse_from_level=0, block_size=2)
    keep = torch.zeros(3, 2, 2, dtype=torch.uint8)
    keep[2, 1, 0] = 1  # the last x block (a single vertex layer, x = 4), upper y block, first z block
    grid.set_block_mask(0, keep.reshape(-1))
    flags = grid.vertex_keep_flags(0).reshape(5, 3, 4)
    assert flags.sum() == 1 * 1 * 2 and bool(flags[4, 2, :2].all())
    assert torch.equal(torch.nonzero(flags.reshape(-1)).reshape(-1), grid.kept_vertices(0))


def test_shifted_half_logits_keep_each_rows_argmax_even_through_near_ties() -> None:
    from nerfqat_plugin.field_components.codebook_grid import shifted_half_logits

    logits = torch.tensor(
        [
            [1.0, 1.0 - 1e-9, 0.5],  # the runner-up within fp16's rounding of the leader
            [5.0 - 1e-9, 0.0, 5.0],  # ... ahead of it in index order: a tie would make argmax pick it
            [-300.0, 2.0e4, 7.0],
        ],
        dtype=torch.float64,
    )
    half = shifted_half_logits(logits)
    assert half.dtype == torch.float16
    assert torch.equal(half.argmax(dim=-1), logits.argmax(dim=-1))
    assert torch.equal(half.max(dim=-1).values, torch.zeros(3, dtype=torch.float16))
    torch.testing.assert_close(half.float().softmax(-1), logits.float().softmax(-1), rtol=0, atol=1e-3)
