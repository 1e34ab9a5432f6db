"""How the upkeep picks a collection's search effort from a recall sample: the cheapest step
of the ladder that meets the target, searched for from the cheap end. The searches here are a
model whose recall at each ef_search is known, so the choice can be checked exactly."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import numpy as np

from imgsearch.records import Hit
from searcher.catalogue import Collection, IndexKind, Metric
from searcher.effort import calibrate, calibrate_effort, calibrate_walks, walk_more
from searcher.kinds import EFFORT_LADDER
from searcher.maintenance import IndexMaintenance
from searcher.recall import RECALL_AT, RecallSample, Search

QUERIES = 400
TRUE = np.tile(np.arange(1, RECALL_AT + 1, dtype=np.float64), (QUERIES, 1))


def collection() -> Collection:
    return Collection(
        name="c",
        dim=4,
        metric=Metric.L2,
        kind=IndexKind.HALFVEC,
        m=16,
        ef_construction=200,
        model_fingerprint="",
        created_at=datetime.now(UTC),
        candidates=40,
    )


def sample() -> RecallSample:
    # Query i is told apart by its first coordinate.
    queries = np.zeros((QUERIES, 4), dtype=np.float32)
    queries[:, 0] = np.arange(QUERIES)
    return RecallSample(queries=queries, true_distances=TRUE)


class Graph:
    """Query i finds all its neighbours once ef_search reaches needs[i], else 4 of its 10
    (under half: lost)."""

    def __init__(self, needs: np.ndarray) -> None:
        self.needs = needs
        self.efforts_searched: set[int] = set()

    def searcher_for(self, chosen: Collection) -> Search:
        self.efforts_searched.add(chosen.ef_search)

        def search(query: np.ndarray, k: int) -> list[Hit]:
            found = self.needs[int(query[0])] <= chosen.ef_search
            distances = TRUE[0] if found else np.r_[TRUE[0][:4], np.full(k - 4, 99.0)]
            return [Hit(id=i, label="", uri="", distance=float(d)) for i, d in enumerate(distances)]

        return search


def maintenance(graph: Graph) -> IndexMaintenance:
    return IndexMaintenance(
        None,  # type: ignore[arg-type]  # the calibration reads no database
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        graph.searcher_for,
        recall_floor=0.95,
        recall_target=0.99,
        recall_sample=QUERIES,
        default_ef_search=400,
    )


def graph_meeting_the_target_at(ef_search: int) -> Graph:
    """98% of queries need little effort; 2% need `ef_search` (below it, recall 0.988 and 2%
    of queries lost)."""
    needs = np.full(QUERIES, EFFORT_LADDER[0])
    needs[: QUERIES * 2 // 100] = ef_search
    return Graph(needs)


def test_the_cheapest_step_that_meets_the_target_is_chosen_for_every_step() -> None:
    for target_step in EFFORT_LADDER[1:]:
        graph = graph_meeting_the_target_at(target_step)
        calibration = maintenance(graph)._calibrate(collection(), sample())
        assert calibration.collection.ef_search == target_step
        assert calibration.recall == 1.0 and calibration.met
        # The cheapest step, the default, the most thorough if need be, then bisection.
        assert len(graph.efforts_searched) <= 6, graph.efforts_searched


def test_a_graph_meeting_the_target_at_the_cheapest_step_is_searched_at_no_other() -> None:
    graph = Graph(np.full(QUERIES, EFFORT_LADDER[0]))
    calibration = maintenance(graph)._calibrate(collection(), sample())
    assert graph.efforts_searched == {EFFORT_LADDER[0]}
    assert calibration.collection.ef_search == EFFORT_LADDER[0] and calibration.met
    # The default, searching harder, does at least as well.
    assert calibration.at_default == 1.0


def test_the_most_thorough_step_is_searched_only_when_the_default_misses() -> None:
    graph = graph_meeting_the_target_at(200)
    maintenance(graph)._calibrate(collection(), sample())
    assert EFFORT_LADDER[-1] not in graph.efforts_searched


def test_the_recall_at_the_default_effort_is_measured_there() -> None:
    graph = graph_meeting_the_target_at(800)
    calibration = maintenance(graph)._calibrate(collection(), sample())
    assert 400 in graph.efforts_searched
    assert calibration.at_default == 0.988  # 2% of queries find 4 of their 10 at 400


def test_a_graph_that_never_meets_the_target_searches_with_the_most_effort() -> None:
    graph = Graph(np.full(QUERIES, 10 * EFFORT_LADDER[-1]))
    calibration = maintenance(graph)._calibrate(collection(), sample())
    assert calibration.collection.ef_search == EFFORT_LADDER[-1]
    assert calibration.recall == 0.4 and calibration.at_default == 0.4
    assert not calibration.met


def test_the_ladder_steps_by_at_most_1_3x() -> None:
    # Two builds of the same rows whose samples land one step apart then search alike.
    steps = np.array(EFFORT_LADDER, dtype=float)
    assert np.all(steps[1:] / steps[:-1] <= 1.3)


class GraphsByCell:
    """Graphs by cell: 3% of queries have neighbours in a second cell, found only when a search
    walks two graphs, whatever its ef_search."""

    def searcher_for(self, chosen: Collection) -> Search:
        def search(query: np.ndarray, k: int) -> list[Hit]:
            found = int(query[0]) >= QUERIES * 3 // 100 or chosen.graph_probes >= 2
            distances = TRUE[0] if found else np.r_[TRUE[0][:4], np.full(k - 4, 99.0)]
            return [Hit(id=i, label="", uri="", distance=float(d)) for i, d in enumerate(distances)]

        return search


def test_graphs_by_cell_that_miss_the_target_walk_one_more_graph_instead_of_more_effort() -> None:
    graphs = GraphsByCell()
    one_walk = replace(collection(), graph_cells=16, graph_probes=1)
    first = calibrate(one_walk, sample(), graphs.searcher_for, target=0.99, default_ef_search=400)
    assert not first.met and first.recall == 0.982
    walked = walk_more(
        one_walk, first, sample(), graphs.searcher_for, target=0.99, default_ef_search=400
    )
    assert walked.met and walked.recall == 1.0
    assert walked.collection.graph_probes == 2
    assert walked.collection.ef_search == EFFORT_LADDER[0]  # the cheapest effort, walking two


def test_walks_stop_where_one_more_graph_finds_nothing_more() -> None:
    never = Graph(np.full(QUERIES, 10 * EFFORT_LADDER[-1]))  # whatever the graphs walked
    one_walk = replace(collection(), graph_cells=16, graph_probes=1)
    first = calibrate(one_walk, sample(), never.searcher_for, target=0.99, default_ef_search=400)
    walked = walk_more(
        one_walk, first, sample(), never.searcher_for, target=0.99, default_ef_search=400
    )
    assert walked.collection.graph_probes == 1 and not walked.met


class CellsAndEffort:
    """Graphs by cell: query i finds all its neighbours walking `walks` graphs once ef_search
    reaches needs[walks][i] (never, where a walk count is missing), else 4 of its 10."""

    def __init__(self, needs: dict[int, np.ndarray]) -> None:
        self.needs = needs
        self.searched: set[tuple[int, int]] = set()  # (walks, ef_search)

    def searcher_for(self, chosen: Collection) -> Search:
        self.searched.add((chosen.graph_probes, chosen.ef_search))
        needs = self.needs.get(chosen.graph_probes, np.full(QUERIES, np.inf))

        def search(query: np.ndarray, k: int) -> list[Hit]:
            found = needs[int(query[0])] <= chosen.ef_search
            distances = TRUE[0] if found else np.r_[TRUE[0][:4], np.full(k - 4, 99.0)]
            return [Hit(id=i, label="", uri="", distance=float(d)) for i, d in enumerate(distances)]

        return search


def calibrated_walking(graphs: CellsAndEffort) -> Collection:
    two_walks = replace(collection(), graph_cells=8, graph_probes=2)
    first = calibrate(two_walks, sample(), graphs.searcher_for, target=0.99, default_ef_search=400)
    walked = walk_more(
        two_walks, first, sample(), graphs.searcher_for, target=0.99, default_ef_search=400
    )
    assert walked.met
    return walked.collection


def needing(share: float, effort: float) -> np.ndarray:
    """Every query found at the cheapest effort but `share` of them, found from `effort`."""
    needs = np.full(QUERIES, float(EFFORT_LADDER[0]))
    needs[: int(share * QUERIES)] = effort
    return needs


def test_a_third_graph_walked_at_the_cheapest_effort_beats_two_at_a_high_one() -> None:
    # 2% of queries have neighbours two walks reach only at ef_search 640; three walks find them.
    graphs = CellsAndEffort({2: needing(0.02, 640), 3: needing(0, 0)})
    chosen = calibrated_walking(graphs)
    assert (chosen.graph_probes, chosen.ef_search) == (3, EFFORT_LADDER[0])


def test_more_walks_are_not_measured_where_they_cannot_cost_less() -> None:
    # Two walks at ef_search 50 cost 100; three at the cheapest, 40, would cost 120.
    graphs = CellsAndEffort({2: needing(0.02, 50), 3: needing(0, 0)})
    chosen = calibrated_walking(graphs)
    assert (chosen.graph_probes, chosen.ef_search) == (2, 50)
    assert not any(walks == 3 for walks, _ in graphs.searched)


def test_a_third_walk_is_measured_only_at_efforts_that_would_cost_less() -> None:
    # Two walks meet at 500 (cost 1000); three only at 400 (1200): kept at two walks, and three
    # were never searched at 334 or more.
    graphs = CellsAndEffort({2: needing(0.02, 500), 3: needing(0.02, 400)})
    chosen = calibrated_walking(graphs)
    assert (chosen.graph_probes, chosen.ef_search) == (2, 500)
    assert max(ef for walks, ef in graphs.searched if walks == 3) < 334


def calibrated_from_walks(graphs: CellsAndEffort, walks: int) -> Collection:
    """What the upkeep chooses when the cells' fit asked for `walks` of 80 graphs."""
    fitted = replace(collection(), graph_cells=80, graph_probes=walks)
    first = calibrate(fitted, sample(), graphs.searcher_for, target=0.99, default_ef_search=400)
    chosen = calibrate_walks(
        fitted, first, sample(), graphs.searcher_for, target=0.99, default_ef_search=400
    )
    assert chosen.met
    return chosen.collection


def test_graphs_the_fit_asked_for_but_the_target_does_not_need_are_not_walked() -> None:
    # The fit asked for 19 walks; from 6 on every query is found at the cheapest effort; with 5,
    # one query in 20 misses its neighbours at any effort.
    everyone = needing(0, 0)
    graphs = CellsAndEffort({5: needing(0.05, np.inf), **dict.fromkeys(range(6, 20), everyone)})
    chosen = calibrated_from_walks(graphs, 19)
    assert (chosen.graph_probes, chosen.ef_search) == (6, EFFORT_LADDER[0])


def test_fewer_walks_stop_at_the_least_a_search_walks() -> None:
    graphs = CellsAndEffort(dict.fromkeys(range(1, 20), needing(0, 0)))  # one walk would do
    chosen = calibrated_from_walks(graphs, 19)
    assert chosen.graph_probes == 2  # cells.MIN_WALKS
    assert not any(walks < 2 for walks, _ in graphs.searched)


def test_fewer_walks_are_kept_only_where_they_cost_less() -> None:
    # Four walks meet at the cheapest effort (cost 160); three only at ef_search 64 (192).
    graphs = CellsAndEffort({3: needing(0.05, 64), 4: needing(0, 0)})
    chosen = calibrated_from_walks(graphs, 4)
    assert (chosen.graph_probes, chosen.ef_search) == (4, EFFORT_LADDER[0])


def sample_with_neighbours_walked(walks: dict[int, int]) -> RecallSample:
    """sample(), its true neighbours all in their query's nearest graph but `walks[n]` of them
    in its n-th nearest."""
    neighbour_walks = np.ones(QUERIES * RECALL_AT, dtype=np.int64)
    farther = np.concatenate([np.full(count, n) for n, count in sorted(walks.items())])
    neighbour_walks[: len(farther)] = farther
    return replace(sample(), neighbour_walks=neighbour_walks.reshape(QUERIES, RECALL_AT))


def test_the_walks_holding_a_share_of_the_neighbours_count_each_neighbour_once() -> None:
    # 4,000 neighbours: 50 in their query's 5th nearest graph, 25 in its 6th.
    held = sample_with_neighbours_walked({5: 50, 6: 25})
    assert held.walks_holding(0.98) == 1  # 3,925 in the nearest
    assert held.walks_holding(0.99) == 5  # 3,975 in the nearest 5, 3,925 in the nearest 4
    assert held.walks_holding(0.995) == 6
    assert held.walks_holding(1.0) == 6
    assert (held.share_in_walks(4), held.share_in_walks(5)) == (3925 / 4000, 3975 / 4000)
    # A row in no graph (0) is every search's; a neighbour gone since (-1) is not counted.
    nowhere = replace(held, neighbour_walks=np.where(held.neighbour_walks == 1, 0, -1))
    assert nowhere.walks_holding(1.0) == 1
    assert sample().walks_holding(0.99) is None  # not known: no graphs by cell
    assert sample().share_in_walks(2) is None


def calibrated_knowing_walks(graphs: CellsAndEffort, held: RecallSample, walks: int) -> Collection:
    """What the upkeep chooses when the cells' fit asked for `walks` of 80 graphs and its
    sample knows which graphs hold its neighbours."""
    fitted = replace(collection(), graph_cells=80, graph_probes=walks)
    chosen = calibrate_effort(fitted, held, graphs.searcher_for, target=0.99, default_ef_search=400)
    assert chosen.met
    return chosen.collection


def test_calibration_starts_at_the_walks_whose_graphs_hold_the_sample_s_neighbours() -> None:
    # The fit asked for 19 walks (at 1M rows its estimate was 4-5 times what the target needed).
    # The nearest 6 graphs hold 99.5% of the neighbours, the nearest 5, 99.4%, 4, 98.75%: five
    # walks meet the target, four can not.
    held = sample_with_neighbours_walked({5: 50, 6: 25})
    everyone = needing(0, 0)
    graphs = CellsAndEffort({4: needing(0.0125, np.inf), **dict.fromkeys(range(5, 20), everyone)})
    chosen = calibrated_knowing_walks(graphs, held, 19)
    assert (chosen.graph_probes, chosen.ef_search) == (5, EFFORT_LADDER[0])
    # Measured walking 6 graphs, then 5; never more, nor fewer than hold the target's share.
    assert {walks for walks, _ in graphs.searched} == {5, 6}


def test_walks_beyond_the_start_are_tried_up_to_those_holding_every_neighbour() -> None:
    # Starting at six walks, 2% of the queries need ef_search 640; seven walks find all at the
    # cheapest effort, cheaper than six at 640 (and more than MAX_GRAPH_WALKS: the sample says
    # the neighbours are there).
    held = sample_with_neighbours_walked({5: 50, 6: 15, 7: 10})
    graphs = CellsAndEffort({6: needing(0.02, 640), 7: needing(0, 0), 8: needing(0, 0)})
    chosen = calibrated_knowing_walks(graphs, held, 19)
    assert (chosen.graph_probes, chosen.ef_search) == (7, EFFORT_LADDER[0])
    assert max(walks for walks, _ in graphs.searched) == 7


def test_a_held_out_row_is_measured_on_its_neighbours_not_on_itself() -> None:
    # Rows 0-9 at distances 1..10 from the query row 100 (stored too, at distance 0): a search
    # that finds the row itself and 9 of its 10 neighbours finds 0.9 of them.
    query = np.zeros((1, 4), dtype=np.float32)
    truth = np.arange(1, RECALL_AT + 1, dtype=np.float64)[None, :]
    held = RecallSample(query, truth, own_ids=np.array([100]), source="rows held out")

    def search(vector: np.ndarray, k: int) -> list[Hit]:
        found = [(100, 0.0), *((i, float(i + 1)) for i in range(RECALL_AT - 1)), (42, 50.0)]
        return [Hit(id=i, label="", uri="", distance=d) for i, d in found[:k]]

    assert held.recalls(search).tolist() == [0.9]
    moved = RecallSample(query, truth)  # a query that is no row: every hit counts
    assert moved.recalls(search).tolist() == [1.0]
    assert held.described == "1 rows held out"
