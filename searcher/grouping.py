"""Near-duplicate groups from the pairs found within a distance, without chaining.

Connected components of the pairs (single linkage) let a chain of near pictures a–b–c become one
group although a and c are farther apart than the distance: a person deciding what to delete sees
pictures that are not copies of one another. Here every member of a group is within the distance
of every other member (complete linkage), so the whole group are copies of its first member and
of one another.

Groups are formed greedily: the item with the most neighbours left seeds a group, which takes its
neighbours nearest first, each only if it is within the distance of every member already in; the
members leave the pool, and the next seed is taken. An item whose neighbours all went to other
groups stays out of any group.
"""

from __future__ import annotations


class Neighbours:
    """The pairs within the distance, symmetric: each item's neighbours and their distances."""

    def __init__(self) -> None:
        self._of: dict[int, dict[int, float]] = {}

    def add(self, a: int, b: int, distance: float) -> None:
        if a == b:
            return
        self._of.setdefault(a, {})[b] = distance
        self._of.setdefault(b, {})[a] = distance

    def groups(self) -> list[list[int]]:
        """Groups of two or more items, each within the distance of every other: ids
        ascending; the largest groups first, then the closest (mean distance to the first
        member), then by first id."""
        left = set(self._of)
        groups: list[list[int]] = []
        for seed in sorted(self._of, key=lambda item: (-len(self._of[item]), item)):
            if seed not in left:
                continue
            near = self._of[seed]
            members = [seed]
            for candidate in sorted((n for n in near if n in left), key=lambda n: (near[n], n)):
                if all(member in self._of[candidate] for member in members):
                    members.append(candidate)
            if len(members) > 1:
                left.difference_update(members)
                groups.append(sorted(members))
        return sorted(groups, key=self._order)

    def _order(self, members: list[int]) -> tuple[int, float, int]:
        first, rest = members[0], members[1:]
        spread = sum(self._of[first][m] for m in rest) / len(rest)
        return (-len(members), spread, first)
