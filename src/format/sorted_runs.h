// A stable sort that costs one comparison per element on input made of a few sorted runs, as
// a checkpoint's tensor names mostly are (safetensors writes them sorted, so outputs planned
// in source order come out as a sorted run per dtype and shard).
#ifndef QUENCH_FORMAT_SORTED_RUNS_H_
#define QUENCH_FORMAT_SORTED_RUNS_H_

#include <algorithm>
#include <utility>
#include <vector>

namespace quench {

// Merges the sorted neighbours [first, middle) and [middle, last) stably by `less`. What is
// already in place is found by binary search and left as it is: the first run's elements up
// to the second's first, and the second's from the first's last on (runs of different shards
// mostly follow each other in name order, whole or in long stretches: the Kimi index's last
// merges touched every one of its 141k names, one comparison each).
template <class It, class Less>
void MergeRuns(It first, It middle, It last, Less less) {
  if (first == middle || middle == last || !less(*middle, *(middle - 1))) return;
  first = std::upper_bound(first, middle, *middle, less);
  last = std::lower_bound(middle, last, *(middle - 1), less);
  std::inplace_merge(first, middle, last, less);
}

// Sorts [first, last) by `less`, stably: finds the maximal non-descending runs, then merges
// neighbouring runs pairwise until one is left (O(n log r) comparisons for r runs; a random
// input has r ~ n/2 and costs O(n log n) like std::stable_sort).
template <class It, class Less>
void SortByRuns(It first, It last, Less less) {
  std::vector<It> bounds{first};
  for (It it = first; it != last;) {
    It next = it + 1;
    if (next != last && less(*next, *it)) bounds.push_back(next);
    it = next;
  }
  bounds.push_back(last);
  while (bounds.size() > 2) {
    std::vector<It> merged{bounds[0]};
    size_t i = 0;
    for (; i + 2 < bounds.size(); i += 2) {
      MergeRuns(bounds[i], bounds[i + 1], bounds[i + 2], less);
      merged.push_back(bounds[i + 2]);
    }
    if (i + 1 < bounds.size()) merged.push_back(bounds.back());  // an odd run, carried over
    bounds = std::move(merged);
  }
}

}  // namespace quench

#endif  // QUENCH_FORMAT_SORTED_RUNS_H_
