"""Duplicate groups from pairs within the distance: every member within the distance of every
other (no chaining), the best-connected item seeds a group, largest and closest groups first."""

from __future__ import annotations

from searcher.grouping import Neighbours


def neighbours(*pairs: tuple[int, int, float]) -> Neighbours:
    found = Neighbours()
    for a, b, distance in pairs:
        found.add(a, b, distance)
    return found


def test_a_chain_is_split_where_its_ends_are_farther_apart_than_the_distance() -> None:
    # 1–2 and 2–3 within the distance, 1–3 not (no pair found).
    assert neighbours((1, 2, 0.6), (2, 3, 0.7)).groups() == [[1, 2]]
    # A longer chain: 10–11–12–13 gives two groups, never one of four.
    chain = neighbours((10, 11, 0.5), (11, 12, 0.5), (12, 13, 0.5))
    assert chain.groups() == [[10, 11], [12, 13]]


def test_items_all_within_the_distance_of_one_another_are_one_group() -> None:
    clique = neighbours(
        (1, 2, 0.1), (1, 3, 0.2), (2, 3, 0.15), (1, 4, 0.3), (2, 4, 0.1), (3, 4, 0.2)
    )
    assert clique.groups() == [[1, 2, 3, 4]]


def test_a_member_joins_only_if_it_is_near_every_member_already_in() -> None:
    # 5 is near 1 and 2 but not 3: the group of three stays, 5 is left out.
    found = neighbours((1, 2, 0.1), (1, 3, 0.2), (2, 3, 0.2), (5, 1, 0.3), (5, 2, 0.3))
    assert found.groups() == [[1, 2, 3]]


def test_larger_groups_come_first_then_closer_ones_then_by_first_id() -> None:
    found = neighbours(
        (20, 21, 0.9),  # a far pair
        (30, 31, 0.1),  # a close pair
        (40, 41, 0.5), (40, 42, 0.5), (41, 42, 0.5),  # a triple
        (50, 51, 0.1),  # as close as 30–31, later first id
    )  # fmt: skip
    assert found.groups() == [[40, 41, 42], [30, 31], [50, 51], [20, 21]]


def test_a_pair_given_twice_or_an_item_with_itself_counts_once() -> None:
    found = neighbours((1, 2, 0.2), (2, 1, 0.2), (3, 3, 0.0))
    assert found.groups() == [[1, 2]]
