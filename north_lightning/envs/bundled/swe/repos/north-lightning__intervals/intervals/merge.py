def merge_intervals(intervals):
    """Merge closed intervals [start, end] that overlap or touch; returns them sorted."""
    merged = []
    for start, end in sorted(intervals):
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def total_length(intervals):
    """Total length covered by the intervals."""
    return sum(end - start for start, end in merge_intervals(intervals))
