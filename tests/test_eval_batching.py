"""The evaluation batch size is searched on the device (eval/batching.py): doubling while it pays, halving when
memory runs out, every episode evaluated exactly once either way."""

import pytest
import torch

from metassl.eval.batching import EpisodeBatcher


def feed(batcher, seconds_per_call):
    """Drive the search with synthetic timings: seconds_per_call(size) for a full batch of `size` episodes."""
    sizes = []
    for _ in range(12):
        sizes.append(batcher.size)
        batcher.record(batcher.size, seconds_per_call(batcher.size))
    return sizes


def test_search_stops_where_doubling_stops_paying_and_keeps_the_fastest_size():
    # per-episode cost falls until 8 episodes per call, then rises (activations leave the cache)
    cost = {1: 1.0, 2: 0.6, 4: 0.4, 8: 0.3, 16: 0.5}
    b = EpisodeBatcher()
    sizes = feed(b, lambda n: n * cost[n])
    assert sizes[:6] == [1, 1, 2, 4, 8, 16]  # a warm-up call, then doubling
    assert not b.searching and b.size == 8 and set(sizes[6:]) == {8}


def test_search_stays_at_one_episode_when_batching_does_not_pay():
    b = EpisodeBatcher()
    feed(b, lambda n: n * (1.0 if n == 1 else 1.05))  # CPU: two episodes per call are no faster
    assert b.size == 1 and not b.searching


def test_a_fixed_size_is_kept_and_the_cap_ends_the_search():
    b = EpisodeBatcher(fixed=6)
    assert set(feed(b, lambda n: 1.0)) == {6}
    b = EpisodeBatcher(cap=4)
    feed(b, lambda n: 1.0)  # always faster per episode when larger: stops at the cap
    assert b.size == 4 and not b.searching
    with pytest.raises(ValueError, match="batch_episodes"):
        EpisodeBatcher(fixed=-1)


def test_out_of_memory_halves_the_batch_and_every_episode_is_evaluated_once():
    seen = []

    def step(start, count):
        if count > 4:
            raise torch.OutOfMemoryError("too big")
        seen.extend(range(start, start + count))
        return count

    b = EpisodeBatcher(fixed=16)
    counts = b.run(3, 40, step)
    assert seen == list(range(3, 40)) and sum(counts) == 37 and max(counts) == 4

    def always_oom(start, count):
        raise torch.OutOfMemoryError("too big")

    with pytest.raises(torch.OutOfMemoryError):
        EpisodeBatcher(fixed=2).run(0, 5, always_oom)


@pytest.mark.parametrize("unlabeled,distractors", [(0, 0), (2, 1)])
def test_eval_episode_rows_are_the_rows_the_episodes_read(unlabeled, distractors):
    from conftest import image_ids, make_split

    from metassl.data.episodic import eval_episode_rows, eval_episodes

    split = make_split(num_classes=12, per_class=8)
    t = eval_episodes(split, 3, 1, 2, 0, 5, 7, unlabeled, distractors)
    read = [image_ids(t.support_x), image_ids(t.query_x)]
    if unlabeled:
        read.append(image_ids(t.unlabeled_x))
    expected = torch.cat([r.flatten() for r in read]).unique()
    assert torch.equal(eval_episode_rows(split, 3, 1, 2, 0, 5, 7, unlabeled, distractors), expected)
