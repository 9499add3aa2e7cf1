"""Question similarity for near-duplicate collapse (merge) and leakage control (split).

Cosine similarity of binary character 2-3-gram vectors (scikit-learn's HashingVectorizer
over the normalised text). Hashing, not TF-IDF, on purpose: nothing is fitted on the data,
so the similarity of two questions depends on those two questions only. Editing one row
can then change only the pairs that row is part of, never the rest of the split.

Questions with identical n-gram sets are one *item* (similarity 1.0, handled exactly, and
never compared again). Finding every pair of items above a threshold uses prefix filtering
(the AllPairs method): with binary vectors, cos(x, y) >= t implies the two share at least
t^2 * |x| n-grams, so if each item keeps only its |x| - ceil(t^2 |x|) + 1 rarest n-grams (a
"prefix"), every such pair shares a prefix n-gram. Candidate pairs are the pairs of items
on one prefix n-gram's list; their exact similarity is then computed from the full vectors.

Bounded whatever the text. The work is planned before it starts: a list of s items costs
s(s-1)/2 comparisons, and the sum must stay under PAIR_BUDGET. On ordinary questions it does,
and the result is exact (tested against brute force). Templated questions from a small
vocabulary make every n-gram common, so some lists are huge (at a million rows the exact
search would compare ~10^11 pairs). Lists longer than the planned cap are *capped*: each of
their items is compared with its WINDOW neighbours in an order where similar items sit
together (a min-hash of the item's other prefix n-grams: a function of the item alone) and
with the list's PIVOTS earliest items (the rows a greedy collapse keeps). The pairs of a
capped list that were not compared through it are counted (`candidate_pairs_skipped`, per
list, so a pair compared through another list may be counted), and the stage metrics say
whether the search was exact. Pairs reported are always true pairs.

Memory is bounded too: candidates are made and compared in blocks of about BLOCK_PAIRS on
two threads (numpy and scipy release the GIL; threads share the plan, nothing is copied),
a per-item bound on shared n-grams (SKETCH hash-bucket counts) rules most candidates out
before the exact count, and only what a stage needs is kept (merge: its near pairs, or a
few best per item beyond NEAR_PAIRS; split: group labels). Vectorizing is built from cached
per-word features (char_wb n-grams never cross a word) and gives scikit-learn's vectors.

The package: `items` (vectors and items), `search` (the bounded pair search), `keep` (what
merge and split keep of its pairs), `small` (exact helpers for small inputs), `arrays` and
`memory` (shared helpers). Settings such as PAIR_BUDGET live in the module that reads them.
"""

from .arrays import gather_rows
from .items import N_FEATURES, VECTOR_CHUNK, FirstSeen, Items, ItemsBuilder, distinct_items, vectorize, vectorize_chunk
from .keep import NEAR_PAIRS, BestNeighbours, greedy_keepers, near_groups
from .memory import map_large_arrays, release_memory
from .search import PAIR_BUDGET, SearchStats, compared_pairs
from .small import components, nearest, nearest_rows, nearest_work, similar_pairs

__all__ = [
    "BestNeighbours",
    "FirstSeen",
    "Items",
    "ItemsBuilder",
    "NEAR_PAIRS",
    "N_FEATURES",
    "PAIR_BUDGET",
    "SearchStats",
    "VECTOR_CHUNK",
    "compared_pairs",
    "components",
    "distinct_items",
    "gather_rows",
    "greedy_keepers",
    "map_large_arrays",
    "near_groups",
    "nearest",
    "nearest_rows",
    "nearest_work",
    "release_memory",
    "similar_pairs",
    "vectorize",
    "vectorize_chunk",
]
